"""Tests of scdoloris.baselines: numbers by hand on a tiny data set, layout, errors, Norman."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scdoloris.baselines import Additive, LinearBaseline, MeanShift, NoChange
from scdoloris.metrics import e_distance

BASELINES = (NoChange, MeanShift, Additive, LinearBaseline)

# Genes g0, g1, g2. Control mean (2, 2, 0.5).
#   A:   mean (3, 1, 1)      -> shift(A)   = ( 1, -1,  0.5)
#   B:   mean (2, 0, 0.5)    -> shift(B)   = ( 0, -2,  0  )
#   A+B: mean (4, 0, 0)      -> shift(A+B) = ( 2, -2, -0.5)
ROWS = {
    "c1": ("ctrl", [1.0, 2.0, 0.5]),
    "c2": ("ctrl", [3.0, 2.0, 0.5]),
    "a1": ("A", [3.0, 1.0, 0.5]),
    "a2": ("A", [3.0, 1.0, 1.5]),
    "b1": ("B", [2.0, 0.0, 0.5]),
    "ab1": ("B+A", [4.0, 0.0, 0.0]),
}


@pytest.fixture
def adata() -> ad.AnnData:
    obs = pd.DataFrame({"condition": [p for p, _ in ROWS.values()]}, index=list(ROWS))
    X = np.array([x for _, x in ROWS.values()], dtype=np.float32)
    out = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2"]))
    out.layers["log"] = out.X.copy()
    return out


def controls(adata: ad.AnnData) -> ad.AnnData:
    return adata[adata.obs.condition == "ctrl"]


# ----------------------------------------------------------- numbers by hand


def test_no_change_returns_control_cells(adata):
    pred = NoChange().fit(adata, "condition").predict(controls(adata), ["A", "A+B"])
    np.testing.assert_array_equal(pred.X, np.vstack([adata.X[:2], adata.X[:2]]))


def test_mean_shift_by_hand(adata):
    model = MeanShift().fit(adata, "condition")
    pred = model.predict(controls(adata), ["A", "A+B"])
    expected = [
        [2.0, 1.0, 1.0],  # c1 + shift(A)
        [4.0, 1.0, 1.0],  # c2 + shift(A)
        [3.0, 0.0, 0.0],  # c1 + shift(A+B), the combination's own shift
        [5.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(pred.X, expected)


def test_mean_shift_unseen_uses_mean_of_all_perturbed_cells(adata):
    # all perturbed cells: mean (3, 0.5, 0.625) -> shift (1, -1.5, 0.125)
    model = MeanShift().fit(adata, "condition")
    with pytest.warns(UserWarning, match=r"'AA' was not in the training data.*Did you mean"):
        pred = model.predict(controls(adata), "AA")
    np.testing.assert_allclose(pred.X, [[2.0, 0.5, 0.625], [4.0, 0.5, 0.625]])


def test_additive_by_hand(adata):
    pred = Additive().fit(adata, "condition").predict(controls(adata), ["A+B", "B"])
    expected = [
        [2.0, 0.0, 1.0],  # c1 + (1, -1, 0.5) + (0, -2, 0) = (2, -1, 1), clipped at 0
        [4.0, 0.0, 1.0],  # c2: (4, -1, 1), clipped
        [1.0, 0.0, 0.5],  # c1 + shift(B)
        [3.0, 0.0, 0.5],
    ]
    np.testing.assert_allclose(pred.X, expected)
    # the seen combination's own shift is not used
    assert not np.allclose(
        pred.X[:2], MeanShift().fit(adata, "condition").predict(controls(adata), "A+B").X
    )


def test_shifts_within_cell_type():
    # T1: control (1, 1), A (2, 1) -> shift (1, 0); T2: control (3, 3), A (3, 5) -> shift (0, 2)
    # T3: control only -> pooled shift, weighted by perturbed cells: T1 has 1 cell, T2 has 3
    X = np.array([[1, 1], [2, 1], [3, 3], [3, 5], [3, 5], [3, 5], [1, 1]], dtype=np.float32)
    obs = pd.DataFrame(
        {
            "perturbation": ["ctrl", "A", "ctrl", "A", "A", "A", "ctrl"],
            "type": ["T1", "T1", "T2", "T2", "T2", "T2", "T3"],
        },
        index=[f"c{i}" for i in range(7)],
    )
    adata = ad.AnnData(X, obs=obs)
    model = MeanShift().fit(adata, "perturbation", cell_type_key="type")
    ctrl = adata[adata.obs.perturbation == "ctrl"]
    # cell types from adata_ctrl.obs["type"]: T1, T2, T3
    pred = model.predict(ctrl, "A")
    np.testing.assert_allclose(pred.X, [[2, 1], [3, 5], [1 + 0.25, 1 + 1.5]])
    assert pred.obs.cell_type.tolist() == ["T1", "T2", "T3"]
    # an explicit cell type applies to all cells
    pred = model.predict(ctrl, "A", cell_type="T2")
    np.testing.assert_allclose(pred.X, [[1, 3], [3, 5], [1, 3]])
    with pytest.raises(ValueError, match=r"cell_type='T-2'.*Did you mean \['T2'\]"):
        model.predict(ctrl, "A", cell_type="T-2")


def test_cell_type_without_controls_is_ignored_with_warning():
    X = np.array([[1, 1], [2, 1], [9, 9]], dtype=np.float32)
    obs = pd.DataFrame(
        {"perturbation": ["ctrl", "A", "A"], "type": ["T1", "T1", "T2"]}, index=["c", "a", "x"]
    )
    adata = ad.AnnData(X, obs=obs)
    with pytest.warns(UserWarning, match=r"\['T2'\] have no control cells"):
        model = Additive().fit(adata, "perturbation", cell_type_key="type")
    with pytest.warns(UserWarning, match=r"\['T9'\].*were not in training"):
        pred = model.predict(
            ad.AnnData(X[:1], obs=pd.DataFrame({"type": ["T9"]}, index=["n"])), "A"
        )
    np.testing.assert_allclose(pred.X, [[2, 1]])  # the change of T1 only


def test_shrunk_changes_by_hand(adata):
    train = MeanShift().fit(adata, "condition").training_
    # A: change (1, -1, 0.5), |change|^2 = 2.25; sampling variance of its two means per gene:
    # A's cells (0, 0, 0.5) / 2 plus the controls' (2, 0, 0) / 2, summed 1.25 -> 1 - 1.25 / 2.25
    np.testing.assert_allclose(train.shift("A", shrink=True), np.array([1, -1, 0.5]) * 4 / 9)
    np.testing.assert_allclose(train.shift("A"), [1, -1, 0.5])  # not shrunk unless asked
    # B has one cell: its noise is unknown (infinite) and its change shrinks to none
    np.testing.assert_array_equal(train.shift("B", shrink=True), [0, 0, 0])
    additive = Additive().fit(adata, "condition")
    np.testing.assert_allclose(
        additive._delta("A+B", "all", shrink=True), np.array([1, -1, 0.5]) * 4 / 9
    )
    # a baseline fitted without sums of squares (saved by an older version) is never shrunk
    del train.sumsq  # as unpickled: the class default, None
    np.testing.assert_allclose(train.shift("A", shrink=True), [1, -1, 0.5])


def test_a_change_pooled_over_contexts_shrinks_less(adata):
    two = ad.concat({"t1": adata, "t2": adata}, label="cell_type", index_unique="-")
    train = MeanShift().fit(two, "condition", cell_type_key="cell_type").training_
    train.cell_types.append("t3")  # a context without A: the average of t1 and t2
    # the same change in each, each half the weight: variance 1.25 / 2 -> 1 - 0.625 / 2.25
    np.testing.assert_allclose(
        train.shift("A", "t3", shrink=True), np.array([1, -1, 0.5]) * 13 / 18
    )
    np.testing.assert_allclose(train.shift("A", "t1", shrink=True), np.array([1, -1, 0.5]) * 4 / 9)


def test_a_context_of_one_cell_is_left_out_of_a_shrunk_pooled_change(adata):
    one = adata[["c1", "c2", "a1"]].copy()
    one.X[2] = [5.0, 5.0, 5.0]
    two = ad.concat({"t1": adata, "t2": one}, label="cell_type", index_unique="-")
    train = MeanShift().fit(two, "condition", cell_type_key="cell_type").training_
    train.cell_types.append("t3")
    # t2's single A cell has no noise estimate: the shrunk change is t1's alone
    np.testing.assert_allclose(train.shift("A", "t3", shrink=True), np.array([1, -1, 0.5]) * 4 / 9)
    assert not np.allclose(train.shift("A", "t3"), [1, -1, 0.5])  # unshrunk: pooled with t2


# ------------------------------------------------------------- LinearBaseline


def _structured(genes=("g0", "g1", "g2", "g3", "g4", "g5"), tokens=("A", "B", "C", "D")):
    """Each condition's cells are the control cells plus a fixed change that sums to 0."""
    rng = np.random.default_rng(0)
    control = rng.uniform(3.0, 4.0, size=(4, len(genes)))
    shifts = {t: rng.normal(0, 0.5, size=len(genes)) for t in tokens}
    shifts = {t: s - s.mean() for t, s in shifts.items()}
    blocks, labels = [control], ["ctrl"] * 4
    for t, s in shifts.items():
        blocks.append(control + s)
        labels += [t] * 4
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(np.vstack(blocks), obs=obs, var=pd.DataFrame(index=list(genes)))
    return adata, shifts


