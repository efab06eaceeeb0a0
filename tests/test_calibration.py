"""The calibration: condition kinds, the inner validation's plan and choice, the blend, and the
model's use of them (train runs the inner validation; predict blends and reports)."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pandas as pd
import pytest

from scdoloris import ablations
from scdoloris.metrics import constant_genes, e_distance
from scdoloris.model._calibration import (
    BLENDS,
    DEFAULT_BASELINE,
    KINDS,
    PRIOR_WEIGHT,
    Calibration,
    ConditionKey,
    blend,
    blend_scale,
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


def _candidates(cond, kind, best, baselines=("NoChange", "MeanShift"), gain=1.0):
    """Rows for one condition: the candidate ``best`` scores better by ``gain`` than others."""
    rows = []
    for baseline in baselines:
        for w in (0.0, 0.5, 1.0):
            good = (baseline, w) == best or (w == 1.0 and best[1] == 1.0)
            e = 2.0 - gain if good else 2.0
            rows.append((cond, kind, baseline, w, e, 0.1 * e))
    return rows


def test_fit_keeps_the_equal_blend_unless_the_evidence_is_clear():
    # four conditions agree that the model alone is best: it is chosen
    rows = [r for c in "abcd" for r in _candidates(c, "transfer", ("MeanShift", 1.0))]
    # two conditions are not enough to leave the equal blend with the kind's baseline
    rows += [r for c in "ef" for r in _candidates(c, "unseen token", ("NoChange", 0.0))]
    # three conditions that disagree: one strongly for no change and against the model, two
    # mildly for the model and against no change; neither is clearly better than the default
    for cond, no_change, model in (("g", 0.5, 3.0), ("h", 2.1, 1.9), ("i", 2.1, 1.9)):
        for baseline, w, e in (
            ("NoChange", 0.0, no_change),
            ("NoChange", 0.5, 2.0),
            ("Additive", 0.0, 2.0),
            ("Additive", 0.5, 2.0),
            ("NoChange", 1.0, model),
            ("Additive", 1.0, model),
        ):
            rows.append((cond, "new combination", baseline, w, e, 0.1 * e))
    cal = Calibration.fit(_scores(rows))
    assert cal.choice("transfer")[:2] == ("MeanShift", 1.0)
    assert cal.choice("unseen token") == ("MeanShift", 0.5, "scaled")
    assert cal.choice("new combination") == ("Additive", 0.5, "scaled")
    # a kind without inner conditions: decided on the pooled ones, with its own baseline
    assert cal.validated_on["seen"] == "pooled" and cal.choice("seen")[0] == "MeanShift"
    assert cal.validated_on["transfer"] == "transfer"
    expected = cal.expected_error("transfer")
    assert expected["e_distance"] == pytest.approx(1.0)
    assert expected["e_distance_no_change"] == pytest.approx(2.0)
    assert expected["n_conditions"] == 4 and expected["validated_on"] == "transfer"
    restored = Calibration.from_dict(cal.to_dict())
    assert restored.choices == cal.choices and restored.validated_on == cal.validated_on
    summary = cal.summary()
    assert summary.loc["transfer", "E calibrated"] == pytest.approx(1.0)
    assert summary.loc["transfer", "E NoChange"] == pytest.approx(2.0)


def test_the_cell_by_cell_blend_is_chosen_only_by_its_ablation():
    rows = []
    for c in "abcd":
        for w, how, e in ((0.0, "scaled", 2.0), (0.5, "scaled", 1.5), (0.5, "cells", 1.0)):
            rows.append((c, "transfer", "MeanShift", w, how, e, 0.1))
        rows.append((c, "transfer", "MeanShift", 1.0, "scaled", 2.0, 0.1))
        rows.append((c, "transfer", "MeanShift", 1.0, "cells", 2.0, 0.1))
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    scores = pd.DataFrame(rows, columns=columns)
    # it fills the zeros a mean shift moves: never a candidate of the method ...
    assert Calibration.fit(scores).choice("transfer") == ("MeanShift", 0.5, "scaled")
    # ... only of the ablation "cell blend", which chooses among cell-by-cell blends
    cal = Calibration.fit(scores, blends=("cells",))
    assert cal.choice("transfer") == ("MeanShift", 0.5, "cells")
    assert cal.expected_error("transfer")["e_distance"] == pytest.approx(1.0)
    assert cal.summary().loc["transfer", "E calibrated"] == pytest.approx(1.0)
    assert Calibration.from_dict(cal.to_dict()).blends == ("cells",)
    # a calibration saved before the blend could be chosen was cell by cell
    old = {
        "scores": {c: [] for c in columns if c != "blend"},
        "choices": {"transfer": ["MeanShift", 0.5]},
    }
    assert Calibration.from_dict(old).choice("transfer") == ("MeanShift", 0.5, "cells")


def test_a_candidate_may_not_buy_one_metric_with_another():
    # the model alone: far better E-distance on every condition, clearly worse DE genes found
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    rows = []
    for i, c in enumerate("abcde"):
        for w, e, de in ((0.0, 2.0, 0.5), (0.5, 1.5, 0.5), (1.0, 0.5, 0.3 - 0.01 * i)):
            rows.append((c, "transfer", "MeanShift", w, "scaled", e, 0.1, de))
    scores = pd.DataFrame(rows, columns=[*columns, "de_overlap"])
    assert Calibration.fit(scores).choice("transfer") == ("MeanShift", 0.5, "scaled")
    # the same gain in E-distance without the loss of DE genes is taken
    scores.loc[scores["weight"] == 1.0, "de_overlap"] = 0.5
    assert Calibration.fit(scores).choice("transfer") == ("MeanShift", 1.0, "scaled")
    # E-distance, EMD and DE genes found each weigh alike in the loss
    summary = Calibration.fit(scores).summary().loc["transfer"]
    assert summary["DE calibrated"] == pytest.approx(0.5)


def test_fit_prefers_a_steady_gain_to_an_erratic_lower_mean():
    # NoChange alone has the lowest mean (one condition far better, the others a little worse)
    # but no clear gain; the model alone is better on every condition: it is chosen
    erratic, steady = (0.0, 2.1, 2.1, 2.1), (1.8, 1.7, 1.8, 1.7)
    rows = []
    for c, e_erratic, e_steady in zip("abcd", erratic, steady, strict=True):
        for baseline, w, e in (
            ("NoChange", 0.0, e_erratic),
            ("MeanShift", 0.0, 2.5),
            ("MeanShift", 0.5, 2.0),
            ("MeanShift", 1.0, e_steady),
        ):
            rows.append((c, "transfer", baseline, w, e, 0.1 * e))
    assert Calibration.fit(_scores(rows)).choice("transfer")[:2] == ("MeanShift", 1.0)
    # without the steady candidate the default stays
    rows = [r for r in rows if r[3] != 1.0]
    assert Calibration.fit(_scores(rows)).choice("transfer") == ("MeanShift", 0.5, "scaled")


def test_ties_stay_with_the_default():
    rows = [(c, "seen", "MeanShift", w, 1.0, 0.1) for c in "abc" for w in (0.0, 0.5, 1.0)]
    assert Calibration.fit(_scores(rows)).choice("seen") == ("MeanShift", 0.5, "scaled")
    # a candidate better by a rounding error on every condition (no spread) is a tie too
    rows = [r for r in rows if r[3] != 1.0]
    rows += [(c, "seen", "MeanShift", 1.0, 1.0 - 1e-12, 0.1) for c in "abc"]
    assert Calibration.fit(_scores(rows)).choice("seen") == ("MeanShift", 0.5, "scaled")


def test_a_tie_between_baselines_goes_to_the_kinds_baseline():
    # a single knockout's Additive is its MeanShift: same scores, the name says MeanShift
    rows = []
    for c in "abc":
        rows += [(c, "seen", "MeanShift", w, 1.0, 0.1) for w in (0.0, 0.5, 1.0)]
        for name in ("Additive (shrunk)", "MeanShift (shrunk)"):
            rows += [(c, "seen", name, w, 0.5 + 0.01 * "abc".index(c), 0.05) for w in (0.0, 0.5)]
    assert Calibration.fit(_scores(rows)).choice("seen") == ("MeanShift (shrunk)", 0.0, "scaled")
    # a change shrunk to nothing is no change: the name says so
    rows += [(c, "seen", "NoChange", 0.0, 0.5 + 0.01 * "abc".index(c), 0.05) for c in "abc"]
    assert Calibration.fit(_scores(rows)).choice("seen") == ("NoChange", 0.0, "scaled")


def test_without_calibration_the_model_is_used():
    assert Calibration(_scores([])).choice("transfer")[:2] == ("NoChange", 1.0)


def test_blend_is_exact_at_the_ends():
    model = np.array([[2.0, 0.0], [1.0, 3.0]])
    base = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert blend(model, base, 1.0) is model
    # at weight 0 the model's cells take the baseline's means (within two-fold), not its cells
    # (gene 1: 1.5 -> 0.5 is held to half)
    np.testing.assert_allclose(blend(model, base, 0.0), model * [1 / 2, 2 / 3])
    # the cell-by-cell blend (the ablation) is the baseline itself there
    assert blend(model, base, 0.0, how="cells") is base


def test_blend_keeps_the_models_cells_and_moves_them_toward_the_blended_mean():
    rng = np.random.default_rng(0)
    model = rng.gamma(2.0, 1.0, size=(50, 4)) * (rng.random((50, 4)) < 0.6)
    base = rng.gamma(2.0, 1.0, size=(50, 4)) * [0.5, 0.8, 1.0, 20.0]
    model[:, 2] = 0  # gene 2: the model says silent; gene 3: the baseline's mean is 20x higher
    weight = 0.5
    out = blend(model, base, weight)
    cells = (1 - weight) * base + weight * model
    scale = blend_scale(model.mean(axis=0), base.mean(axis=0), weight)
    # every cell keeps the model's zeros (a silent gene stays silent) and its order, scaled
    np.testing.assert_array_equal(out == 0, model == 0)
    np.testing.assert_allclose(out, model * scale)
    # genes within a two-fold factor take the mean of the cell-by-cell blend ...
    np.testing.assert_allclose(out[:, :2].mean(axis=0), cells[:, :2].mean(axis=0))
    # ... the others move two-fold toward it, and a silent gene keeps factor 1
    assert scale[3] == 2.0 and scale[2] == 1.0
    assert out[:, 3].mean() < cells[:, 3].mean()
    # the baseline's cells are not needed: its means do
    np.testing.assert_allclose(blend(model, None, weight, baseline_mean=base.mean(0)), out)
    # no gene of the blend is one constant non-zero value (the cell blend fills zeros with one)
    flat = np.zeros((50, 1))
    assert not constant_genes(blend(flat, flat + 0.3, 0.5)).size
    assert constant_genes(blend(flat, flat + 0.3, 0.5, how="cells")).tolist() == [0]


def test_the_input_blend_keeps_the_input_cells_at_every_weight():
    rng = np.random.default_rng(1)
    inputs = rng.gamma(2.0, 1.0, size=(40, 3)) * (rng.random((40, 3)) < 0.5)
    model = inputs + rng.normal(0.3, 0.5, size=(40, 3)).clip(0)
    base = inputs * [1.5, 1.2, 0.1] + 0.2  # gene 2: the baseline's mean about 7x lower
    for weight in (0.0, 0.25, 1.0):
        out = blend(model, base, weight, how="input", inputs=inputs)
        scale = blend_scale(model.mean(0), base.mean(0), weight, shape_mean=inputs.mean(0))
        # the input's zeros and order, scaled by at most two-fold
        np.testing.assert_allclose(out, inputs * scale)
        assert ((scale >= 0.5) & (scale <= 2.0)).all()
        within = (scale > 0.5) & (scale < 2.0)
        cells = (1 - weight) * base + weight * model
        np.testing.assert_allclose(out[:, within].mean(0), cells[:, within].mean(0))
    # gene 2 at weight 0: the baseline's mean is 7x lower than the input's, held to half
    assert blend_scale(model.mean(0), base.mean(0), 0.0, inputs.mean(0))[2] == 0.5
    with pytest.raises(ValueError, match="needs the input cells"):
        blend(model, base, 0.5, how="input")
    with pytest.raises(ValueError, match="Unknown blend 'cell'"):
        blend(model, base, 0.5, how="cell")


def test_the_input_blend_is_a_candidate_of_its_own_at_weights_0_and_1():
    rows = []
    for c in "abcd":
        for w, how, e in ((0.0, "scaled", 2.2), (0.5, "scaled", 1.5), (1.0, "scaled", 1.6)):
            rows.append((c, "transfer", "MeanShift", w, how, e, 0.1))
        rows.append((c, "transfer", "MeanShift", 0.0, "input", 1.0 + 0.01 * "abcd".index(c), 0.1))
        # each baseline's own prediction, for reference (never a candidate)
        rows.append((c, "transfer", "MeanShift", 0.0, "cells", 2.0, 0.1))
        rows.append((c, "transfer", "NoChange", 0.0, "cells", 3.0, 0.1))
        rows.append((c, "transfer", "NoChange", 0.0, "scaled", 3.0, 0.1))
    columns = ["condition", "kind", "baseline", "weight", "blend", "e_distance", "emd"]
    cal = Calibration.fit(pd.DataFrame(rows, columns=columns))
    assert cal.choice("transfer") == ("MeanShift", 0.0, "input")
    assert cal.expected_error("transfer")["e_distance"] == pytest.approx(1.015)
    assert cal.expected_error("transfer")["e_distance_no_change"] == pytest.approx(3.0)
    summary = cal.summary().loc["transfer"]
    # the baseline alone is its own prediction, not a blend at weight 0
    assert summary["E MeanShift"] == pytest.approx(2.0) and summary["E model"] == pytest.approx(1.6)
    assert summary["E calibrated"] == pytest.approx(1.015)


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
    assert len(table) and {"baseline", "weight", "E model", "E calibrated", "DE calibrated"} <= set(
        table.columns
    )
    assert set(model.calibration.scores["kind"]) <= {
        "seen",
        "transfer",
        "new combination",
        "unseen token",
    }
    # every kind has a choice: the equal blend with its baseline, or a candidate that did better
    # on the inner conditions it rests on
    cal = model.calibration
    assert set(cal.choices) == set(KINDS)
    for kind, choice in cal.choices.items():
        assert choice[1] in (0.0, 0.25, 0.5, 0.75, 1.0)
        default = (DEFAULT_BASELINE[kind], PRIOR_WEIGHT, "scaled")
        if choice == default:
            continue
        frame = cal._frame(kind)
        if cal.validated_on[kind] == "pooled":
            frame = frame[frame["baseline"] == DEFAULT_BASELINE[kind]]
        frame = frame[frame["blend"].isin(cal.blends)]
        miss = 1.0 - frame["de_overlap"]
        loss = (
            frame["e_distance"] / frame["e_distance"].mean()
            + frame["emd"] / frame["emd"].mean()
            + miss / max(miss.mean(), 1e-12)
        )
        means = frame.assign(loss=loss).groupby(["baseline", "weight", "blend"])["loss"].mean()
        assert means[choice] < means[default], (kind, choice)
    # the scores: candidates of both blends, each baseline's own prediction for reference, and
    # the three metrics of the loss
    scores = cal.scores
    assert set(scores["blend"]) == {*BLENDS, "cells"} and cal.blends == BLENDS
    assert (scores.loc[scores["blend"] == "cells", "weight"] == 0.0).all()
    assert scores["de_overlap"].between(0, 1).all()


def _type_0_controls(adata):
    """The control cells of type_0, a perturbation of the data and the cells as an array."""
    ctrl = adata[(adata.obs["perturbation"] == "ctrl") & (adata.obs["cell_type"] == "type_0")]
    pert = adata.obs.loc[adata.obs["perturbation"] != "ctrl", "perturbation"].iloc[0]
    return ctrl, pert, ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else np.asarray(ctrl.X)


def test_predict_blends_the_model_and_the_baseline(calibrated):
    adata, model = calibrated
    ctrl, pert, X = _type_0_controls(adata)
    saved = copy.deepcopy(model.calibration_)
    # a blend strictly between the two, whatever this tiny model's validation chose
    model.calibration_["choices"]["seen"] = ["MeanShift", 0.5, "scaled"]
    try:
        raw = model.predict(ctrl, pert, seed=0, calibrate=False, progress_bar=False)
        cal = model.predict(ctrl, pert, seed=0, progress_bar=False)
        info = cal.uns["scdoloris"]["calibration"][pert]["type_0"]
        # in small batches the condition's means are still taken over all of its cells
        kw = {"seed": 0, "progress_bar": False, "batch_size": 7}
        small = model.predict(ctrl, pert, **kw)
        raw_small = model.predict(ctrl, pert, calibrate=False, **kw)
        # the first version's cell-by-cell blend stays as an ablation
        with ablations.variant("cell blend").applied(model):
            by_cell = model.predict(ctrl, pert, seed=0, progress_bar=False)
        # ... and is what predict does where the inner validation chose it
        model.calibration_["choices"]["seen"] = ["MeanShift", 0.5, "cells"]
        chosen_cells = model.predict(ctrl, pert, seed=0, progress_bar=False)
    finally:
        model.calibration_ = saved
    assert info["kind"] == "seen" and (info["baseline"], info["weight"]) == ("MeanShift", 0.5)
    baseline = model.baselines_.predict("MeanShift", X, pert, np.full(ctrl.n_obs, "type_0"))
    np.testing.assert_allclose(cal.X, blend(raw.X, baseline, 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.X, blend(raw_small.X, baseline, 0.5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_cell.X, 0.5 * (baseline + raw.X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chosen_cells.X, by_cell.X)
    assert chosen_cells.uns["scdoloris"]["calibration"][pert]["type_0"]["blend"] == "cells"
    assert not np.allclose(by_cell.X, cal.X)
    assert "calibration" not in raw.uns["scdoloris"]
    assert np.isfinite(info["e_distance"]) and info["n_conditions"] >= 1


@contextlib.contextmanager
def _choosing(model, choice):
    """The seen kind's calibration choice is ``choice`` inside the block."""
    saved = copy.deepcopy(model.calibration_)
    model.calibration_["choices"]["seen"] = list(choice)
    try:
        yield
    finally:
        model.calibration_ = saved


