"""The calibration: condition kinds, the inner validation's plan and choice, the blend, and the
model's use of them (train runs the inner validation; predict blends and reports)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scdoloris.metrics import e_distance
from scdoloris.model._calibration import (
    Calibration,
    ConditionKey,
    blend,
    condition_kind,
    plan_validation,
)


def _key(tokens, ct="T"):
    return ConditionKey(tuple(sorted(tokens)), ct)


# ---------------------------------------------------------------- pure parts
def test_condition_kinds():
    train = [_key(()), _key(("A",)), _key(("B",)), _key(("C", "D")), _key(("A",), "B")]
    assert condition_kind(_key(("A",)), train) == "seen"
    assert condition_kind(_key(("B",), "B"), train) == "transfer"
    assert condition_kind(_key(("A", "B")), train) == "new combination"
    assert condition_kind(_key(("C",)), train) == "seen in combinations"  # in a pair only
    assert condition_kind(_key(("A", "C")), train) == "seen in combinations"  # C never alone
    assert condition_kind(_key(("A", "E")), train) == "unseen token"
    # the dose is part of the condition: another dose of a seen set transfers
    assert condition_kind(ConditionKey(("A",), "T", " @ 2"), train) == "transfer"


def test_plan_covers_every_kind_and_recomputes_kinds():
    counts = {_key(()): 100}
    for t in "ABCDEFGH":
        counts[_key((t,))] = 50
    for pair in ("AB", "CD", "EF"):
        counts[_key(tuple(pair))] = 50
    counts[_key(("X", "Y"))] = 50  # tokens seen nowhere else
    counts[_key(("A",), "other")] = 50
    counts[_key((), "other")] = 50
    plan = plan_validation(counts, np.random.default_rng(0), n_seen=2)
    staying = set(counts) - set(plan.held_out)
    for key, kind in plan.held_out.items():
        assert kind == condition_kind(key, staying)
    kinds = set(plan.held_out.values())
    assert {"unseen token", "transfer"} <= kinds
    assert len(plan.seen) == 2 and not set(plan.seen) & set(plan.held_out)
    # a single and a pair with it are never held out together (it would change their kinds)
    for key in plan.held_out:
        if len(key.tokens) > 1:
            assert not any(_key((t,)) in plan.held_out for t in key.tokens)
    # small conditions are never held out
    counts[_key(("Z",))] = 3
    plan = plan_validation(counts, np.random.default_rng(1))
    assert _key(("Z",)) not in plan.held_out


def test_plan_keeps_a_condition_in_training():
    counts = {_key(()): 100, _key(("A",)): 50}
    plan = plan_validation(counts, np.random.default_rng(0), n_seen=0)
    assert plan.held_out == {}


def _scores(rows):
    return pd.DataFrame(
        rows, columns=["condition", "kind", "baseline", "weight", "e_distance", "emd"]
    )


def test_fit_chooses_the_lowest_normalised_loss_per_kind():
    rows = []
    for cond, kind, best in (
        ("a", "transfer", 0.5),
        ("b", "transfer", 0.5),
        ("c", "unseen token", 0.0),
    ):
        for baseline in ("NoChange", "MeanShift"):
            for w in (0.0, 0.5, 1.0):
                good = baseline == "MeanShift" and w == best
                rows.append((cond, kind, baseline, w, 1.0 if good else 2.0, 0.1 if good else 0.2))
    cal = Calibration.fit(_scores(rows))
    assert cal.choice("transfer") == ("MeanShift", 0.5)
    assert cal.choice("unseen token") == ("MeanShift", 0.0)
    # a kind without inner conditions takes the pooled choice
    assert cal.choice("new combination") == cal.choices["pooled"]
    expected = cal.expected_error("transfer")
    assert expected["e_distance"] == 1.0 and expected["e_distance_no_change"] == 2.0
    assert expected["n_conditions"] == 2 and expected["validated_on"] == "transfer"
    assert Calibration.from_dict(cal.to_dict()).choices == cal.choices
    summary = cal.summary()
    assert summary.loc["transfer", "E calibrated"] == 1.0
    assert summary.loc["transfer", "E NoChange"] == 2.0


def test_ties_go_to_the_smaller_weight():
    rows = [("a", "seen", "NoChange", w, 1.0, 0.1) for w in (0.0, 0.5, 1.0)]
    assert Calibration.fit(_scores(rows)).choice("seen") == ("NoChange", 0.0)


def test_without_calibration_the_model_is_used():
    assert Calibration(_scores([])).choice("transfer") == ("NoChange", 1.0)


def test_blend_is_exact_at_the_ends_and_linear_between():
    model = np.array([[2.0, 0.0], [1.0, 3.0]])
    base = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert blend(model, base, 1.0) is model
    assert blend(model, base, 0.0) is base
    np.testing.assert_allclose(blend(model, base, 0.25), [[1.25, 0.75], [0.25, 1.5]])


# ---------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny calibrated model on simulated data (three cell types, singles and pairs)."""
    import scanpy as sc
    import scvi

    from scdoloris import DolorisModel
    from scdoloris.datasets import simulate

    scvi.settings.seed = 0
    adata = simulate(n_cells=1200, n_genes=60, seed=0)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", cell_type_key="cell_type")
    model = DolorisModel(
        adata, n_hidden=32, n_layers=1, n_cond=16, n_graph_hidden=8, n_mask_hidden=16
    )
    model.train(max_epochs=2, enable_progress_bar=False)
    return adata, model


