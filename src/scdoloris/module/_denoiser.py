"""The x0-parametrised denoising network shared by the source and target diffusion models."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of integer timesteps, shape ``(len(t), dim)``.

    Examples
    --------
    >>> sinusoidal_embedding(torch.tensor([0]), 4)
    tensor([[1., 1., 0., 0.]])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResidualBlock(nn.Module):
    """``x + Linear(SiLU(LayerNorm(x + cond)))`` with dropout."""

    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(self.linear(nn.functional.silu(self.norm(h + cond))))


class Denoiser(nn.Module):
    """MLP that predicts the clean expression ``x0`` from a noisy cell.

    The input is the noisy expression concatenated with the control-state input (the
    heterogeneity condition; zeros for the source model). A sinusoidal time embedding and the
    condition vector (cell type plus perturbation or control token) are added in every block.
    With ``n_heads=2`` the trunk is shared by the source (head 0) and target (head 1) models.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_hidden
        Width of the trunk.
    n_layers
        Number of residual blocks.
    n_cond
        Width of the condition vector.
    n_heads
        Number of output heads.
    use_control_state
        Whether the control-state input is part of the trunk's input.
    dropout
        Dropout in the residual blocks.

    Examples
    --------
    >>> net = Denoiser(n_genes=5, n_hidden=8, n_layers=1, n_cond=3)
    >>> net(torch.zeros(2, 5), torch.zeros(2, 5), torch.tensor([0, 10]), torch.zeros(2, 3)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        n_genes: int,
        n_hidden: int = 512,
        n_layers: int = 3,
        n_cond: int = 128,
        n_heads: int = 1,
        use_control_state: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_hidden = n_hidden
        self.use_control_state = use_control_state
        n_in = 2 * n_genes if use_control_state else n_genes
        self.input = nn.Linear(n_in, n_hidden)
        self.time_mlp = nn.Sequential(
            nn.Linear(n_hidden, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden)
        )
        self.cond_proj = nn.Linear(n_cond, n_hidden)
        self.blocks = nn.ModuleList([ResidualBlock(n_hidden, dropout) for _ in range(n_layers)])
        self.out_norm = nn.LayerNorm(n_hidden)
        self.heads = nn.ModuleList([nn.Linear(n_hidden, n_genes) for _ in range(n_heads)])

    @staticmethod
    def _sliced_linear(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x @ weight.T (+ bias)`` for ``weight`` a block of columns of the input layer's.

        With gradients the product is taken as ``(weight @ x.T).T``: autograd then yields the
        block's gradient row-major, whose copy into the full weight's gradient is cheap; the
        column-major gradient of ``linear`` is copied with a transpose (at 5000 genes and batch
        32 this took 35 of a training step's ~100 ms). Without gradients (prediction):
        ``linear``.
        """
        if x.dim() == 2 and torch.is_grad_enabled() and weight.requires_grad:
            out = torch.mm(weight, x.t()).t()
            return out if bias is None else out + bias
        return nn.functional.linear(x, weight, bias)

    def project_control(self, control_state: torch.Tensor | None) -> torch.Tensor:
        """The input layer's part from the control state, with its bias (bias alone for None)."""
        if control_state is None:
            return self.input.bias
        n_genes = control_state.shape[-1]
        weight = self.input.weight[:, n_genes:]
        return self._sliced_linear(control_state, weight, self.input.bias)

    def _time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """The time MLP, run once per distinct timestep (DDIM: one row for the whole batch)."""
        if t.numel() > 1:
            steps, inverse = torch.unique(t, return_inverse=True)
            if steps.numel() < t.numel():
                return self.time_mlp(sinusoidal_embedding(steps, self.n_hidden))[inverse]
        return self.time_mlp(sinusoidal_embedding(t, self.n_hidden))

    def forward(
        self,
        x_t: torch.Tensor,
        control_state: torch.Tensor | None,
        t: torch.Tensor,
        cond: torch.Tensor,
        head: int = 0,
        control_proj: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.use_control_state:
            # input([x_t, control_state]) as two matmuls: no FLOPs on the zeros of the source
            # model, and a DDIM run passes the control half once (``project_control``)
            if control_proj is None:
                control_proj = self.project_control(control_state)
            weight = self.input.weight[:, : x_t.shape[-1]]
            h = self._sliced_linear(x_t, weight) + control_proj
        else:
            h = self.input(x_t)
        c = self._time_embedding(t) + self.cond_proj(cond)
        for block in self.blocks:
            h = block(h, c)
        return self.heads[head](nn.functional.silu(self.out_norm(h)))
