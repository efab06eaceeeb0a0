"""Shared fixtures: the real data (skipped when absent) and small models.

The real data sets are read from the folder named by the environment variable
``SCDOLORIS_DATA``, by default ``../shared/data`` beside the checkout. A test that needs a file
that is not there is skipped with a reason starting with ``"real data:"``, and the end of the
test summary says how many were skipped and why (:func:`pytest_terminal_summary`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA_ENV = "SCDOLORIS_DATA"
DATA_DIR = Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")
NORMAN = "norman2019_k562_subset.h5ad"
KANG = "kang2018_pbmc_ifnb.h5ad"
HELD_OUT_PAIRS = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
SKIP_PREFIX = "real data:"  # the reason of every skip for want of a real data file

torch.set_num_threads(1)


def data_file(name: str) -> Path:
    """The path of ``name`` in the real data folder; skip the test when it is not there."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(
            f"{SKIP_PREFIX} {name} not found in {DATA_DIR} (set {DATA_ENV} to the folder that "
            "holds the shared data)"
        )
    return path


@pytest.fixture(scope="session")
def real_data():
    """A function: file name -> its path in the real data folder (``$SCDOLORIS_DATA``, default
    ``../shared/data``); it skips the test when the file is not there."""
    return data_file


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many tests were skipped for want of real data, which files, and how to run them."""
    missing: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        if SKIP_PREFIX in reason:
            name = reason.split(SKIP_PREFIX, 1)[1].split()[0]
            missing[name] = missing.get(name, 0) + 1
    if not missing:
        return
    n = sum(missing.values())
    files = ", ".join(sorted(missing))
    terminalreporter.write_sep("=", "real data", yellow=True)
    terminalreporter.write_line(
        f"{n} real-data test{'s' if n != 1 else ''} skipped: {files} not found in {DATA_DIR}. "
        f"Set {DATA_ENV}=/path/to/folder (with the shared .h5ad files) to run "
        f"{'them' if n != 1 else 'it'}."
    )


def read_log_normalised(name: str):
    """Read a shared .h5ad (raw counts) and log-normalise it; skip the test when it is absent."""
    path = data_file(name)
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