def test_train_runs_the_inner_validation(calibrated):
    adata, model = calibrated
    table = model.validation
    assert len(table) and {"baseline", "weight", "E model", "E calibrated"} <= set(table.columns)
    assert set(model.calibration.scores["kind"]) <= {
        "seen",
        "transfer",
        "new combination",
        "unseen token",
    }
    # on the inner conditions, the choice's loss (normalised E + EMD) is at most the model's
    # own and no change's
    scores = model.calibration.scores
    for kind, row in table.iterrows():
        frame = scores if kind == "pooled" else scores[scores["kind"] == kind]
        if kind == "pooled":
            frame = frame[frame["kind"] != "seen"] if (frame["kind"] != "seen").any() else frame
        scale_e, scale_emd = frame["e_distance"].mean(), frame["emd"].mean()

        def loss(name, row=row, scale_e=scale_e, scale_emd=scale_emd):
            return row[f"E {name}"] / scale_e + row[f"EMD {name}"] / scale_emd

        assert row["weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert loss("calibrated") <= min(loss("model"), loss("NoChange")) + 1e-9


def test_predict_blends_the_model_and_the_baseline(calibrated):
    adata, model = calibrated
    ctrl = adata[(adata.obs["perturbation"] == "ctrl") & (adata.obs["cell_type"] == "type_0")]
    pert = adata.obs.loc[adata.obs["perturbation"] != "ctrl", "perturbation"].iloc[0]
    raw = model.predict(ctrl, pert, seed=0, calibrate=False, progress_bar=False)
    cal = model.predict(ctrl, pert, seed=0, progress_bar=False)
    info = cal.uns["scdoloris"]["calibration"][pert]["type_0"]
    assert info["kind"] == "seen"
    baseline = model.baselines_.predict(
        info["baseline"],
        ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else ctrl.X,
        pert,
        np.full(ctrl.n_obs, "type_0"),
    )
    np.testing.assert_allclose(cal.X, blend(raw.X, baseline, info["weight"]), rtol=1e-5, atol=1e-6)
    assert "calibration" not in raw.uns["scdoloris"]
    assert np.isfinite(info["e_distance"]) and info["n_conditions"] >= 1


def test_predicting_the_control_returns_the_input(calibrated):
    adata, model = calibrated
    ctrl = adata[(adata.obs["perturbation"] == "ctrl") & (adata.obs["cell_type"] == "type_0")]
    X = ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else np.asarray(ctrl.X)
    half = X.shape[0] // 2
    pred = model.predict(ctrl[:half], "ctrl", progress_bar=False)
    # as close to its input as another sample of the same controls is
    assert e_distance(pred.X, X[:half]) <= e_distance(X[half:], X[:half]) + 1e-6


def test_unknown_tokens_need_allow_unknown(calibrated):
    adata, model = calibrated
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:20]
    with pytest.raises(ValueError, match="allow_unknown=True"):
        model.predict(ctrl, "NOT_A_GENE", progress_bar=False)
    with pytest.warns(UserWarning, match="NOT_A_GENE"):
        pred = model.predict(ctrl, "NOT_A_GENE", allow_unknown=True, progress_bar=False)
    kinds = {v["kind"] for v in pred.uns["scdoloris"]["calibration"]["NOT_A_GENE"].values()}
    assert kinds == {"unseen token"}
    assert np.isfinite(pred.X).all()


def test_calibration_survives_save_and_load(calibrated, tmp_path):
    from scdoloris import DolorisModel

    adata, model = calibrated
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    pd.testing.assert_frame_equal(loaded.validation, model.validation)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:30]
    pert = adata.obs.loc[adata.obs["perturbation"] != "ctrl", "perturbation"].iloc[0]
    np.testing.assert_allclose(
        loaded.predict(ctrl, pert, progress_bar=False).X,
        model.predict(ctrl, pert, progress_bar=False).X,
        rtol=1e-5,
        atol=1e-6,
    )