def test_predict_blends_on_the_input_cells_where_chosen(calibrated):
    adata, model = calibrated
    ctrl, pert, X = _type_0_controls(adata)
    # in batches: the condition's means are still taken over all of its cells
    kw = {"seed": 0, "progress_bar": False, "batch_size": 7}
    raw = model.predict(ctrl, pert, calibrate=False, **kw)
    out = {}
    for weight in (0.0, 1.0):
        with _choosing(model, ("MeanShift", weight, "input")):
            out[weight] = model.predict(ctrl, pert, **kw)
    baseline = model.baselines_.predict("MeanShift", X, pert, np.full(ctrl.n_obs, "type_0"))
    for weight, pred in out.items():
        expected = blend(raw.X, baseline, weight, how="input", inputs=X)
        np.testing.assert_allclose(pred.X, expected, rtol=1e-5, atol=1e-5)
        info = pred.uns["scdoloris"]["calibration"][pert]["type_0"]
        assert (info["weight"], info["blend"]) == (weight, "input")
    assert not np.allclose(out[1.0].X, raw.X)  # weight 1 is not the model alone here


@pytest.mark.parametrize("how", BLENDS)
@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_a_calibrated_prediction_is_a_population_of_cells(calibrated, how, weight):
    adata, model = calibrated
    ctrl, pert, X = _type_0_controls(adata)
    X = X.copy()
    X[:, :3] = 0  # three genes silent in every input cell
    ctrl = ctrl.copy()
    ctrl.X = X
    raw = model.predict(ctrl, pert, seed=0, calibrate=False, progress_bar=False).X
    with _choosing(model, ("MeanShift", weight, how)):
        pred = model.predict(ctrl, pert, seed=0, progress_bar=False).X
    # a mean shift moves these genes' zeros; the calibrated cells keep the shape's zeros
    base = model.baselines_.predict("MeanShift", X, pert, np.full(ctrl.n_obs, "type_0"))
    assert constant_genes(base[:, :3]).size  # the baseline alone: one value in every cell
    shape = raw if how == "scaled" else X
    np.testing.assert_array_equal(pred > 0, shape > 0)
    # silent in every input cell: stays silent unless the model predicts it detected
    silent = (X == 0).all(axis=0) & (raw == 0).all(axis=0)
    assert (pred[:, silent] == 0).all()
    assert not constant_genes(pred).size


