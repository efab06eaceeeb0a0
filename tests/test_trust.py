"""Trust at a glance (issue #33): the calibration in plain language, the seed a model trained
with, the scale of its training data checked at prediction, and gene identifiers named."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi

from scdoloris import DolorisModel
from scdoloris.model._calibration import Calibration
from scdoloris.model._trust import calibration_account, mixture_words


# ---------------------------------------------------------------- the account, on fixed scores
def _calibration(blend: str = "scaled", extra_baseline: str | None = None) -> Calibration:
    """Three inner conditions of new combinations (the model clearly helps), one of transfer."""
    rows = []
    for condition, shift in (("a", 0.0), ("b", 0.01), ("c", 0.02)):
        for weight, e in ((0.0, 0.52), (0.5, 0.47), (0.75, 0.43), (1.0, 0.45)):
            rows.append((condition, "new combination", "Additive", weight, blend, e + shift, 0.1))
        rows.append((condition, "new combination", "NoChange", 0.0, blend, 0.9 + shift, 0.2))
        if extra_baseline:
            rows.append((condition, "new combination", extra_baseline, 0.0, blend, 0.6, 0.1))
    for weight, e in ((0.0, 0.7), (0.5, 0.6), (1.0, 0.65)):
        rows.append(("d", "transfer", "MeanShift", weight, blend, e, 0.1))
    rows.append(("d", "transfer", "NoChange", 0.0, blend, 0.8, 0.2))
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    scores = pd.DataFrame(rows, columns=columns)
    calibration = Calibration.fit(scores, blends=(blend,))
    calibration.choices["new combination"] = ("Additive", 0.75, blend)
    return calibration


def test_an_sd_from_one_condition_is_unknown_not_zero():
    calibration = _calibration()
    one = calibration.expected_error("transfer")
    assert one["n_conditions"] == 1
    assert math.isnan(one["e_distance_sd"]) and math.isnan(one["emd_sd"])
    three = calibration.expected_error("new combination")
    assert three["n_conditions"] == 3 and three["e_distance_sd"] > 0


def test_the_account_says_what_a_prediction_is_made_of_and_what_to_expect():
    text = calibration_account(_calibration())
    lines = text.splitlines()
    assert lines[0].startswith("Calibration (the inner validation of train(): 4 training")
    (combination,) = [line for line in lines if line.strip().startswith("new combination:")]
    assert "75% model, 25% additive baseline" in combination
    assert "chosen on 3 held-out conditions of this kind" in combination
    # the expected error of the choice, against the baseline alone, the model and no change
    assert "expected E-distance 0.44 (sd 0.0082) against 0.53 for the additive baseline" in (
        combination
    )
    assert "0.46 for the model alone" in combination and "0.91 for no change" in combination
    (transfer,) = [line for line in lines if line.strip().startswith("transfer:")]
    assert "sd unknown: one condition" in transfer and "sd 0" not in transfer
    (unseen,) = [line for line in lines if line.strip().startswith("unseen token:")]
    assert "no held-out condition of this kind" in unseen and "pooled" in unseen


def test_the_account_describes_blends_and_baselines_it_does_not_know():
    text = calibration_account(_calibration(blend="sharpened", extra_baseline="Linear"))
    assert "75% model, 25% additive baseline (the 'sharpened' blend)" in text
    assert mixture_words("Linear (shrunk)", 0.25, "scaled").startswith(
        "25% model, 75% Linear (shrunk toward no change)"
    )


def test_the_account_flags_a_kind_no_better_than_no_change():
    calibration = _calibration()
    calibration.scores.loc[calibration.scores["baseline"] == "NoChange", "e_distance"] = 0.1
    text = calibration_account(calibration)
    (line,) = [x for x in text.splitlines() if x.strip().startswith("new combination:")]
    assert "No better than predicting no change here" in line


def test_the_account_without_calibration():
    assert "predictions are the diffusion model's own" in calibration_account(None)


# ---------------------------------------------------------------- a tiny trained model
def _simulated(seed: int = 0) -> ad.AnnData:
    from scdoloris.datasets import simulate

    adata = simulate(n_cells=1200, n_genes=60, seed=seed)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture(scope="module")
def trained():
    """``(adata, model, controls)``: a tiny calibrated model on simulated cells."""
    scvi.settings.seed = 0
    adata = _simulated()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", cell_type_key="cell_type")
    model = DolorisModel(
        adata, n_hidden=32, n_layers=1, n_cond=16, n_graph_hidden=8, n_mask_hidden=16
    )
    model.train(max_epochs=2, enable_progress_bar=False)
    controls = adata[
        (adata.obs["perturbation"] == "ctrl") & (adata.obs["cell_type"] == "type_0")
    ].copy()
    return adata, model, controls


def test_print_model_shows_the_seed_and_the_calibration_and_survives_load(trained, tmp_path):
    _, model, _ = trained
    text = model.summary_string
    assert "Seed: 0 (scvi.settings.seed at training" in text
    assert "Calibration (the inner validation of train()" in text
    for kind in model.validation.index:
        assert f"  {kind}: " in text
    assert model.validation_summary() in text
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    assert loaded.seed_ == 0 and loaded.summary_string == text


def test_an_untrained_model_draws_a_seed_when_none_is_set(tiny_simulated_model):
    before = scvi.settings.seed
    scvi.settings.seed = None
    try:
        _, model = tiny_simulated_model(150, 40)
        drawn = scvi.settings.seed
        assert drawn is not None  # drawn and set before the weights were drawn
        model.train(max_epochs=1, enable_progress_bar=False, calibrate=False)
        assert model.seed_ == drawn and model.seed_drawn_
        assert f"Seed: {drawn} (drawn at random" in model.summary_string
    finally:
        scvi.settings.seed = before


TRAIN_AND_PREDICT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, scanpy as sc, scvi, torch
    from scdoloris import DolorisModel
    from scdoloris.datasets import simulate

    torch.set_num_threads(1)
    seed = json.loads(sys.argv[1])
    if seed is not None:
        scvi.settings.seed = seed
    adata = simulate(n_cells=600, n_genes=40, seed=0)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", cell_type_key="cell_type")
    model = DolorisModel(adata, n_hidden=16, n_layers=1, n_cond=8, n_graph_hidden=8,
                         n_mask_hidden=8)
    model.train(max_epochs=2, enable_progress_bar=False)
    ctrl = adata[(adata.obs["perturbation"] == "ctrl") & (adata.obs["cell_type"] == "type_0")]
    pert = sorted(p for p in adata.obs["perturbation"].unique() if "+" in p)[0]
    pred = model.predict(ctrl, pert, n_steps=3, seed=0, progress_bar=False)
    np.save(sys.argv[2], pred.X)
    print(json.dumps({"seed": model.seed_}))
    """
)


