"""Shared fixtures: the real data of ../shared/data (skipped when absent) and small models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NORMAN = DATA_DIR / "norman2019_k562_subset.h5ad"
KANG = DATA_DIR / "kang2018_pbmc_ifnb.h5ad"
HELD_OUT_PAIRS = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]

torch.set_num_threads(1)


def read_log_normalised(path: Path):
    """Read a shared .h5ad (raw counts) and log-normalise it; skip the test when it is absent."""
    if not path.exists():
        pytest.skip(f"{path.name} not found in {path.parent} (the shared data folder is absent)")
    import scanpy as sc

    adata = sc.read_h5ad(path)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture(scope="session")
def norman():
    """The Norman subset, log-normalised (3,375 cells x 500 genes)."""
    return read_log_normalised(NORMAN)


@pytest.fixture(scope="session")
def kang():
    """Kang et al. 2018 PBMCs with and without interferon-beta, log-normalised (1,556 cells)."""
    return read_log_normalised(KANG)


@pytest.fixture(scope="session")
def norman_split(norman):
    """Training cells (controls, singles, pairs not held out) and the held-out pairs."""
    held = norman.obs["perturbation"].isin(HELD_OUT_PAIRS).to_numpy()
    return norman[~held].copy(), norman[held].copy()


@pytest.fixture(scope="session")
def norman_model(norman_split):
    """A small Doloris model trained for a bounded number of steps on the Norman training cells."""
    import scvi

    from scdoloris import DolorisModel

    scvi.settings.seed = 0
    train, _ = norman_split
    adata = train.copy()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="control")
    model = DolorisModel(adata, n_hidden=256, n_layers=2, n_cond=64, n_mask_hidden=128)
    model.train(max_epochs=25, batch_size=128, enable_progress_bar=False)
    return model


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def tiny_simulated_model():
    """A function ``(n_cells, n_genes, seed=0) -> (adata, model)``: simulated, log-normalised
    cells set up for Doloris and a tiny untrained model on them."""
    return _tiny_simulated_model


def _tiny_simulated_model(n_cells: int, n_genes: int, seed: int = 0):
    import scanpy as sc

    from scdoloris import DolorisModel
    from scdoloris.datasets import simulate

    adata = simulate(n_cells=n_cells, n_genes=n_genes, seed=seed)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="ctrl")
    model = DolorisModel(
        adata, n_hidden=16, n_layers=1, n_cond=8, n_graph_hidden=8, n_mask_hidden=8
    )
    return adata, model