def test_a_shrunk_baseline_blends_with_shrunk_changes(calibrated):
    adata, model = calibrated
    ctrl, pert, X = _type_0_controls(adata)
    raw = model.predict(ctrl, pert, seed=0, calibrate=False, progress_bar=False)
    out = {}
    for name in ("MeanShift", "MeanShift (shrunk)"):
        with _choosing(model, (name, 0.5, "cells")):
            out[name] = model.predict(ctrl, pert, seed=0, progress_bar=False)
    # the ablation without shrunk baselines predicts a shrunk choice with the measured one
    measured = ablations.variant("measured baselines").applied(model)
    with _choosing(model, ("MeanShift (shrunk)", 0.5, "cells")), measured:
        unshrunk = model.predict(ctrl, pert, seed=0, progress_bar=False)
    cts = np.full(ctrl.n_obs, "type_0")
    for name, pred in out.items():
        base = model.baselines_.predict(name, X, pert, cts)
        np.testing.assert_allclose(pred.X, 0.5 * (base + raw.X), rtol=1e-5, atol=1e-5)
        assert pred.uns["scdoloris"]["calibration"][pert]["type_0"]["baseline"] == name
    np.testing.assert_allclose(unshrunk.X, out["MeanShift"].X)
    with pytest.raises(ValueError, match="Unknown baseline 'Meanshift'"):
        model.baselines_.delta("Meanshift", pert, "type_0")
    change = model.baselines_.delta("MeanShift (shrunk)", pert, "type_0")
    full = model.baselines_.delta("MeanShift", pert, "type_0")
    factor = float(change @ full / (full @ full))
    assert 0 < factor < 1 and np.allclose(change, factor * full, atol=1e-6)