def _train_in_a_process(seed: int | None, out) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_PREDICT, json.dumps(seed), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["seed"]


def test_a_run_repeats_exactly_from_the_recorded_seed(tmp_path):
    # a run without a seed records the one it drew; another process given it repeats the run
    drawn = _train_in_a_process(None, tmp_path / "a.npy")
    assert isinstance(drawn, int)
    assert _train_in_a_process(drawn, tmp_path / "b.npy") == drawn
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    # and the seed matters: another one trains another model
    _train_in_a_process(drawn + 1, tmp_path / "c.npy")
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "c.npy"))


# ---------------------------------------------------------------- the scale of the input
def _predict_warnings(model, controls, transform) -> list[str]:
    cells = controls.copy()
    X = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    cells.X = transform(X.astype(np.float64)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(cells, "ctrl", n_steps=2, progress_bar=False)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_the_model_records_the_scale_of_its_training_data(trained, tmp_path):
    adata, model, _ = trained
    scale = model.data_scale_
    totals = np.expm1(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X).sum(1)
    assert scale["target_sum"] == pytest.approx(np.median(totals), rel=1e-4)
    assert not scale["integral"]
    model.save(tmp_path / "m")
    assert DolorisModel.load(tmp_path / "m").data_scale_ == scale


def test_predict_accepts_controls_normalised_on_their_own(trained):
    adata, model, controls = trained
    counts = np.rint(
        np.expm1(controls.X.toarray() if hasattr(controls.X, "toarray") else controls.X)
    )
    alone = ad.AnnData(counts.astype(np.float32), obs=controls.obs, var=controls.var)
    sc.pp.normalize_total(alone)  # their own median depth, not the screen's
    sc.pp.log1p(alone)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(alone, "ctrl", n_steps=2, progress_bar=False)
    assert not [w for w in caught if "sum to about" in str(w.message)], caught


def test_predict_warns_when_log1p_was_applied_twice(trained):
    _, model, controls = trained
    (message,) = [m for m in _predict_warnings(model, controls, np.log1p) if "twice" in m]
    assert message.startswith("The input looks log-transformed twice (log1p applied twice)")
    assert "adata.X = np.expm1(adata.X)" in message


def test_predict_warns_about_another_target_sum_and_names_the_training_one(trained):
    _, model, controls = trained
    target = model.data_scale_["target_sum"]
    messages = _predict_warnings(model, controls, lambda x: np.log1p(np.expm1(x) * 100))
    (message,) = [m for m in messages if "another total" in m]
    assert f"sc.pp.normalize_total(adata, target_sum={target:g})" in message


def test_predict_warns_about_small_raw_counts(trained):
    _, model, controls = trained
    messages = _predict_warnings(model, controls, lambda x: np.rint(np.expm1(x) / 100))
    (message,) = [m for m in messages if "like raw counts" in m]
    assert "sc.pp.log1p(adata)" in message


def test_predict_warns_about_values_not_log_transformed(trained):
    _, model, controls = trained
    (message,) = [
        m for m in _predict_warnings(model, controls, np.expm1) if "not log-transformed" in m
    ]
    assert message.endswith("Run sc.pp.log1p(adata).")


# ---------------------------------------------------------------- gene identifiers
def test_ensembl_ids_against_symbols_are_named_with_the_column_to_use(trained):
    _, model, controls = trained
    cells = controls.copy()
    symbols = list(cells.var_names)
    cells.var["symbol"] = symbols
    cells.var_names = [f"ENSG{i:011d}" for i in range(cells.n_vars)]
    with pytest.raises(ValueError) as error:
        model.predict(cells, "ctrl", n_steps=2, progress_bar=False)
    message = str(error.value)
    assert "look like gene symbols" in message and "like human Ensembl IDs" in message
    assert "adata_ctrl.var['symbol'] holds the model's genes" in message
    assert "adata_ctrl.var_names = adata_ctrl.var['symbol']" in message


def test_mouse_and_human_ensembl_ids_are_told_apart():
    from scdoloris._anndata_utils import gene_id_hint

    adata = ad.AnnData(
        np.zeros((1, 2), dtype=np.float32),
        var=pd.DataFrame(index=["ENSMUSG00000031162", "ENSMUSG00000000001"]),
    )
    hint = gene_id_hint(["ENSG00000102145", "ENSG00000105610"], adata)
    assert "human Ensembl IDs" in hint and "mouse Ensembl IDs" in hint
    # same kind of identifiers: nothing to say
    assert gene_id_hint(["ENSMUSG00000000002"], adata) == ""
