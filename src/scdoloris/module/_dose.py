"""Doses: their scale inside the model, the dose gate, and the dose-aware additive prior."""

from __future__ import annotations

import torch
from torch import nn


def encode_dose(dose: torch.Tensor, reference: float, maximum: float) -> torch.Tensor:
    """A dose on the model's scale: ``log1p(dose / reference) / log1p(maximum / reference)``.

    ``reference`` is the smallest positive training dose and ``maximum`` the largest, so the
    scale is logarithmic (doses usually span decades), does not depend on the unit, maps dose 0
    to 0 and the largest training dose to 1; larger doses extrapolate above 1.

    Examples
    --------
    >>> encode_dose(torch.tensor([0.0, 10.0, 10000.0]), reference=10.0, maximum=10000.0)
    tensor([0.0000, 0.1003, 1.0000])
    """
    reference = max(float(reference), 1e-12)
    denominator = max(float(torch.log1p(torch.tensor(maximum / reference))), 1e-12)
    return torch.log1p(dose.clamp_min(0.0) / reference) / denominator


class DoseGate(nn.Module):
    """The paper's dose gate: ``emb * sigmoid(MLP([emb, dose]))``.

    Parameters
    ----------
    n_emb
        Width of the embeddings it gates.
    n_hidden
        Width of the gate's hidden layer.

    Examples
    --------
    >>> gate = DoseGate(4)
    >>> gate(torch.ones(2, 3, 4), torch.tensor([[0.1], [1.0]]).expand(2, 3)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(self, n_emb: int, n_hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(n_emb + 1, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_emb)
        )

    def forward(self, emb: torch.Tensor, dose: torch.Tensor) -> torch.Tensor:
        """Gate the embeddings by the doses (on the model's scale; one per embedding)."""
        return emb * torch.sigmoid(self.mlp(torch.cat([emb, dose.unsqueeze(-1)], -1)))


def dose_prior_weights(
    vocab_idx: torch.Tensor,
    dose: torch.Tensor,
    level_token: torch.Tensor,
    level_dose: torch.Tensor,
) -> torch.Tensor:
    """Weights of the training dose levels in each cell's dose-aware additive prior.

    Every molecule token has an effect estimated at each of its training doses (a "level").
    At another dose the effect is interpolated linearly between the two nearest levels (on the
    model's dose scale), falls linearly to zero below the lowest level (dose 0 has no effect)
    and stays at the highest level's effect above it.

    Parameters
    ----------
    vocab_idx
        Cells x tokens vocabulary indices (``-1``: padding).
    dose
        Each cell's dose on the model's scale (cells).
    level_token
        The vocabulary index of each level's token (levels).
    level_dose
        Levels x 3: the level's dose and those of the token's next lower and next higher level
        (0 below the lowest level, ``inf`` above the highest).

    Returns
    -------
    Cells x levels weights; the prior adds ``weights @ level_effects``.

    Examples
    --------
    >>> inf = float("inf")
    >>> levels = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, inf]])
    >>> dose_prior_weights(torch.tensor([[0], [0], [0]]), torch.tensor([0.25, 0.75, 2.0]),
    ...                    torch.tensor([0, 0]), levels)
    tensor([[0.5000, 0.0000],
            [0.5000, 0.5000],
            [0.0000, 1.0000]])
    """
    x, low, high = level_dose[:, 0], level_dose[:, 1], level_dose[:, 2]
    d = dose.reshape(-1, 1)  # cells x 1
    rising = (d - low) / (x - low).clamp_min(1e-12)
    finite = torch.isfinite(high)
    falling = torch.where(
        finite, (high - d) / (high - x).clamp_min(1e-12), torch.full_like(rising, float("inf"))
    )
    hat = torch.minimum(rising, falling).clamp(0.0, 1.0)  # cells x levels
    carries = (vocab_idx.unsqueeze(-1) == level_token) & (vocab_idx >= 0).unsqueeze(-1)
    return hat * carries.any(1).to(hat.dtype)
