"""Tests of scdoloris.metrics: hand-computed values, scipy references, properties, evaluate()."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse
from scipy.spatial.distance import cdist, pdist
from scipy.stats import wasserstein_distance

from scdoloris import metrics
from scdoloris.metrics import e_distance, emd, evaluate, pearson_delta, rmse, top_de_genes


def brute_e_distance(P: np.ndarray, R: np.ndarray) -> float:
    within_p = pdist(P).mean() if len(P) > 1 else 0.0
    within_r = pdist(R).mean() if len(R) > 1 else 0.0
    return math.sqrt(max(0.0, 2 * cdist(P, R).mean() - within_p - within_r))


def scipy_emd(P: np.ndarray, R: np.ndarray) -> float:
    return float(np.mean([wasserstein_distance(P[:, g], R[:, g]) for g in range(P.shape[1])]))


# ---------------------------------------------------------------- e_distance


@pytest.mark.parametrize(
    ("P", "R", "expected"),
    [
        # cross mean (3 + 5 + 2 + 4) / 4 = 3.5; within: 1 and 2 -> sqrt(7 - 1 - 2)
        ([[0.0], [1.0]], [[3.0], [5.0]], 2.0),
        # one cell each: no within pair, sqrt(2 * 2)
        ([[0.0]], [[2.0]], 2.0),
        # 2-D, one cell each: sqrt(2 * 5)
        ([[0.0, 0.0]], [[3.0, 4.0]], math.sqrt(10.0)),
        # same two points: 2 * 1 - 2 - 2 < 0, clipped to 0
        ([[0.0], [2.0]], [[2.0], [0.0]], 0.0),
        # P = {0, 0, 3}: cross to {1}: (1 + 1 + 2) / 3; within (0 + 3 + 3) / 3 = 2
        ([[0.0], [0.0], [3.0]], [[1.0]], math.sqrt(2 * 4 / 3 - 2)),
    ],
)
def test_e_distance_by_hand(P, R, expected):
    assert e_distance(np.array(P), np.array(R)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 5), (7, 3), (20, 31)])
def test_e_distance_matches_brute_force(n, m):
    rng = np.random.default_rng(n * 100 + m)
    P = rng.normal(size=(n, 6))
    R = rng.normal(0.5, 1.5, size=(m, 6))
    assert e_distance(P, R) == pytest.approx(brute_e_distance(P, R), rel=1e-9, abs=1e-12)


def test_e_distance_blocks_and_sparse(monkeypatch):
    rng = np.random.default_rng(0)
    P = rng.poisson(0.5, size=(40, 30)).astype(np.float32)
    R = rng.poisson(0.8, size=(25, 30)).astype(np.float32)
    expected = brute_e_distance(P.astype(float), R.astype(float))
    monkeypatch.setattr(metrics, "_BLOCK_ENTRIES", 64)  # many small blocks
    assert e_distance(P, R) == pytest.approx(expected, rel=1e-9)
    assert e_distance(sparse.csr_matrix(P), sparse.csc_matrix(R)) == pytest.approx(
        expected, rel=1e-9
    )


def test_e_distance_shift_and_1d_input():
    # translation invariant; a 1-D array is one gene
    P, R = np.array([0.0, 1.0]), np.array([3.0, 5.0])
    assert e_distance(P, R) == pytest.approx(2.0)
    assert e_distance(P + 1e6, R + 1e6) == pytest.approx(2.0, rel=1e-6)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="genes"):
        e_distance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no cells"):
        emd(np.zeros((0, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        e_distance(np.array([[np.nan]]), np.zeros((1, 1)))


# ---------------------------------------------------------------------- emd


def test_emd_by_hand():
    # all of R lies above P: W1 = mean(R) - mean(P) = 3 - 0.5
    assert emd(np.array([0.0, 1.0]), np.array([2.0, 3.0, 4.0])) == pytest.approx(2.5)
    # two genes, distances 1 and 0
    assert emd(np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])) == pytest.approx(0.5)
    # {0, 0, 1} vs {0, 1}: the CDFs differ by 1/6 on [0, 1]
    assert emd(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0])) == pytest.approx(1 / 6)


@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 4), (5, 5), (6, 4), (7, 13), (30, 12)])
def test_emd_matches_scipy(n, m, monkeypatch):
    rng = np.random.default_rng(n + 7 * m)
    # zero-inflated, with ties, like expression
    P = rng.poisson(0.7, size=(n, 9)) * rng.uniform(0.5, 2, size=(n, 9))
    R = rng.poisson(1.2, size=(m, 9)) * rng.uniform(0.5, 2, size=(m, 9))
    expected = scipy_emd(P, R)
    assert emd(P, R) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    monkeypatch.setattr(metrics, "_BLOCK_ENTRIES", 8)  # gene blocks of one or a few genes
    assert emd(sparse.csr_matrix(P), R) == pytest.approx(expected, rel=1e-10, abs=1e-12)


# ------------------------------------------------------- rmse, pearson, DE


def test_rmse_by_hand():
    P = np.array([[1.0, 2.0], [3.0, 2.0]])  # mean (2, 2)
    R = np.array([[2.0, 0.0]])
    assert rmse(P, R) == pytest.approx(math.sqrt(2.0))
    assert rmse(sparse.csr_matrix(P), R) == pytest.approx(math.sqrt(2.0))


def test_pearson_delta_by_hand():
    C = np.array([[1.0, 1.0, 1.0]])
    P = np.array([[2.0, 3.0, 4.0]])  # change (1, 2, 3)
    assert pearson_delta(P, np.array([[3.0, 5.0, 7.0]]), C) == pytest.approx(1.0)
    assert pearson_delta(P, np.array([[0.0, -1.0, -2.0]]), C) == pytest.approx(-1.0)
    # change (1, 0, 1) vs (1, 2, 3): centred (1/3, -2/3, 1/3) . (-1, 0, 1) = 0
    assert pearson_delta(np.array([[2.0, 1.0, 2.0]]), P, C) == pytest.approx(0.0, abs=1e-12)
    # a prediction equal to control has no change: undefined
    assert math.isnan(pearson_delta(C, P, C))


def test_top_de_genes():
    control = np.array([[1.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
    real = np.array([[1.0, 5.0, 0.0, 1.5], [1.0, 5.0, 0.0, 1.5]])
    assert top_de_genes(real, control, 3).tolist() == [1, 2, 3]
    assert top_de_genes(real, control, 10).tolist() == [1, 2, 3, 0]  # capped, ties by order
    assert top_de_genes(sparse.csr_matrix(real), control, 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="method"):
        top_de_genes(real, control, 2, method="t-test")


def test_top_de_genes_wilcoxon():
    rng = np.random.default_rng(0)
    control = rng.uniform(0, 1, size=(30, 6))
    real = rng.uniform(0, 1, size=(30, 6))
    real[:, 4] += 3.0  # up
    real[:, 1] -= 0.9  # down (may go negative: only the ranking matters here)
    top = top_de_genes(np.clip(real, 0, None), control, 2, method="wilcoxon")
    assert sorted(top.tolist()) == [1, 4]


# ---------------------------------------------------------------- properties


@st.composite
def two_sets(draw):
    n_genes = draw(st.integers(1, 4))
    values = st.floats(0, 10, allow_nan=False, width=32)
    P = draw(arrays(np.float64, (draw(st.integers(1, 6)), n_genes), elements=values))
    R = draw(arrays(np.float64, (draw(st.integers(1, 6)), n_genes), elements=values))
    return P, R


@settings(max_examples=30, deadline=None)
@given(two_sets())
def test_metrics_symmetric_and_non_negative(sets):
    P, R = sets
    for metric in (e_distance, emd, rmse):
        forward, backward = metric(P, R), metric(R, P)
        assert forward >= 0
        assert forward == pytest.approx(backward, rel=1e-9, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(two_sets())
def test_metrics_zero_on_identical_sets(sets):
    P, _ = sets
    assert e_distance(P, P.copy()) == pytest.approx(0.0, abs=1e-6)
    assert emd(P, P.copy()) == 0.0
    assert rmse(P, P.copy()) == 0.0
    # the order of the cells does not matter
    assert emd(P, P[::-1]) == 0.0


@settings(max_examples=30, deadline=None)
@given(two_sets())
def test_e_distance_and_emd_match_references(sets):
    P, R = sets
    assert e_distance(P, R) == pytest.approx(brute_e_distance(P, R), rel=1e-6, abs=1e-6)
    assert emd(P, R) == pytest.approx(scipy_emd(P, R), rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------ evaluate


def _cells(label: str, n: int, shift: np.ndarray, seed: int, genes=("g0", "g1", "g2", "g3")):
    rng = np.random.default_rng(seed)
    X = np.log1p(rng.poisson(np.exp(shift) * 2.0, size=(n, len(genes)))).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": [label] * n}, index=[f"{label}-{seed}-{i}" for i in range(n)]
    )
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=list(genes)))


@pytest.fixture
def eval_data():
    control = _cells("ctrl", 15, np.zeros(4), 0)
    real = ad.concat(
        [
            _cells("A", 12, np.array([1.0, 0, 0, 0]), 1),
            _cells("A+B", 10, np.array([1.0, -1, 0, 0]), 2),
            _cells("C", 8, np.array([0, 0, 1.0, 0]), 3),
        ]
    )
    pred = ad.concat(
        [
            _cells("A", 9, np.array([1.0, 0, 0, 0]), 4),
            _cells("B+A", 11, np.zeros(4), 5),  # same condition as A+B
            _cells("D", 5, np.zeros(4), 6),  # not in real: ignored
        ]
    )
    return pred, real, control


def test_evaluate_table(eval_data):
    pred, real, control = eval_data
    table = evaluate(pred, real, control, de_top=(1, 2))
    assert list(table.columns) == ["condition", "gene_set", "metric", "value", "n_pred", "n_real"]
    assert len(table) == 2 * 3 * 4  # conditions x gene sets x metrics
    assert sorted(table.condition.unique()) == ["A", "A+B"]
    assert list(table.gene_set.unique()) == ["all", "DE1", "DE2"]
    assert list(table.metric.unique()) == ["e_distance", "emd", "rmse", "pearson_delta"]
    counts = table.groupby("condition")[["n_pred", "n_real"]].first()
    assert counts.loc["A"].tolist() == [9, 12]
    assert counts.loc["A+B"].tolist() == [11, 10]
    # the numbers are the metric functions on the right cells and genes
    row = table.query("condition == 'A+B' and gene_set == 'all' and metric == 'e_distance'")
    assert row.value.item() == pytest.approx(e_distance(pred[9:20].X, real[12:22].X))
    de1 = top_de_genes(real[12:22].X, control.X, 1)
    row = table.query("condition == 'A+B' and gene_set == 'DE1' and metric == 'emd'")
    assert row.value.item() == pytest.approx(emd(pred[9:20].X[:, de1], real[12:22].X[:, de1]))


def test_evaluate_perfect_prediction(eval_data):
    _, real, control = eval_data
    table = evaluate(real, real, control, de_top=(2,)).set_index(
        ["condition", "gene_set", "metric"]
    )
    assert table.loc[("A", "all", "e_distance"), "value"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc[("A", "DE2", "emd"), "value"] == 0.0
    assert table.loc[("C", "all", "rmse"), "value"] == 0.0
    assert table.loc[("C", "all", "pearson_delta"), "value"] == pytest.approx(1.0)


def test_evaluate_aligns_genes_by_name(eval_data):
    pred, real, control = eval_data
    shuffled = real[:, ["g3", "g1", "g0", "g2"]].copy()
    pd.testing.assert_frame_equal(evaluate(pred, shuffled, control), evaluate(pred, real, control))


def test_evaluate_errors(eval_data):
    pred, real, control = eval_data
    with pytest.raises(ValueError, match=r"No condition.*'D'.*'C'"):
        evaluate(pred[pred.obs.perturbation == "D"], real, control)
    with pytest.raises(KeyError, match="perturbation"):
        evaluate(pred, real, control, groupby="perturbaton")
    with pytest.raises(ValueError, match="lacks 1"):
        evaluate(pred, real[:, :3], control)
    counts = real.copy()
    counts.X = np.rint(np.expm1(counts.X) * 20)
    with pytest.raises(ValueError, match="raw counts"):
        evaluate(pred, counts, control)


# -------------------------------------------------------------- pertpy check


def test_e_distance_relation_to_pertpy():
    pytest.importorskip(
        "pertpy", reason="pertpy is not installed; the cross-check against its edistance is skipped"
    )
    from pertpy.tools import Distance

    rng = np.random.default_rng(3)
    P = rng.normal(size=(7, 5))
    R = rng.normal(1.0, 1.0, size=(9, 5))
    ours = e_distance(P, R)
    theirs = Distance(metric="edistance")(P, R)
    # pertpy averages the within-set distances over all n^2 pairs (zero diagonal included)
    assert theirs == pytest.approx(ours**2 + pdist(P).mean() / 7 + pdist(R).mean() / 9, rel=1e-9)


def test_evaluate_with_wilcoxon_de_genes(eval_data):
    pred, real, control = eval_data
    table = evaluate(pred, real, control, de_top=(2,), de_method="wilcoxon")
    assert table.shape == (2 * 2 * 4, 6)
    assert table.value.notna().all()


# ---------------------------------------------------------------- downstream: DE and detection
def test_wilcoxon_scores_are_scanpys():
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    from scdoloris.metrics import top_de_by_wilcoxon, wilcoxon_scores

    rng = np.random.default_rng(3)
    # sparse counts: many zeros and ties, as in real cells; a gene silent in both
    X = np.log1p(rng.poisson(0.6, (80, 40)) * rng.uniform(0.5, 2.0, 40)).astype(np.float32)
    C = np.log1p(rng.poisson(0.5, (60, 40)) * rng.uniform(0.5, 2.0, 40)).astype(np.float32)
    X[:, 0] = C[:, 0] = 0
    both = ad.AnnData(np.vstack([X, C]))
    both.obs["group"] = pd.Categorical(["p"] * 80 + ["c"] * 60)
    both.uns["log1p"] = {"base": None}
    sc.tl.rank_genes_groups(both, "group", groups=["p"], reference="c", method="wilcoxon")
    result = both.uns["rank_genes_groups"]
    genes = np.asarray(result["names"]["p"]).astype(int)
    ours = wilcoxon_scores(X, C)
    np.testing.assert_allclose(ours[genes], np.asarray(result["scores"]["p"]), atol=1e-5)
    np.testing.assert_allclose(wilcoxon_scores(sparse.csr_matrix(X), C), ours)
    assert ours[0] == 0.0
    top = top_de_by_wilcoxon(X, C, 5)
    assert sorted(np.abs(ours)[top]) == sorted(np.sort(np.abs(ours))[-5:])


def test_de_overlap_counts_the_real_top_genes_found():
    from scdoloris.metrics import de_overlap

    rng = np.random.default_rng(4)
    C = rng.gamma(2.0, 1.0, (100, 30)) * (rng.random((100, 30)) < 0.5)
    R = C.copy()
    R[:, :5] += 3.0  # the real DE genes: 0-4
    assert de_overlap(R, R, C, n=5) == 1.0
    P = C.copy()
    P[:, 2:7] += 3.0  # finds 2, 3, 4 of them
    assert de_overlap(P, R, C, n=5) == pytest.approx(0.6)
    # a constant non-zero value in every predicted cell of a gene silent in the controls is
    # the strongest rank-test signal there is: it pushes real DE genes out
    C[:, 10] = 0
    Q = R.copy()
    Q[:, 10] = 0.01
    assert de_overlap(Q, R, C, n=5) < 1.0


def test_detection_and_expressed_genes():
    from scdoloris.metrics import constant_genes, detection_error, expressed_genes_ratio

    real = np.array([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    filled = real + 0.1  # every zero filled
    assert detection_error(real, real) == 0.0
    assert detection_error(filled, real) == pytest.approx(0.5)
    assert expressed_genes_ratio(filled, real) == 2.0
    assert constant_genes(real).size == 0
    assert constant_genes(np.zeros((3, 2)) + [0.0, 0.2]).tolist() == [1]
    with pytest.raises(ValueError, match="non-empty"):
        detection_error(np.zeros((0, 4)), real)
