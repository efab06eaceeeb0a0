"""The residual: the input cells moved by the predicted change (``DolorisModel.predict``)."""

from __future__ import annotations

import torch


def residual_expression(
    control: torch.Tensor, decoded: torch.Tensor, reference: torch.Tensor
) -> torch.Tensor:
    """The input cell moved by the model's predicted change.

    Genes expressed in the input cell get ``control + (decoded - reference)``: the change
    between the decoding under the perturbation and under the control token, both from the
    cell's own latent, added to the cell's measured value. Genes silent in the input cell have
    no measured value to move and take the decoded value (the mask decides whether they turn
    on). Values are not clipped here.

    Parameters
    ----------
    control
        Input cells (cells x genes), same units as the decodings.
    decoded
        Decoding of the cells' latents under the perturbation.
    reference
        Decoding of the same latents under the control token.

    Examples
    --------
    >>> control = torch.tensor([[1.0, 0.0]])
    >>> residual_expression(control, torch.tensor([[1.5, 0.7]]), torch.tensor([[1.2, 0.2]]))
    tensor([[1.3000, 0.7000]])
    """
    return torch.where(control != 0, control + decoded - reference, decoded)