def test_linear_baseline_reduces_to_additive_at_full_rank():
    # Changes summing to zero over genes lie in the span of the gene PCs, so with all components
    # and (almost) no ridge the token changes are reconstructed exactly.
    adata, shifts = _structured()
    ctrl = adata[:4]
    linear = LinearBaseline(n_components=10, ridge=1e-9).fit(adata, "perturbation")
    for token, shift in shifts.items():
        np.testing.assert_allclose(linear.token_effects_[token], shift, atol=1e-6)
    np.testing.assert_allclose(
        linear.predict(ctrl, ["A+B", "C"]).X,
        Additive().fit(adata, "perturbation").predict(ctrl, ["A+B", "C"]).X,
        atol=1e-5,
    )


def test_linear_baseline_combination_is_sum_of_token_changes():
    adata, _ = _structured()
    ctrl = adata[:4]
    model = LinearBaseline(n_components=2).fit(adata, "perturbation")
    a, b = model.token_effects_["A"], model.token_effects_["B"]
    # values near 3.5 and small changes: nothing is clipped
    np.testing.assert_allclose(model.predict(ctrl, "B+A").X, ctrl.X + a + b, rtol=1e-5)
    # rank 2: not an exact reconstruction of the four changes
    assert model.token_effects_["A"].shape == (6,)
    assert repr(model).startswith("LinearBaseline(n_components=2, ridge=0.1")


