"""The benchmark script: tiny end-to-end run on Norman, protocol splits and the report helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
EXPERIMENTS = BENCH / "experiments"  # the one-off studies behind the defaults
FILES = {
    "norman": "norman2019_k562_subset.h5ad",
    "papalexi": "papalexi2021_thp1.h5ad",
    "kang": "kang2018_pbmc_ifnb.h5ad",
}
TINY_METHODS = {
    "Doloris",
    "Doloris uncalibrated",
    "NoChange",
    "MeanShift",
    "Additive",
    "Split-half floor",
}


def _load(name: str):
    """Import benchmarks/<name>.py or benchmarks/experiments/<name>.py (folders of scripts, not
    packages; each on ``sys.path``, as for a script run from its folder)."""
    for folder in (EXPERIMENTS, BENCH):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    path = BENCH / f"{name}.py"
    if not path.exists():
        path = EXPERIMENTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def require(real_data):
    """A function: protocol -> None, skipping the test when its real data file is absent (the
    benchmarks read the same folder, ``$SCDOLORIS_DATA`` or ``../shared/data``)."""
    return lambda protocol: real_data(FILES[protocol])


@pytest.fixture(scope="module")
def protocols():
    return _load("protocols")


@pytest.mark.slow
def test_tiny_run_writes_the_results(tmp_path, require):
    require("norman")
    require("kang")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "run.py"), "--tiny"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| method |" in done.stdout
    for task in ("norman_pairs", "kang_cell_type"):
        table = pd.read_csv(tmp_path / "results" / f"{task}.csv")
        expected = {"task", "fold", "condition", "view", "method", "seed", "n_pred", "n_real"}
        expected |= {"e_distance", "emd", "rmse", "e_distance_DE20", "pearson_delta", "rank"}
        assert expected <= set(table.columns)
        assert set(table["method"]) == TINY_METHODS
        assert set(table["view"]) == {"train", "held-out"}
        assert np.isfinite(table["e_distance"]).all() and np.isfinite(table["emd"]).all()
        assert (table.loc[table["method"] == "Doloris", "seed"] == 0).all()
        record = json.loads((tmp_path / "results" / f"{task}.json").read_text())
        assert record["calibrations"] and "--tiny" in record["command"]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## norman_pairs" in report and "## kang_cell_type" in report
    assert "| task kind | Doloris E |" in report


@pytest.fixture(scope="module")
def tasks():
    return _load("tasks")


@pytest.mark.parametrize(
    "name", ["norman_pairs", "norman_singles", "papalexi_replicate", "kang_donor"]
)
def test_every_condition_is_held_out_once_and_never_trains(tasks, name, require):
    require(name.split("_")[0])
    seen: list[str] = []
    key = None
    for fold in tasks.folds(name, max_cells=30):
        key = fold.setup["perturbation_key"]
        ctrl = fold.setup["control_group"]
        train_names = set(fold.train.obs_names)
        for cond in fold.conditions:
            seen.append(cond.name)
            real = fold.real[cond.name]
            assert real.n_obs > 0 and not set(real.obs_names) & train_names, cond
            assert (real.obs[key].astype(str) == cond.perturbation).all()
            for view in ("train", "held-out"):
                cells = fold.input_cells(cond, view)
                assert cells.n_obs > 0 and (cells.obs[key].astype(str) == ctrl).all()
                assert (set(cells.obs_names) <= train_names) == (view == "train")
        # no cell of a held-out condition trains
        labels = fold.train.obs[key].astype(str)
        for cond in fold.conditions:
            same = labels == cond.perturbation
            if cond.cell_type is not None and name != "kang_donor":
                same &= fold.train.obs[fold.setup["cell_type_key"]].astype(str) == cond.cell_type
            if name != "kang_donor":
                assert not same.any(), cond
    items = tasks.conditions(name, max_cells=30)
    assert sorted(seen) == sorted(c.name for c, _ in items)  # each exactly once
    assert key is not None


def test_folds_are_fixed(tasks, require):
    require("norman")
    a = next(tasks.folds("norman_singles", max_cells=20))
    b = next(tasks.folds("norman_singles", max_cells=20))
    assert [c.name for c in a.conditions] == [c.name for c in b.conditions]
    assert list(a.inputs["train"]["all"].obs_names) == list(b.inputs["train"]["all"].obs_names)
    assert a.train.obs["perturbation"].value_counts().max() <= 20


def test_report_compares_with_the_best_baseline_and_the_seed_spread():
    report = _load("report")
    rows = []
    for cond, offset in (("A", 0.0), ("B", 0.1), ("C", 0.2)):
        for method, e, seeds in (
            ("Doloris", 0.40, (0, 1)),
            ("NoChange", 0.90, (None,)),
            ("MeanShift", 0.50, (None,)),
        ):
            for seed in seeds:
                noise = 0.0 if seed is None else 0.01 * seed
                rows.append(
                    {"condition": cond, "method": method, "seed": seed, "fold": 0}
                    | {"e_distance": e + offset + noise, "emd": e, "train_seconds": 1.0}
                )
    table = pd.DataFrame(rows)
    c = report.comparison(table, "Doloris", "e_distance")
    assert c["best"] == "MeanShift"
    assert c["value"] == pytest.approx(0.505) and c["best_value"] == pytest.approx(0.6)
    assert c["seed_sd"] == pytest.approx(np.std([0.5, 0.51], ddof=1))
    assert c["wins"] == {"NoChange": 1.0, "MeanShift": 1.0}
    assert report.verdict(c) == "better"
    lo, hi = c["diff_ci"]
    assert lo <= c["diff"] <= hi
    # a margin inside the seed spread is not a win
    c["best_value"] = c["value"] + 0.5 * c["seed_sd"]
    assert report.verdict(c) == "not worse"
    c["best_value"] = c["value"] - 0.001
    assert report.verdict(c) == "worse"


def test_rank_metric_by_hand():
    run = _load("run")
    real = {"a": np.array([0.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([5.0, 0.0])}
    pred = {"a": np.array([0.9, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([5.0, 0.0])}
    ranks = run.rank_metric(pred, real)
    assert ranks == {"a": 0.5, "b": 0.0, "c": 0.0}  # a's prediction is closer to b's cells


@pytest.mark.parametrize("name", ["norman", "papalexi", "kang"])
def test_protocol_splits_are_disjoint(protocols, name, require):
    require(name)
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


def test_papalexi_is_capped_and_kang_keeps_training_controls(protocols, require):
    require("papalexi")
    require("kang")
    split = protocols.papalexi()
    counts = split.train.obs["target"].value_counts()
    assert counts.max() <= protocols.PAPALEXI_MAX_CELLS
    assert split.controls.n_obs + counts["non-targeting"] == protocols.PAPALEXI_MAX_CELLS
    kang = protocols.kang()
    held = kang.train.obs["cluster_id"].isin(protocols.KANG_CELL_TYPES)
    assert (kang.train.obs.loc[held, "group_id"] == "ctrl").all()
    assert held.sum() > 0


def test_splits_are_fixed_and_tiny_caps(protocols, require):
    require("norman")
    a, b = protocols.norman(max_cells=20), protocols.norman(max_cells=20)
    assert list(a.controls.obs_names) == list(b.controls.obs_names)
    assert a.train.obs["perturbation"].value_counts().max() <= 20
    assert a.controls.n_obs == 10


def test_calibration_rule_scores_both_rules_leave_one_condition_out():
    rule = _load("calibration_rule")
    # NoChange alone: lowest mean but erratic; the model alone: better on every condition
    rows = []
    steadies = (1.8, 1.7, 1.8, 1.7, 1.8)
    for c, erratic, steady in zip("abcde", (0.0, 2.1, 2.1, 2.1, 2.1), steadies, strict=True):
        for baseline, w, e in (
            ("NoChange", 0.0, erratic),
            ("MeanShift", 0.0, 2.5),
            ("MeanShift", 0.5, 2.0),
            ("MeanShift", 1.0, steady),
        ):
            rows.append((c, "transfer", baseline, w, "scaled", e, 0.1 * e))
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    scores = pd.DataFrame(rows, columns=columns).assign(task="t", fold=0, seed=0)
    table = rule.compare(scores)
    # the first rule keeps the equal blend (2.0) wherever the erratic candidate has the lowest
    # mean of the other four; held out, "a" is the one condition where that is not so
    assert table.loc[list("abcde"), "e_distance first"].tolist() == [1.8, 2.0, 2.0, 2.0, 2.0]
    assert table.loc[list("abcde"), "weight current"].tolist() == [1.0] * 5
    summary = rule.summarise(table)
    assert summary.loc["t", "conditions"] == 5
    assert summary.loc["t", "Δ E"] == pytest.approx(np.mean(steadies) - np.mean([1.8] + [2.0] * 4))
    assert summary.loc["t", "choices changed"] == pytest.approx(0.8)


def test_clear_margin_scores_each_margin_leave_one_condition_out():
    margin = _load("clear_margin")
    # the model alone beats the default (MeanShift 0.5) on four conditions and loses on the
    # fifth: held out, "a" to "d" see a gain of 1.8 to 1.9 SE, "e" of 12 SE
    rows = []
    for c, gain in zip("abcde", (1.0, 1.2, 0.8, 1.0, -0.4), strict=True):
        for w, e in ((0.0, 2.5), (0.5, 2.0), (1.0, 2.0 - 0.1 * gain)):
            rows.append((c, "transfer", "MeanShift", w, "scaled", e, 0.1 * e))
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    scores = pd.DataFrame(rows, columns=columns).assign(task="t", fold=0, seed=0)
    table = margin.compare(scores, [1.0, 2.0, 99.0]).set_index(["margin", "condition"])
    assert (table.loc[99.0, "weight"] == 0.5).all()  # never clear: the default everywhere
    assert (table.loc[1.0, "weight"] == 1.0).all()
    # held out "a": gains (1.2, 0.8, 1, -0.4), mean 0.65, SE 0.36: within two SE
    assert table.loc[2.0, "weight"].tolist() == [0.5, 0.5, 0.5, 0.5, 1.0]
    summary = margin.summary(table.reset_index(), reference=1.0)
    assert summary.loc[("t", 99.0), "moved from the default"] == "0%"
    assert summary.loc[("t", 1.0), "Δ E"] == "+0.00000 ± 0.00000"
    assert margin._calibration.CLEAR_SE == 2.0  # restored after the block


def test_input_blend_compares_candidate_sets_leave_one_condition_out():
    study, inputs = _load("candidate_sets"), _load("input_blend")
    # the input blend at w = 0.25 beats the default (MeanShift 0.5, scaled) on every condition
    # by far; at weights 0 and 1 it is worse than the default
    rows = []
    for c, noise in zip("abcde", (0.0, 0.1, -0.1, 0.05, -0.05), strict=True):
        for w, e in ((0.0, 2.5), (0.5, 2.0), (1.0, 2.2)):
            rows.append((c, "transfer", "MeanShift", w, "scaled", e, 0.1 * e))
        for w, e in ((0.0, 3.0), (0.25, 1.0 + noise), (1.0, 3.0)):
            rows.append((c, "transfer", "MeanShift", w, "input", e, 0.1 * e))
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    scores = pd.DataFrame(rows, columns=columns).assign(task="t", fold=0, seed=0)
    table = study.compare(scores, inputs.candidate_sets).set_index(["set", "condition"])
    assert table.loc["without input", "blend"].tolist() == ["scaled"] * 5
    assert table.loc["input at 0 and 1", "weight"].tolist() == [0.5] * 5
    assert table.loc["with input", "blend"].tolist() == ["input"] * 5
    assert table.loc["with input", "weight"].tolist() == [0.25] * 5
    summary = study.summary(table.reset_index(), "input", inputs.chose_input)
    assert summary.loc["t", "E with input"] == "1.0000"
    assert summary.loc["t", "Δ E input at 0 and 1"] == "+0.00000 ± 0.00000"
    assert summary.loc["t", "Δ E with input"].startswith("-1.00000 ± 0.0")
    assert summary.loc["t", "with input chose input"] == "100%"


FAKE_RUNNER = '''
"""A stand-in peer: predicts no change, and n/a for every second prediction."""
import sys
from pathlib import Path

sys.path.insert(0, PEER_DIR)
import _fold_io as io

train, conditions, read_input = io.read_fold(sys.argv[1])
assert "counts" in train.layers and train.uns["control"] == "control"
na = {}
for c in conditions:
    if c["i"] % 2:
        na[str(c["i"])] = "not this one"
        continue
    src = read_input(c["i"])
    io.write_prediction(sys.argv[2], c["i"], src.X, train.var_names)
io.write_meta(sys.argv[2], {"train_seconds": 1.5, "predict_seconds": {}, "na": na})
'''


def test_a_peer_gets_the_fold_through_files_and_its_cells_come_back(tmp_path, monkeypatch, require):
    """peers.py writes the fold for a runner in another interpreter and reads its predictions
    back, one cell per input cell; n/a predictions are reported with their reason."""
    require("norman")
    tasks = _load("tasks")
    peers = _load("peers")
    script = tmp_path / "fake_runner.py"
    script.write_text(f"PEER_DIR = {str(peers.PEER_DIR)!r}\n" + FAKE_RUNNER)
    fake = peers.Peer("Fake", ".venv-none", str(script), interpreter=sys.executable)
    monkeypatch.setitem(peers.PEERS, "Fake", fake)
    fold = next(tasks.folds("norman_pairs", max_cells=40, only=[0]))
    out = peers.train_predict_peer("Fake", fold, tasks.VIEWS, seed=0)
    assert out is not None
    cond = fold.conditions[0]
    P, train_s, _ = out["pred"][("train", cond.name)]
    np.testing.assert_allclose(P, fold.input_cells(cond, "train").X.toarray(), rtol=1e-6)
    assert train_s == 1.5
    assert out["na"] == {("held-out", cond.name): "not this one"}


def test_missing_peer_venv_is_skipped(capsys):
    tasks = _load("tasks")
    peers = _load("peers")
    missing = peers.Peer("Missing", ".venv-does-not-exist", "cpa_runner.py")
    peers.PEERS["Missing"] = missing
    try:
        fold = tasks.Fold("t", 0, None, [], {}, {})
        assert peers.train_predict_peer("Missing", fold, tasks.VIEWS, seed=0) is None
    finally:
        del peers.PEERS["Missing"]
    assert "make peers-venvs" in capsys.readouterr().out


def test_lognorm_counts_matches_the_benchmark_scale():
    sys.path.insert(0, str(BENCH / "peers"))
    import _fold_io

    mu = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]])
    out = _fold_io.lognorm_counts(mu, 10.0)
    np.testing.assert_allclose(np.expm1(out).sum(1), [10.0, 10.0], rtol=1e-6)
    assert _fold_io.split_tokens("A+B") == ["A", "B"]
