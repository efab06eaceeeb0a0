"""The mask network: the probability that each gene is expressed (non-zero) in a cell."""

from __future__ import annotations

import torch
from torch import nn


class MaskNetwork(nn.Module):
    """MLP over the control-state input and the condition, giving one logit per gene.

    ``logits = MLP([control_state, cond]) + w * control_state + b`` with a per-gene scale ``w``
    and bias ``b``, so that a gene detected in the control cell starts out more likely to be
    detected in its prediction. Trained with binary cross-entropy against ``1[x != 0]``.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_cond
        Width of the condition vector.
    n_hidden
        Width of the hidden layer.

    Examples
    --------
    >>> net = MaskNetwork(n_genes=4, n_cond=3, n_hidden=8)
    >>> net(torch.zeros(2, 4), torch.zeros(2, 3)).shape
    torch.Size([2, 4])
    """

    def __init__(self, n_genes: int, n_cond: int, n_hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(n_genes + n_cond, n_hidden),
            nn.LayerNorm(n_hidden),
            nn.SiLU(),
            nn.Linear(n_hidden, n_hidden),
            nn.SiLU(),
            nn.Linear(n_hidden, n_genes),
        )
        self.state_scale = nn.Parameter(torch.ones(n_genes))
        self.bias = nn.Parameter(torch.zeros(n_genes))

    def forward(self, control_state: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.mlp(torch.cat([control_state, cond], dim=-1))
        return h + self.state_scale * control_state + self.bias