def test_linear_baseline_unseen_tokens():
    # tokens named after measured genes: an unseen measured gene uses the gene embedding
    adata, _ = _structured(genes=("A", "B", "C", "D", "E", "F"), tokens=("A", "B", "C"))
    model = LinearBaseline(n_components=3).fit(adata, "perturbation")
    pred = model.predict(adata[:4], ["E", "A+E"])
    assert pred.shape == (8, 6)
    assert np.isfinite(pred.X).all()
    with pytest.raises(ValueError, match=r"'Z'.*not a measured gene"):
        model.predict(adata[:4], "A+Z")
    # tokens that are not genes: no gene-embedding map, an unseen measured gene is refused
    adata, _ = _structured()
    model = LinearBaseline().fit(adata, "perturbation")
    with pytest.raises(ValueError, match=r"'g1'.*no training perturbation targets a measured gene"):
        model.predict(adata[:4], "g1")
    with pytest.raises(ValueError, match=r"'E'.*not a measured gene"):
        model.predict(adata[:4], "E")


# --------------------------------------------------------- layout, no changes


@pytest.mark.parametrize("cls", BASELINES)
def test_prediction_layout(cls, adata):
    model = cls().fit(adata, "condition", layer="log")
    ctrl = controls(adata)
    pred = model.predict(ctrl, ["B+A", "A", "ctrl"], cell_type="K562", layer="log")
    assert pred.shape == (6, 3)
    assert list(pred.var_names) == ["g0", "g1", "g2"]
    assert pred.obs.perturbation.tolist() == ["A+B", "A+B", "A", "A", "ctrl", "ctrl"]
    assert pred.obs.control_cell.tolist() == ["c1", "c2"] * 3
    assert pred.obs.cell_type.tolist() == ["K562"] * 6
    assert pred.obs.predicted.all()
    assert pred.uns["scdoloris"]["method"] == cls.name
    assert pred.X.dtype == np.float32
    assert (pred.X >= 0).all()
    # "ctrl" predicts the control cells
    np.testing.assert_allclose(pred.X[4:], ctrl.X)


