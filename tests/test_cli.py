"""The command line: train, predict and evaluate end to end, the demo, help and error messages.

End-to-end commands run through ``python -m scdoloris`` in a subprocess (each pays the import of
scvi-tools, a few seconds); the cheaper checks call the typer app in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import scdoloris
from scdoloris.cli import app

HELD_OUT = 0  # index of the held-out pair in the simulation's pairs
runner = CliRunner()


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m scdoloris ARGS`` on one thread; return the completed process."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "COLUMNS": "120",
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [sys.executable, "-m", "scdoloris", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> dict:
    """A tiny simulated screen (raw counts) written as .h5ad, with one pair held out."""
    folder = tmp_path_factory.mktemp("cli")
    adata = scdoloris.datasets.simulate(
        n_cells=240, n_genes=40, n_cell_types=1, n_single=4, n_pairs=2, seed=0
    )
    del adata.uns["simulation"]  # keeps the files small
    pairs = sorted(set(adata.obs["perturbation"].astype(str)) - {"ctrl"})
    pair = [p for p in pairs if "+" in p][HELD_OUT]
    held = (adata.obs["perturbation"] == pair).to_numpy()
    adata.write_h5ad(folder / "screen.h5ad")
    adata[~held].copy().write_h5ad(folder / "train.h5ad")
    return {"dir": folder, "pair": pair, "singles": pair.split("+")}


@pytest.fixture(scope="module")
def model_dir(screen) -> Path:
    out = screen["dir"] / "model"
    proc = run_cli(
        "train",
        screen["dir"] / "train.h5ad",
        "--perturbation-key",
        "perturbation",
        "--control",
        "ctrl",
        "--normalize",
        "--max-epochs",
        "2",
        "--seed",
        "1",
        "--no-progress",
        "-o",
        out,
    )
    check_ok(proc)
    assert "Saved the model" in proc.stdout
    return out


# ---------------------------------------------------------------- end to end (subprocess)
def test_train_predict_evaluate(screen, model_dir):
    folder, pair = screen["dir"], screen["pair"]
    assert (model_dir / "model.pt").is_file()

    pred_path = folder / "pred.h5ad"
    proc = run_cli(
        "predict",
        model_dir,
        folder / "screen.h5ad",  # the whole screen: its control cells are picked
        "-p",
        pair,
        "-p",
        screen["singles"][0],
        "--normalize",
        "--n-steps",
        "5",
        "--seed",
        "2",
        "--no-progress",
        "-o",
        pred_path,
    )
    check_ok(proc)
    pred = ad.read_h5ad(pred_path)
    screen_obs = ad.read_h5ad(folder / "screen.h5ad").obs
    n_ctrl = int((screen_obs["perturbation"] == "ctrl").sum())
    assert pred.n_obs == 2 * n_ctrl
    assert set(pred.obs["perturbation"].astype(str)) == {pair, screen["singles"][0]}
    assert pred.uns["scdoloris"]["seed"] == 2
    assert np.isfinite(pred.X).all()

    metrics_path = folder / "metrics.csv"
    proc = run_cli("evaluate", pred_path, folder / "screen.h5ad", "--normalize", "-o", metrics_path)
    check_ok(proc)
    table = pd.read_csv(metrics_path)
    assert {"condition", "gene_set", "metric", "value"} <= set(table.columns)
    assert set(table["condition"]) == {pair, screen["singles"][0]}
    assert {"e_distance", "emd", "rmse"} <= set(table["metric"])
    assert "E-distance" in proc.stdout and pair in proc.stdout


def test_bad_path_is_one_error_line_without_traceback(tmp_path):
    proc = run_cli("train", tmp_path / "missing.h5ad", "-o", tmp_path / "model")
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "missing.h5ad" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- evaluate: controls and flags
@pytest.fixture(scope="module")
def held_out(screen, model_dir) -> dict:
    """The README's files: real.h5ad holds only the held-out pair's cells, controls.h5ad only
    control cells, and pred.h5ad the pair predicted from controls.h5ad."""
    folder = screen["dir"]
    adata = ad.read_h5ad(folder / "screen.h5ad")
    labels = adata.obs["perturbation"].astype(str)
    adata[(labels == screen["pair"]).to_numpy()].copy().write_h5ad(folder / "real.h5ad")
    adata[(labels == "ctrl").to_numpy()][::2].copy().write_h5ad(folder / "controls.h5ad")
    result = invoke(
        "predict", model_dir, folder / "controls.h5ad", "-p", screen["pair"], "--normalize",
        "--n-steps", "3", "--no-progress", "-o", folder / "pred.h5ad",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    n_controls = int((labels == "ctrl").sum())
    return {"dir": folder, "n_used": len(range(0, n_controls, 2)), "n_controls": n_controls}


def test_readme_evaluate_with_only_perturbed_cells_in_real(held_out, tmp_path):
    folder = held_out["dir"]
    result = invoke(
        "evaluate", folder / "pred.h5ad", folder / "real.h5ad", "--controls-file",
        folder / "controls.h5ad", "--control", "ctrl", "--normalize", "-o", tmp_path / "m.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"the {held_out['n_used']} cells of" in result.output
    assert "predictions started from" in result.output
    assert (tmp_path / "m.csv").stat().st_size > 0


def test_evaluate_takes_the_predictions_controls_from_the_training_file(held_out, tmp_path):
    folder = held_out["dir"]
    result = invoke(
        "evaluate", folder / "pred.h5ad", folder / "real.h5ad", "--controls-file",
        folder / "train.h5ad", "--normalize", "-o", tmp_path / "m.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # only the control cells predict() was given, not all the controls of the training file
    assert f"the {held_out['n_used']} cells of" in result.output
    assert held_out["n_used"] < held_out["n_controls"]


def test_evaluate_without_controls_names_the_option(held_out, tmp_path):
    folder = held_out["dir"]
    result = invoke(
        "evaluate", folder / "pred.h5ad", folder / "real.h5ad", "--normalize", "-o",
        tmp_path / "m.csv",
    )  # fmt: skip
    assert result.exit_code == 1
    lines = error_lines(result.output)
    assert len(lines) == 1 and "no control cells" in lines[0] and "--controls-file" in lines[0]


def test_control_is_the_label_in_train_and_evaluate(screen, held_out, tmp_path):
    result = invoke(
        "evaluate", held_out["dir"] / "pred.h5ad", screen["dir"] / "screen.h5ad", "--control",
        "ctrl", "--normalize", "-o", tmp_path / "m.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "labelled 'ctrl'" in result.output
    commands = typer.main.get_command(app).commands
    for name in ("train", "evaluate"):
        (option,) = [p for p in commands[name].params if "--control" in p.opts]
        assert option.help.startswith("Label of control cells"), (name, option.help)
    opts = {o for c in commands.values() for p in c.params for o in p.opts}
    assert "--controls-file" in opts and "--control-group" not in opts


def test_evaluate_says_which_direction_is_better(held_out, tmp_path):
    folder = held_out["dir"]
    result = invoke(
        "evaluate", folder / "pred.h5ad", folder / "real.h5ad", "--controls-file",
        folder / "controls.h5ad", "--normalize", "-o", tmp_path / "m.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "lower is better: E-distance, EMD, RMSE" in result.output
    assert "higher is better: Pearson Δ" in result.output


# ---------------------------------------------------------------- in-process checks
def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def test_unknown_perturbation_is_named(screen, model_dir, tmp_path):
    result = invoke(
        "predict",
        model_dir,
        screen["dir"] / "screen.h5ad",
        "-p",
        f"{screen['singles'][0]}+NOTAGENE",
        "--normalize",
        "-o",
        tmp_path / "pred.h5ad",
    )
    assert result.exit_code == 1, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and "NOTAGENE" in lines[0], result.output
    assert not (tmp_path / "pred.h5ad").exists()


def test_a_command_leaves_the_sessions_logging_and_warning_filters(screen, model_dir, tmp_path):
    import logging
    import warnings

    names = ("scvi", "lightning.pytorch", "lightning.fabric", "lightning.fabric.utilities.seed")
    filters, levels = list(warnings.filters), [logging.getLogger(n).level for n in names]
    result = invoke(
        "predict", model_dir, screen["dir"] / "screen.h5ad", "-p", screen["singles"][0],
        "--normalize", "--n-steps", "2", "--no-progress", "-o", tmp_path / "pred.h5ad",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(warnings.filters) == filters
    assert [logging.getLogger(n).level for n in names] == levels


def test_raw_counts_without_normalize_suggest_the_flag(screen, model_dir, tmp_path):
    result = invoke(
        "predict", model_dir, screen["dir"] / "screen.h5ad", "-p", screen["pair"], "-o",
        tmp_path / "pred.h5ad",
    )  # fmt: skip
    assert result.exit_code == 1
    lines = error_lines(result.output)
    assert len(lines) == 1 and "screen.h5ad" in lines[0] and "raw counts" in lines[0]
    assert "--normalize" in lines[0] and "--layer" in lines[0]
    assert "layer=" not in result.output and "sc.pp" not in result.output  # Python advice


def test_raw_counts_in_train_and_evaluate_give_the_command_lines_advice(screen, tmp_path):
    result = invoke("train", screen["dir"] / "train.h5ad", "-o", tmp_path / "m")
    assert result.exit_code == 1
    assert "--normalize" in result.output and "layer=" not in result.output
    result = invoke(
        "evaluate", screen["dir"] / "screen.h5ad", screen["dir"] / "screen.h5ad", "-o",
        tmp_path / "m.csv",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--normalize" in result.output and "layer=" not in result.output


def test_missing_column_is_named(screen, tmp_path):
    result = invoke(
        "train", screen["dir"] / "train.h5ad", "-k", "guide", "--normalize", "-o", tmp_path / "m"
    )
    assert result.exit_code == 1
    lines = error_lines(result.output)
    assert len(lines) == 1 and "'guide'" in lines[0], result.output
    assert not (tmp_path / "m").exists()


def test_existing_model_dir_is_refused_before_training(screen, model_dir):
    result = invoke("train", screen["dir"] / "train.h5ad", "--normalize", "-o", model_dir)
    assert result.exit_code == 1
    assert "--overwrite" in result.output


def test_missing_option_is_a_usage_error():
    result = invoke("predict", "model", "controls.h5ad")
    assert result.exit_code == 2


@pytest.mark.parametrize("command", [None, "train", "predict", "evaluate", "demo"])
def test_help_shows_no_type_beside_flags(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.output, result.output
    assert "--help" in result.output


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "demo"])
def test_help_has_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.output and f"scdoloris {command}" in result.output


def test_demo_fast_writes_its_files(tmp_path):
    result = invoke("demo", "--fast", "--no-progress", "-o", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    for name in ("pred.h5ad", "metrics.csv", "pairs.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    metrics = pd.read_csv(tmp_path / "demo" / "metrics.csv")
    assert set(metrics["method"]) == {"Doloris", "Additive", "NoChange"}
    for method in ("Doloris", "Additive", "NoChange"):
        assert method in result.output


# ---------------------------------------------------------------- issue 33: no silent traps
@pytest.fixture(scope="module")
def other_files(screen) -> dict:
    """The screen log-normalised on disk, and its raw counts with the control cells labelled
    'control' (as in the README's data)."""
    import scanpy as sc

    folder = screen["dir"]
    adata = ad.read_h5ad(folder / "screen.h5ad")
    logged = adata.copy()
    sc.pp.normalize_total(logged)
    sc.pp.log1p(logged)
    logged.write_h5ad(folder / "lognorm.h5ad")
    labels = adata.obs["perturbation"].astype(str).replace({"ctrl": "control"})
    adata.obs["perturbation"] = labels.to_numpy()
    adata.write_h5ad(folder / "control_screen.h5ad")
    return {"lognorm": folder / "lognorm.h5ad", "control": folder / "control_screen.h5ad"}


def test_normalize_refuses_log_normalised_data_and_names_the_fix(
    screen, other_files, model_dir, tmp_path
):
    commands = (
        ("train", other_files["lognorm"], "--normalize", "-o", tmp_path / "m"),
        ("predict", model_dir, other_files["lognorm"], "-p", screen["singles"][0], "--normalize",
         "-o", tmp_path / "p.h5ad"),
    )  # fmt: skip
    for args in commands:
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        (line,) = error_lines(result.output)
        assert "lognorm.h5ad' looks log-normalised already" in line, line
        assert "Drop --normalize" in line and "--layer" in line
    assert not (tmp_path / "m").exists() and not (tmp_path / "p.h5ad").exists()


def test_a_wrong_control_label_is_named_with_the_flag(other_files, tmp_path):
    result = invoke("train", other_files["control"], "--control", "ctrl", "--normalize", "-o",
                    tmp_path / "m")  # fmt: skip
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "Did you mean --control control?" in line, line
    assert "control_group" not in result.output


def test_the_readmes_control_label_needs_no_flag(other_files, tmp_path):
    result = invoke(
        "train", other_files["control"], "--normalize", "--max-epochs", "1", "--no-progress",
        "-o", tmp_path / "m",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Control label: 'control'" in result.output
    # the trained model's seed and calibration, in plain language
    assert "Seed: 0 (scvi.settings.seed at training" in result.output
    assert "Calibration" in result.output


def test_evaluate_scores_the_baselines_on_the_same_cells(held_out, tmp_path):
    import scanpy as sc

    from scdoloris.metrics import e_distance

    folder = held_out["dir"]
    args = ("evaluate", folder / "pred.h5ad", folder / "real.h5ad", "--controls-file",
            folder / "controls.h5ad", "--normalize", "-o", tmp_path / "m.csv")  # fmt: skip
    result = invoke(*args, "--train-file", folder / "train.h5ad")
    assert result.exit_code == 0, result.output
    assert "Baselines on the same input cells as the prediction" in result.output
    table = pd.read_csv(tmp_path / "m.csv")
    assert set(table["method"]) == {"prediction", "NoChange", "MeanShift", "Additive"}
    for method in ("prediction", "NoChange", "MeanShift", "Additive"):
        assert method in result.output
    # every method predicted the same input cells
    assert (table["n_pred"] == held_out["n_used"]).all()
    # NoChange is the input cells themselves
    pred, controls, real = (ad.read_h5ad(folder / f) for f in ("pred.h5ad", "controls.h5ad",
                                                             "real.h5ad"))  # fmt: skip
    for cells in (controls, real):
        sc.pp.normalize_total(cells)
        sc.pp.log1p(cells)
    starts = controls[pred.obs["control_cell"].astype(str).unique(), pred.var_names]
    row = table[(table["method"] == "NoChange") & (table["gene_set"] == "all")]
    value = row.loc[row["metric"] == "e_distance", "value"].item()
    expected = e_distance(starts.X.toarray(), real[:, pred.var_names].X.toarray())
    assert value == pytest.approx(expected, rel=1e-6)
    # without the training cells: NoChange only, and the option that adds the others
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(tmp_path / "m.csv")["method"]) == {"prediction", "NoChange"}
    assert "pass --train-file FILE" in result.output


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_is_readable_when_piped(command):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    proc = subprocess.run(
        [sys.executable, "-m", "scdoloris", command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--perturbation-key" in proc.stdout and "…" not in proc.stdout, proc.stdout
