"""The benchmark script: tiny end-to-end run on Norman, protocol splits and the report helpers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = {
    "norman": "norman2019_k562_subset.h5ad",
    "papalexi": "papalexi2021_thp1.h5ad",
    "kang": "kang2018_pbmc_ifnb.h5ad",
}
TINY_METHODS = {
    "Doloris",
    "Doloris no mask",
    "Doloris no latent",
    "Doloris auto start",
    "Doloris no mu/sigma",
    "Doloris bernoulli mask",
    "Doloris coherent mask",
    "Doloris no prior",
    "Doloris no residual",
    "Doloris no unseen prior",
    "NoChange",
    "MeanShift",
    "Additive",
    "LinearBaseline",
    "Split-half floor",
}


def _load(name: str):
    """Import benchmarks/<name>.py (benchmarks/ is a folder of scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _require(protocol: str) -> None:
    path = DATA_DIR / FILES[protocol]
    if not path.exists():
        pytest.skip(f"{path.name} not found in {DATA_DIR} (the shared data folder is absent)")


@pytest.fixture(scope="module")
def protocols():
    return _load("protocols")


@pytest.mark.slow
def test_tiny_run_writes_the_norman_results(tmp_path):
    _require("norman")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "run.py"), "--tiny", "--protocols", "norman"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| method |" in done.stdout
    table = pd.read_csv(tmp_path / "results" / "norman.csv")
    expected = {"protocol", "method", "seed", "condition", "n_pred", "n_real"}
    expected |= {"train_seconds", "predict_seconds"}
    for metric in ("e_distance", "emd", "rmse", "pearson_delta"):
        expected |= {metric, f"{metric}_DE20", f"{metric}_DE40"}
    assert expected <= set(table.columns)
    assert set(table["method"]) == TINY_METHODS
    assert table.groupby("method")["condition"].nunique().eq(5).all()
    assert np.isfinite(table["e_distance"]).all()
    assert (table.loc[table["method"] == "Doloris", "seed"] == 0).all()
    report = (tmp_path / "RESULTS.md").read_text()
    assert "Where Doloris wins / loses" in report and "--tiny" in report
    for figure in ("norman_bars.png", "norman_umap.png"):
        assert (tmp_path / "results" / figure).stat().st_size > 0


@pytest.mark.parametrize("name", ["norman", "papalexi", "kang"])
def test_protocol_splits_are_disjoint(protocols, name):
    _require(name)
    split = protocols.PROTOCOLS[name]()
    train, controls, real = split.train, split.controls, split.real
    key, ctrl = split.setup["perturbation_key"], split.setup["control_group"]
    assert split.conditions
    for cond in split.conditions:
        assert not protocols.condition_mask(train, cond, split.setup).any(), cond
        assert protocols.condition_mask(real, cond, split.setup).sum() > 0, cond
        in_type = protocols.cell_type_mask(controls, cond.cell_type, split.setup)
        assert in_type.sum() > 0, cond
    names = [set(a.obs_names) for a in (train, controls, real)]
    assert not names[0] & names[1], "input controls are also training cells"
    assert not names[0] & names[2], "held-out cells are also training cells"
    assert (controls.obs[key].astype(str) == ctrl).all()
    assert (train.obs[key].astype(str) == ctrl).sum() >= controls.n_obs * 0.9


def test_papalexi_is_capped_and_kang_keeps_training_controls(protocols):
    _require("papalexi")
    _require("kang")
    split = protocols.papalexi()
    counts = split.train.obs["target"].value_counts()
    assert counts.max() <= protocols.PAPALEXI_MAX_CELLS
    assert split.controls.n_obs + counts["non-targeting"] == protocols.PAPALEXI_MAX_CELLS
    kang = protocols.kang()
    held = kang.train.obs["cluster_id"].isin(protocols.KANG_CELL_TYPES)
    assert (kang.train.obs.loc[held, "group_id"] == "ctrl").all()
    assert held.sum() > 0


def test_splits_are_fixed_and_tiny_caps(protocols):
    _require("norman")
    a, b = protocols.norman(max_cells=20), protocols.norman(max_cells=20)
    assert list(a.controls.obs_names) == list(b.controls.obs_names)
    assert a.train.obs["perturbation"].value_counts().max() <= 20
    assert a.controls.n_obs == 10


def test_wins_and_losses_names_the_best_baseline():
    run = _load("run")
    rows = []
    for cond in ("A+B", "C+D"):
        for method, e in (("Doloris", 0.4), ("NoChange", 0.9), ("Additive", 0.5)):
            rows.append(
                {"method": method, "condition": cond, "seed": 0, "train_seconds": 1.0}
                | {"predict_seconds": 0.1, "e_distance": e, "e_distance_DE20": e}
                | {"emd": e, "rmse": e, "pearson_delta": 1 - e}
            )
    results = pd.DataFrame(rows)
    lines = run.wins_and_losses(results)
    assert lines[0].startswith("- E: Doloris **wins** (0.400 vs best baseline Additive 0.500")
    assert "in 2 of 2 conditions" in lines[0]
    table = run.summary_table(results)
    assert list(table["method"]) == ["Doloris", "NoChange", "Additive"]
    assert table.loc[0, "E"] == "0.400 ± 0.000"


def test_validation_refuses_an_unknown_kang_fold():
    _require("kang")
    validate = _load("validate")
    with pytest.raises(ValueError, match=r"Unknown kang cell types \['T cells'\]"):
        validate.validation_splits("kang", folds=[("T cells",)])
    splits = validate.validation_splits("kang", folds=[("CD8 T cells",)])
    assert [c.name for c in splits[0].conditions] == ["stim | CD8 T cells"]