@pytest.mark.parametrize("cls", BASELINES)
def test_inputs_are_not_modified(cls, adata):
    before = adata.copy()
    model = cls().fit(adata, "condition")
    ctrl = controls(adata)
    model.predict(ctrl, ["A", "A+B"])
    model.predict(adata, "B")
    np.testing.assert_array_equal(adata.X, before.X)
    np.testing.assert_array_equal(adata.layers["log"], before.layers["log"])
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert list(adata.uns) == list(before.uns)


def test_genes_are_aligned_by_name(adata):
    model = Additive().fit(adata, "condition")
    ctrl = controls(adata)
    shuffled = ad.AnnData(ctrl[:, ["g2", "g0", "g1"]].X.copy(), obs=ctrl.obs.copy())
    shuffled.var_names = ["g2", "g0", "g1"]
    np.testing.assert_allclose(model.predict(shuffled, "A+B").X, model.predict(ctrl, "A+B").X)


# ------------------------------------------------------------------- errors


def test_errors(adata):
    with pytest.raises(
        KeyError, match=r"perturbation_key='conditon'.*Did you mean \['condition'\]"
    ):
        MeanShift().fit(adata, "conditon")
    with pytest.raises(KeyError, match="cell_type_key='type'"):
        MeanShift().fit(adata, "condition", cell_type_key="type")
    with pytest.raises(ValueError, match=r"No control cells.*'control'.*Did you mean \['ctrl'\]"):
        MeanShift().fit(adata, "condition", control_group="control")
    with pytest.raises(RuntimeError, match="not fitted"):
        MeanShift().predict(controls(adata), "A")
    with pytest.raises(ValueError, match=r"single perturbation 'C' \(of 'A\+C'\)"):
        Additive().fit(adata, "condition").predict(controls(adata), "A+C")
    model = MeanShift().fit(adata, "condition")
    with pytest.raises(ValueError, match="lacks 1"):
        model.predict(controls(adata)[:, :2], "A")
    counts = adata.copy()
    counts.X = np.rint(np.expm1(counts.X) * 20)
    with pytest.raises(ValueError, match="raw counts"):
        MeanShift().fit(counts, "condition")
    with pytest.raises(ValueError, match="raw counts"):
        model.predict(controls(counts), "A")
    missing = adata.copy()
    missing.obs.loc["a1", "condition"] = np.nan
    with pytest.raises(ValueError, match="1 missing values"):
        MeanShift().fit(missing, "condition")
    with pytest.raises(ValueError, match="n_components"):
        LinearBaseline(n_components=0)
    only_pairs = adata[adata.obs.condition.isin(["ctrl", "B+A"])]
    model = LinearBaseline()
    with pytest.raises(ValueError, match="needs single perturbations"):
        model.fit(only_pairs, "condition")
    assert model.training_ is None


# -------------------------------------------------------------- real data


def test_additive_beats_no_change_on_norman_pair(real_data):
    import scanpy as sc

    adata = ad.read_h5ad(real_data("norman2019_k562_subset.h5ad"))  # X holds raw counts
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    perturbation = adata.obs["perturbation"].astype(str)
    train = adata[~perturbation.str.contains("+", regex=False)]  # control and singles
    ctrl = adata[perturbation == "control"]
    real = adata[perturbation == "KLF1+MAP2K6"].X.toarray()

    scores = {}
    for cls in (NoChange, Additive):
        model = cls().fit(train, "perturbation", control_group="control")
        scores[cls.name] = e_distance(model.predict(ctrl, "KLF1+MAP2K6").X, real)
    # measured: NoChange 0.808, Additive 0.236
    assert scores["Additive"] < 0.5 * scores["NoChange"], scores
