"""Loss functions of the diffusion and mask networks (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expressed_mask(x0: torch.Tensor) -> torch.Tensor:
    """``M = 1[x0 != 0]`` as a float tensor."""
    return (x0 != 0).to(x0.dtype)


def masked_mse(x0: torch.Tensor, x0_hat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-cell mean squared error over the genes where ``mask`` is 1.

    ``sum_g M (x0 - x0_hat)^2 / sum_g M`` for each row; a row without expressed genes gives 0.
    The diffusion loss is the mean of this over cells (METHOD.md): zeros are the mask model's job.

    Examples
    --------
    >>> x0 = torch.tensor([[1.0, 0.0, 3.0]]); x0_hat = torch.tensor([[0.0, 5.0, 1.0]])
    >>> masked_mse(x0, x0_hat, expressed_mask(x0))
    tensor([2.5000])
    """
    sq = mask * (x0 - x0_hat) ** 2
    return sq.sum(-1) / mask.sum(-1).clamp_min(1.0)


def mask_bce(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-cell binary cross-entropy of expression logits against ``1[x0 != 0]``, mean over genes.

    Examples
    --------
    >>> round(float(mask_bce(torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]))[0]), 4)
    0.6931
    """
    return F.binary_cross_entropy_with_logits(logits, expressed_mask(x0), reduction="none").mean(-1)
