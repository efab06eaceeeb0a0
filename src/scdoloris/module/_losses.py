"""The losses: the diffusion models' error on expressed genes, the mask's cross-entropy.

Pure functions; :meth:`~scdoloris.module.DolorisModule.loss` adds them up as the training
stage says (``docs/guide/method.md``, "Training").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expressed_mask(x0: torch.Tensor) -> torch.Tensor:
    """``M = 1[x0 != 0]`` as a float tensor."""
    return (x0 != 0).to(x0.dtype)


def masked_mse(x0: torch.Tensor, x0_hat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-cell mean squared error over the genes where ``mask`` is 1.

    ``sum_g M (x0 - x0_hat)^2 / sum_g M`` for each row; a row without expressed genes gives 0.
    The diffusion loss is the mean of this over cells: zeros are the mask model's job.

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


def diffusion_loss(
    x0: torch.Tensor, x0_hat: torch.Tensor, expressed: torch.Tensor, expressed_only: bool = True
) -> torch.Tensor:
    """The diffusion loss of one model: :func:`masked_mse` over the expressed genes
    (``expressed_only``, the method) or all genes, averaged over cells; 0 without cells.

    Examples
    --------
    >>> x0 = torch.tensor([[1.0, 0.0]]); x0_hat = torch.tensor([[0.0, 1.0]])
    >>> diffusion_loss(x0, x0_hat, expressed_mask(x0)), diffusion_loss(x0, x0_hat, None, False)
    (tensor(1.), tensor(1.))
    """
    if x0.shape[0] == 0:
        return x0.new_zeros(())
    weights = expressed if expressed_only else torch.ones_like(x0)
    return masked_mse(x0, x0_hat, weights).mean()


def stage_loss(diffusion: torch.Tensor, mask: torch.Tensor, stage: str = "all") -> torch.Tensor:
    """The loss a training stage minimises: ``"all"``, ``"diffusion"`` or ``"mask"``."""
    if stage == "diffusion":
        return diffusion
    if stage == "mask":
        return mask
    return diffusion + mask