def test_the_inner_validation_scores_shrunk_baselines_unless_switched_off(calibrated):
    _, model = calibrated
    scores = model.calibration.scores
    shrunk = scores[scores["baseline"].str.endswith(" (shrunk)")]
    assert set(shrunk["baseline"]) == {"MeanShift (shrunk)", "Additive (shrunk)"}
    assert shrunk["weight"].max() < 1.0  # the model alone is scored with the measured ones
    assert {"E MeanShift (shrunk)", "EMD Additive (shrunk)"} <= set(model.validation.columns)
    split = model._inner_split(0)
    inner = copy.copy(model)  # the trained model as the inner model, without the ablation
    with ablations.variant("measured baselines").applied(model):  # as train() would run it
        measured = model._score_inner(inner, split, 0)
    assert set(measured["baseline"]) == {"NoChange", "MeanShift", "Additive"}


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


def test_the_validation_figure_marks_the_choice(calibrated, tmp_path):
    from scdoloris import plotting

    _, model = calibrated
    fig = plotting.validation(model, tmp_path / "validation.png")
    assert (tmp_path / "validation.png").stat().st_size > 0
    validated = [k for k in model.calibration.choices if model.calibration.validated_on[k] == k]
    # E-distance, EMD and the DE genes found, per validated kind
    assert len(fig.axes) == 3 * len(validated)
    assert "DE genes" in fig.axes[2].get_ylabel()
    titles = [ax.get_title() for ax in fig.axes]
    assert all(any(t.startswith(k) for t in titles) for k in validated)
    # one line per baseline and blend, the input blend dotted; a cross per baseline itself
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    labels = [label for label in lines if label != "chosen" and not label.endswith(" itself")]
    assert {label.rsplit(" (", 1)[1][:-1] for label in labels} == set(BLENDS)
    assert lines["MeanShift itself"].get_marker() == "x"
    dotted = [lines[label].get_linestyle() for label in labels if label.endswith("(input)")]
    assert dotted and set(dotted) == {":"}


def test_the_validation_figure_needs_a_calibration(tiny_simulated_model):
    from scdoloris import plotting

    _, model = tiny_simulated_model(n_cells=200, n_genes=60)
    with pytest.raises(ValueError, match="calibrate=True"):
        plotting.validation(model)


@pytest.mark.parametrize(
    ("gains", "moves"),
    [
        ((1.0, 1.0, 1.0, -0.5), False),  # mean 0.625, SE 0.375: 1.7 SE, within the margin
        ((1.0, 1.0, 1.0, 0.2), True),  # mean 0.8, SE 0.2: 4 SE
    ],
)
def test_a_candidate_must_beat_the_default_by_two_standard_errors(gains, moves):
    from scdoloris.model._calibration import CLEAR_SE

    assert CLEAR_SE == 2.0
    rows = []
    for c, gain in zip("abcd", gains, strict=True):
        for w, e in ((0.0, 2.5), (0.5, 2.0), (1.0, 2.0 - 0.1 * gain)):
            rows.append((c, "transfer", "MeanShift", w, e, 0.1 * e))
    choice = Calibration.fit(_scores(rows)).choice("transfer")
    assert choice == (("MeanShift", 1.0, "scaled") if moves else ("MeanShift", 0.5, "scaled"))
