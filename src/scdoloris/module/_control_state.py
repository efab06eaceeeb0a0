"""The heterogeneity condition: the control cell a prediction starts from, and its training draws.

At prediction the target and mask networks see the real control cell that is being perturbed
(the *control-state input*). Training cells are not paired, so in training each cell is given
a control state drawn here: a real control cell of the same cell type (the method), or the
paper's ``mu_ct + sigma_ct * eps`` around the cell type's control mean (the ablation
``"gaussian"``). The same bank of real control cells gives the source model, which learns the
control distribution, a full batch of control cells at every step.
"""

from __future__ import annotations

import torch
from torch import nn


class ControlStates(nn.Module):
    """Control statistics per cell type and a bank of real control cells, and draws from them.

    The control mean and standard deviation (``mean``, ``std``: cell types x genes, on the
    module's scale) are saved with the model. The bank (:meth:`set_bank`) is rebuilt from the
    training data before each training and never saved.

    Parameters
    ----------
    n_cell_types, n_genes
        Shapes.

    Examples
    --------
    >>> states = ControlStates(2, 3)
    >>> states.set_bank(torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 5.0]]), torch.tensor([0, 0, 1]))
    >>> states.sample(torch.tensor([1, 1]), "cells").tolist()
    [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]]
    """

    def __init__(self, n_cell_types: int, n_genes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_cell_types, n_genes))
        self.register_buffer("std", torch.zeros(n_cell_types, n_genes))
        # the bank: control cells sorted by cell type, and where each cell type's block starts
        self.register_buffer("cells", torch.zeros(0, n_genes), persistent=False)
        self.register_buffer("cell_type", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer(
            "counts", torch.zeros(n_cell_types, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "offsets", torch.zeros(n_cell_types, dtype=torch.long), persistent=False
        )

    def set_bank(self, cells: torch.Tensor, cell_type: torch.Tensor) -> None:
        """Keep real control cells (on the module's scale) and their cell types.

        Control cells are often a few percent of a screen; drawing the source model's batch
        from the bank gives it as many cells per step as the target model, with fixed shapes.
        """
        cell_type = torch.as_tensor(cell_type, dtype=torch.long)
        order = torch.argsort(cell_type, stable=True)
        device = self.mean.device
        self.cells = torch.as_tensor(cells, dtype=torch.float32)[order].to(device)
        self.cell_type = cell_type[order].to(device)
        counts = torch.bincount(self.cell_type, minlength=self.mean.shape[0])
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts

    def gaussian(self, cell_type: torch.Tensor) -> torch.Tensor:
        """The paper's heterogeneity condition: ``mu_ct + sigma_ct * eps``, clipped at 0."""
        mean, std = self.mean[cell_type], self.std[cell_type]
        return (mean + std * torch.randn_like(mean)).clamp_min(0.0)

    def sample(self, cell_type: torch.Tensor, kind: str = "cells") -> torch.Tensor:
        """A control state for each entry of ``cell_type``.

        ``"cells"``: a real control cell of the same cell type drawn at random from the bank
        (the Gaussian draw without a bank); ``"gaussian"``: :meth:`gaussian`.
        """
        if kind == "gaussian" or self.cells.shape[0] == 0:
            return self.gaussian(cell_type)
        counts = self.counts[cell_type]
        pick = (torch.rand(cell_type.shape, device=cell_type.device) * counts).long()
        rows = self.offsets[cell_type] + pick.clamp_max((counts - 1).clamp_min(0))
        return self.cells[rows]

    def source_batch(
        self, x0: torch.Tensor, cell_type: torch.Tensor, is_control: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The source model's batch: as many bank cells (and their cell types) as the training
        batch has cells, drawn at random; without a bank, the batch's own control cells."""
        if self.cells.shape[0] == 0:
            return x0[is_control], cell_type[is_control]
        idx = torch.randint(0, self.cells.shape[0], (x0.shape[0],), device=x0.device)
        return self.cells[idx], self.cell_type[idx]
