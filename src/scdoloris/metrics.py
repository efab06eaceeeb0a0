"""Distribution metrics for predicted versus real perturbed cells.

Every metric compares a set of predicted cells ``P`` with a set of real perturbed cells ``R``
(cells x genes, same genes in the same order, same scale: log-normalised expression). The
definitions follow the Doloris paper's evaluation:

* :func:`e_distance`: energy distance between the two cell clouds,
* :func:`emd`: mean over genes of the 1-D Wasserstein-1 distance,
* :func:`rmse`: root mean squared error between the mean expression vectors,
* :func:`pearson_delta`: Pearson correlation of the predicted and real mean changes from control,

and :func:`evaluate` computes them per condition on all genes and on the top differentially
expressed genes of each condition (:func:`top_de_genes`). What users do next with predicted
cells, differential expression and which genes each cell expresses, has metrics of its own:
:func:`de_overlap` (of the top DE genes by :func:`wilcoxon_scores`, scanpy's Wilcoxon scores),
:func:`detection_error`, :func:`expressed_genes_ratio` and :func:`constant_genes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ._anndata_utils import align_genes, check_log_normalised, close_matches
from ._downstream import (
    constant_genes,
    de_overlap,
    detection_error,
    expressed_genes_ratio,
    top_de_by_wilcoxon,
    wilcoxon_scores,
)
from ._perturbation import normalize_perturbation

__all__ = [
    "e_distance",
    "emd",
    "rmse",
    "pearson_delta",
    "top_de_genes",
    "evaluate",
    "wilcoxon_scores",
    "top_de_by_wilcoxon",
    "de_overlap",
    "detection_error",
    "expressed_genes_ratio",
    "constant_genes",
]

# Largest number of entries of one block of the distance matrix (32 MB in float64).
_BLOCK_ENTRIES = 1 << 22


def _as_cells(X, name: str) -> np.ndarray:
    """Return ``X`` as a dense 2-D float64 array of cells x features (1-D: one feature)."""
    if sparse.issparse(X):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be a cells x genes matrix, got shape {X.shape}.")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no cells (shape {X.shape}).")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf).")
    return X


def _as_pair(P, R, names: tuple[str, str] = ("P", "R")) -> tuple[np.ndarray, np.ndarray]:
    P, R = _as_cells(P, names[0]), _as_cells(R, names[1])
    if P.shape[1] != R.shape[1]:
        raise ValueError(
            f"{names[0]} has {P.shape[1]} genes but {names[1]} has {R.shape[1]}; pass both on "
            "the same genes in the same order."
        )
    return P, R


def _column_means(X, name: str) -> np.ndarray:
    """Mean of each column of a dense or sparse matrix, as float64 (1-D input: one column)."""
    if sparse.issparse(X):
        if X.shape[0] == 0:
            raise ValueError(f"{name} has no cells (shape {X.shape}).")
        means = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
    else:
        means = _as_cells(X, name).mean(axis=0)
    if not np.isfinite(means).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf).")
    return means


def _distance_sum(A: np.ndarray, B: np.ndarray, same: bool = False) -> float:
    """Sum of the Euclidean distances between all rows of ``A`` and all rows of ``B``.

    Computed block by block from squared norms and inner products. With ``same=True``
    (``B is A``) the diagonal (a point with itself) is set to exactly zero.
    """
    b_sq = np.einsum("ij,ij->i", B, B)
    step = max(1, _BLOCK_ENTRIES // max(B.shape[0], 1))
    total = 0.0
    for start in range(0, A.shape[0], step):
        a = A[start : start + step]
        d2 = np.einsum("ij,ij->i", a, a)[:, None] + b_sq[None, :] - 2.0 * (a @ B.T)
        np.maximum(d2, 0.0, out=d2)
        if same:
            rows = np.arange(a.shape[0])
            d2[rows, start + rows] = 0.0
        total += float(np.sqrt(d2).sum())
    return total


def _energy_terms(P: np.ndarray, R: np.ndarray) -> tuple[float, float, float]:
    """Mean cross distance and the two within-set means over distinct pairs."""
    # Centring on the pooled mean leaves distances unchanged and limits cancellation.
    centre = np.concatenate([P, R]).mean(axis=0)
    P, R = P - centre, R - centre
    n, m = P.shape[0], R.shape[0]
    cross = _distance_sum(P, R) / (n * m)
    within_p = _distance_sum(P, P, same=True) / (n * (n - 1)) if n > 1 else 0.0
    within_r = _distance_sum(R, R, same=True) / (m * (m - 1)) if m > 1 else 0.0
    return cross, within_p, within_r


def e_distance(P, R) -> float:
    r"""Energy distance between predicted and real cells.

    .. math::

        E(P, R) = \sqrt{\max\Big(0,\ \frac{2}{nm}\sum_{i,j}\lVert p_i - r_j\rVert
            - \frac{1}{\binom{n}{2}}\sum_{i<j}\lVert p_i - p_j\rVert
            - \frac{1}{\binom{m}{2}}\sum_{i<j}\lVert r_i - r_j\rVert\Big)}

    with Euclidean distances; the within-set means run over distinct pairs (a set of one cell
    has no pair and contributes 0). This is the paper's definition. The distances are computed
    in float64, block by block, so a few thousand cells by a few thousand genes take about a
    second and tens of MB.

    Relation to pertpy: ``pertpy.tools.Distance("edistance")`` (pertpy 1.0.3,
    ``Edistance.__call__``) returns ``2 * delta - sigma_P - sigma_R`` without square root or
    clipping, where ``delta`` is the mean cross distance and ``sigma_P``, ``sigma_R`` are means
    of the full ``n x n`` (``m x m``) distance matrices, zero diagonal included, i.e.
    ``(n - 1) / n`` times our within-set means. Hence
    ``pertpy = E(P, R)**2 + sigma_P' / n + sigma_R' / m`` (``sigma'`` our distinct-pair means,
    whenever the bracket above is non-negative): the two agree as the sets grow, but pertpy's
    value is biased upwards for small sets and is not zero for two samples of one distribution.

    Parameters
    ----------
    P
        Predicted cells, cells x genes, dense or sparse.
    R
        Real cells on the same genes, dense or sparse.

    Returns
    -------
    The E-distance, a non-negative float (0 for identical sets).

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[0.0], [1.0]])
    >>> R = np.array([[3.0], [5.0]])
    >>> e_distance(P, R)  # sqrt(2 * 3.5 - 1 - 2)
    2.0
    >>> e_distance(P, P)
    0.0
    """
    P, R = _as_pair(P, R)
    cross, within_p, within_r = _energy_terms(P, R)
    return float(math.sqrt(max(0.0, 2.0 * cross - within_p - within_r)))


def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps of the two empirical quantile functions on their common grid.

    On ``(q_{k-1}, q_k]`` the quantile functions of samples of sizes ``n`` and ``m`` are the
    ``iu[k]``-th and ``iv[k]``-th order statistics; ``weight[k] = q_k - q_{k-1}``. Exact
    integer arithmetic in units of ``1 / lcm(n, m)``.
    """
    lcm = math.lcm(n, m)
    grid = np.union1d(np.arange(1, n + 1) * (lcm // n), np.arange(1, m + 1) * (lcm // m))
    weight = np.diff(grid, prepend=0) / lcm
    iu = -(-(grid * n) // lcm) - 1  # ceil(q * n) - 1
    iv = -(-(grid * m) // lcm) - 1
    return iu, iv, weight


def _wasserstein_per_gene(P: np.ndarray, R: np.ndarray) -> np.ndarray:
    """1-D Wasserstein-1 distance between each column of ``P`` and the same column of ``R``.

    Uses ``W1 = integral over q in (0, 1) of |F_P^{-1}(q) - F_R^{-1}(q)|``; the quantile
    functions are step functions, so the integral is an exact finite sum, done for all genes at
    once (in blocks of genes to bound memory).
    """
    iu, iv, weight = _quantile_grid(P.shape[0], R.shape[0])
    step = max(1, _BLOCK_ENTRIES // max(len(weight), 1))
    out = np.empty(P.shape[1])
    for start in range(0, P.shape[1], step):
        cols = slice(start, start + step)
        ps, rs = np.sort(P[:, cols], axis=0), np.sort(R[:, cols], axis=0)
        out[cols] = weight @ np.abs(ps[iu] - rs[iv])
    return out


def emd(P, R) -> float:
    """Mean over genes of the 1-D earth mover's (Wasserstein-1) distance.

    For each gene ``g`` the Wasserstein-1 distance between the empirical distributions of
    ``P[:, g]`` and ``R[:, g]`` (what :func:`scipy.stats.wasserstein_distance` returns), then the
    mean over genes. Vectorised over genes: the distance is the integral of the absolute
    difference of the two quantile functions, an exact sum over the union of their steps.
    The two sets may have different numbers of cells.

    Parameters
    ----------
    P
        Predicted cells, cells x genes, dense or sparse (a 1-D array is one gene).
    R
        Real cells on the same genes.

    Returns
    -------
    The mean Wasserstein-1 distance, a non-negative float.

    Examples
    --------
    >>> import numpy as np
    >>> P, R = np.array([0.0, 1.0]), np.array([2.0, 3.0, 4.0])  # one gene each
    >>> round(emd(P, R), 12)  # all of R lies above P: mean(R) - mean(P)
    2.5
    >>> emd(np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]]))  # genes: 1 and 0
    0.5
    """
    P, R = _as_pair(P, R)
    return float(_wasserstein_per_gene(P, R).mean())


def rmse(P, R) -> float:
    """Root mean squared error between the mean expression vectors of ``P`` and ``R``.

    Parameters
    ----------
    P
        Predicted cells, cells x genes, dense or sparse.
    R
        Real cells on the same genes.

    Returns
    -------
    ``sqrt(mean_g (mean P[:, g] - mean R[:, g]) ** 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> rmse(np.array([[1.0, 2.0], [3.0, 2.0]]), np.array([[2.0, 0.0]]))  # means (2, 2), (2, 0)
    1.4142135623730951
    """
    mp, mr = _column_means(P, "P"), _column_means(R, "R")
    if mp.shape != mr.shape:
        raise ValueError(f"P has {mp.size} genes but R has {mr.size}.")
    return float(np.sqrt(np.mean((mp - mr) ** 2)))


def pearson_delta(P, R, C) -> float:
    """Pearson correlation of the predicted and the real mean change from control.

    Parameters
    ----------
    P
        Predicted cells, cells x genes, dense or sparse.
    R
        Real perturbed cells on the same genes.
    C
        Control cells on the same genes.

    Returns
    -------
    The correlation over genes of ``mean(P) - mean(C)`` and ``mean(R) - mean(C)``; ``nan`` when
    either change is constant over genes (e.g. a prediction equal to control), where the
    correlation is undefined.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.zeros((2, 3))
    >>> pearson_delta(np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 4.0, 6.0]]), C)
    1.0
    """
    mc = _column_means(C, "C")
    dp = _column_means(P, "P") - mc
    dr = _column_means(R, "R") - mc
    if dp.shape != dr.shape:
        raise ValueError(f"P has {dp.size} genes but R has {dr.size}.")
    dp, dr = dp - dp.mean(), dr - dr.mean()
    denom = math.sqrt(float(dp @ dp) * float(dr @ dr))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((dp @ dr) / denom, -1.0, 1.0))


def _rank_wilcoxon(real, control, n: int) -> np.ndarray:
    import scanpy as sc

    if sparse.issparse(real) or sparse.issparse(control):
        X = sparse.vstack([sparse.csr_matrix(real), sparse.csr_matrix(control)]).tocsr()
    else:
        real, control = _as_cells(real, "real"), _as_cells(control, "control")
        X = np.vstack([real, control])
    groups = np.array(["perturbed"] * real.shape[0] + ["control"] * control.shape[0])
    tmp = ad.AnnData(
        X=X,
        obs=pd.DataFrame(
            {"group": pd.Categorical(groups)}, index=[str(i) for i in range(len(groups))]
        ),
        var=pd.DataFrame(index=[str(i) for i in range(X.shape[1])]),
    )
    tmp.uns["log1p"] = {"base": None}
    sc.tl.rank_genes_groups(
        tmp,
        "group",
        groups=["perturbed"],
        reference="control",
        method="wilcoxon",
        rankby_abs=True,
        n_genes=n,
        use_raw=False,
    )
    names = tmp.uns["rank_genes_groups"]["names"]["perturbed"]
    return np.asarray([int(g) for g in names], dtype=np.int64)


def top_de_genes(
    real, control, n: int, method: Literal["mean_diff", "wilcoxon"] = "mean_diff"
) -> np.ndarray:
    """Indices of the top ``n`` differentially expressed genes of perturbed vs control cells.

    The default ``method="mean_diff"`` ranks genes by the absolute difference of the mean
    log-normalised expression of ``real`` and ``control``. This is the ranking the paper's
    evaluation and recent benchmarks (e.g. GEARS, Ahlmann-Eltze et al. 2025) use to pick
    "top DE genes": it is cheap, needs no test statistic and is deterministic (ties are broken by
    gene order). ``method="wilcoxon"`` ranks by the absolute Wilcoxon rank-sum score of
    :func:`scanpy.tl.rank_genes_groups` instead.

    Parameters
    ----------
    real
        Perturbed cells, cells x genes, log-normalised (dense or sparse).
    control
        Control cells on the same genes.
    n
        How many genes; at most the number of genes is returned.
    method
        ``"mean_diff"`` or ``"wilcoxon"``.

    Returns
    -------
    Integer column indices, most differentially expressed first.

    Examples
    --------
    >>> import numpy as np
    >>> real = np.array([[1.0, 5.0, 0.0], [1.0, 5.0, 0.0]])
    >>> control = np.array([[1.0, 0.0, 2.0]])
    >>> top_de_genes(real, control, 2).tolist()
    [1, 2]
    """
    if n < 0:
        raise ValueError(f"n must be a non-negative number of genes, got {n}.")
    mr, mc = _column_means(real, "real"), _column_means(control, "control")
    if mr.shape != mc.shape:
        raise ValueError(f"real has {mr.size} genes but control has {mc.size}.")
    n = min(int(n), mr.size)
    if method == "mean_diff":
        return np.argsort(-np.abs(mr - mc), kind="stable")[:n]
    if method == "wilcoxon":
        return _rank_wilcoxon(real, control, n)
    raise ValueError(f"method must be 'mean_diff' or 'wilcoxon', got {method!r}.")


_METRICS = ("e_distance", "emd", "rmse", "pearson_delta")
_COLUMNS = ["condition", "gene_set", "metric", "value", "n_pred", "n_real"]


def _group_labels(
    adata: ad.AnnData, key: str, what: str, normalise: bool, control_group: str, delimiter: str
) -> np.ndarray:
    if key not in adata.obs:
        hint = close_matches(key, list(adata.obs.columns))
        raise KeyError(
            f"{what}.obs has no column {key!r}"
            + (f"; did you mean {hint}?" if hint else f" (columns: {list(adata.obs.columns)}).")
        )
    values = adata.obs[key].astype(str).to_numpy()
    if not normalise:
        return values
    unique, inverse = np.unique(values, return_inverse=True)
    canon = np.array(
        [normalize_perturbation(u, control_group, delimiter) for u in unique], dtype=object
    )
    return canon[inverse].astype(str)


def _check_finite(X: np.ndarray, what: str) -> None:
    if not np.isfinite(X).all():
        raise ValueError(f"{what} has non-finite values (NaN or inf); remove those cells first.")


def _metric_values(P: np.ndarray, R: np.ndarray, C: np.ndarray) -> dict[str, float]:
    return {
        "e_distance": e_distance(P, R),
        "emd": emd(P, R),
        "rmse": rmse(P, R),
        "pearson_delta": pearson_delta(P, R, C),
    }


def evaluate(
    pred: ad.AnnData,
    real: ad.AnnData,
    control: ad.AnnData,
    de_top: Sequence[int] = (20, 40),
    groupby: str = "perturbation",
    layer: str | None = None,
    *,
    pred_groupby: str | None = None,
    pred_layer: str | None = None,
    control_group: str = "ctrl",
    delimiter: str = "+",
    de_method: Literal["mean_diff", "wilcoxon"] = "mean_diff",
) -> pd.DataFrame:
    """Score predicted cells against real cells, condition by condition.

    For every condition present in both ``pred`` and ``real``, compares the predicted cells
    ``P`` with the real cells ``R`` of that condition by :func:`e_distance`, :func:`emd`,
    :func:`rmse` and :func:`pearson_delta` (change from the mean of ``control``), on all genes
    and on the top ``k`` DE genes of the condition for each ``k`` in ``de_top``. DE genes come
    from ``R`` vs ``control`` (:func:`top_de_genes`), so they do not depend on the prediction.

    Genes are those of ``pred`` (``real`` and ``control`` are aligned to them by name and must
    have them all). ``real`` and ``control`` must be log-normalised; ``pred`` on the same
    scale (it may have negative values, it must be finite).

    Parameters
    ----------
    pred
        Predicted cells, e.g. the output of a model's or baseline's ``predict``.
    real
        Real perturbed cells.
    control
        The control cells the changes are measured from (those of the matching cell type).
    de_top
        Sizes of the DE gene sets, each giving the gene set ``f"DE{k}"``.
    groupby
        Column of ``real.obs`` (and of ``pred.obs`` unless ``pred_groupby``) naming the
        condition. With ``"perturbation"`` the values are compared after
        :func:`~scdoloris.normalize_perturbation`, so ``"B+A"`` matches ``"A+B"``.
    layer
        Layer of ``real`` and ``control`` to read (``None``: ``X``).
    pred_groupby
        Column of ``pred.obs`` naming the condition, if it differs from ``groupby``.
    pred_layer
        Layer of ``pred`` to read (``None``: ``X``).
    control_group
        Label of control cells, used when normalising perturbation strings.
    delimiter
        The string joining the parts of a combination.
    de_method
        How DE genes are ranked, see :func:`top_de_genes`.

    Returns
    -------
    A tidy table with columns ``condition``, ``gene_set`` (``"all"``, ``"DE20"``, ``"DE40"``),
    ``metric`` (``"e_distance"``, ``"emd"``, ``"rmse"``, ``"pearson_delta"``), ``value``,
    ``n_pred`` and ``n_real`` (cells compared), one row per condition, gene set and metric.

    Raises
    ------
    ValueError
        If no condition is in both ``pred`` and ``real`` (both sides' conditions are named), or
        if ``real`` or ``control`` lack genes of ``pred`` or are not log-normalised.
    KeyError
        If a ``groupby`` column or a layer is missing.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> def cells(label, n, shift):
    ...     x = rng.poisson(1.0 + shift, size=(n, 5)).astype(np.float32)
    ...     obs = pd.DataFrame({"perturbation": [label] * n}, index=[f"{label}{i}" for i in range(n)])
    ...     return ad.AnnData(np.log1p(x), obs=obs, var=pd.DataFrame(index=list("abcde")))
    >>> control, real, pred = cells("ctrl", 20, 0.0), cells("A", 20, 1.0), cells("A", 20, 1.0)
    >>> table = evaluate(pred, real, control, de_top=(2,))
    >>> table.shape
    (8, 6)
    >>> sorted(table.gene_set.unique())
    ['DE2', 'all']
    """
    de_top = [int(k) for k in de_top]
    if any(k <= 0 for k in de_top):
        raise ValueError(f"de_top must hold positive gene counts, got {de_top}.")
    genes = pd.Index(pred.var_names)
    if not genes.is_unique:
        dup = genes[genes.duplicated()].unique()[:5].tolist()
        raise ValueError(f"pred.var_names has duplicates (e.g. {dup}).")
    Xp = align_genes(pred, genes, pred_layer, what="pred")
    Xr = align_genes(real, genes, layer, what="real")
    Xc = align_genes(control, genes, layer, what="control")
    _check_finite(Xp, "pred")
    check_log_normalised(Xr, where="real")
    check_log_normalised(Xc, where="control")
    if Xc.shape[0] == 0:
        raise ValueError("control has no cells.")

    normalise = groupby == "perturbation"
    pred_key = groupby if pred_groupby is None else pred_groupby
    pred_labels = _group_labels(pred, pred_key, "pred", normalise, control_group, delimiter)
    real_labels = _group_labels(real, groupby, "real", normalise, control_group, delimiter)
    conditions = sorted(set(pred_labels) & set(real_labels))
    if not conditions:
        p_groups, r_groups = sorted(set(pred_labels)), sorted(set(real_labels))
        raise ValueError(
            f"No condition is in both pred.obs[{pred_key!r}] and real.obs[{groupby!r}]. pred has "
            f"{p_groups[:20]}{' ...' if len(p_groups) > 20 else ''}; real has "
            f"{r_groups[:20]}{' ...' if len(r_groups) > 20 else ''}."
        )

    rows = []
    for cond in conditions:
        P, R = Xp[pred_labels == cond], Xr[real_labels == cond]
        gene_sets: list[tuple[str, np.ndarray | slice]] = [("all", slice(None))]
        if de_top:
            ranked = top_de_genes(R, Xc, max(de_top), method=de_method)
            gene_sets += [(f"DE{k}", ranked[:k]) for k in de_top]
        for name, idx in gene_sets:
            values = _metric_values(P[:, idx], R[:, idx], Xc[:, idx])
            rows += [(cond, name, m, values[m], P.shape[0], R.shape[0]) for m in _METRICS]
    return pd.DataFrame(rows, columns=_COLUMNS)
