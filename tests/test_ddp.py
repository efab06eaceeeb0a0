"""Multi-process training through Lightning DDP on CPU: 2 processes, gloo (issue #9)."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy


def test_ddp_two_processes_train_and_predict(tiny_simulated_model):
    adata, model = tiny_simulated_model(n_cells=200, n_genes=60)
    before = {k: v.clone() for k, v in model.module.named_parameters()}
    # spawn: works from pytest and notebooks; find_unused_parameters: a batch without a gene
    # token skips the gene-graph network
    strategy = DDPStrategy(
        process_group_backend="gloo", start_method="spawn", find_unused_parameters=True
    )
    model.train(
        max_epochs=1,
        max_steps=3,
        batch_size=32,
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    after = dict(model.module.named_parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2  # the weights trained in the workers came back
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:8].copy()
    pert = next(p for p in adata.obs["perturbation"].unique() if p != "ctrl")
    pred = model.predict(ctrl, pert, n_steps=2, progress_bar=False)
    assert pred.shape == (8, 60)
    assert np.isfinite(pred.X).all()
