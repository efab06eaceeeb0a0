"""Metrics of predicted cells as users take them downstream: differential expression and
which genes each cell expresses.

A prediction goes into :func:`scanpy.tl.rank_genes_groups`, marker plots and UMAPs, so it must
be a population of plausible cells: the genes it calls differentially expressed against the
controls should be the real ones (:func:`de_overlap`), its cells should express as many genes
as real cells (:func:`expressed_genes_ratio`) at the real per-gene rates
(:func:`detection_error`), and no gene may take one identical non-zero value in every cell
(:func:`constant_genes`: an artefact that a rank test calls infinitely significant).

The Wilcoxon scores are scanpy's (``rank_genes_groups(method="wilcoxon")``, no tie
correction), computed here without building an AnnData: the calibration scores dozens of
candidate predictions per held-out condition inside ``train()``, where scanpy's per-call set-up
costs more than the test itself. ``tests/test_metrics.py`` pins them to scanpy's.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = [
    "wilcoxon_scores",
    "top_de_by_wilcoxon",
    "de_overlap",
    "detection_error",
    "expressed_genes_ratio",
    "constant_genes",
]


def _dense64(X, name: str) -> np.ndarray:
    X = X.toarray() if sparse.issparse(X) else X
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty cells x genes matrix, got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf).")
    return X


class _SortedReference:
    """The reference cells' columns sorted once, to rank other cells' values against them.

    Every column is shifted by its own offset so that all columns sort into one array: a
    value's rank within its column is then one :func:`numpy.searchsorted` over that array.
    Zeros (most of a single-cell matrix) are counted per gene without a search.
    """

    def __init__(self, C: np.ndarray):
        self.n, n_genes = C.shape
        self.low = min(float(C.min()), 0.0)
        self.span = max(float(C.max()), 0.0) - self.low + 1.0
        self.offsets = np.arange(n_genes, dtype=np.float64) * self.span
        self.flat = (np.sort(C, axis=0) - self.low + self.offsets).T.ravel()
        self.zero_below = (C < 0).sum(axis=0)
        self.zero_ties = (C == 0).sum(axis=0)

    def below_and_ties(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per gene, summed over the rows of ``X``: reference values below and equal to them."""
        n_genes = X.shape[1]
        Xt = X.T
        nonzero = Xt != 0
        zeros = X.shape[0] - nonzero.sum(axis=1)
        below = zeros * self.zero_below
        ties = zeros * self.zero_ties
        genes = np.repeat(np.arange(n_genes), nonzero.sum(axis=1))
        if genes.size:
            # stay inside the gene's band: values beyond the reference's range rank the same
            values = np.clip(Xt[nonzero], self.low - 0.5, self.low + self.span - 0.5)
            # sorted keys search much faster; the bands keep them grouped by gene
            keys = np.sort(values - self.low + self.offsets[genes])
            left = np.searchsorted(self.flat, keys, side="left")
            right = np.searchsorted(self.flat, keys, side="right")
            below = below + np.bincount(genes, left - genes * self.n, n_genes)
            ties = ties + np.bincount(genes, right - left, n_genes)
        return below, ties


def wilcoxon_scores(X, C) -> np.ndarray:
    """Per gene, the Wilcoxon rank-sum z-score of cells ``X`` against reference cells ``C``.

    The score of :func:`scanpy.tl.rank_genes_groups` with ``method="wilcoxon"`` (its default
    ``tie_correct=False``): ``(U - n m / 2) / sqrt(n m (n + m + 1) / 12)`` with ``U`` the
    Mann-Whitney statistic of ``X`` (ties count one half). Positive: higher in ``X``.

    Parameters
    ----------
    X
        Cells x genes (e.g. predicted or real perturbed cells), dense or sparse.
    C
        Reference cells (e.g. the control cells) on the same genes (or, to rank several
        predictions against the same cells, their ``_SortedReference``).

    Returns
    -------
    One score per gene (0 where both are constant and equal).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[3.0, 0.0], [4.0, 0.0]])
    >>> C = np.array([[1.0, 0.0], [2.0, 0.0]])
    >>> wilcoxon_scores(X, C).round(4).tolist()  # U = 4 of 4 for gene 1; all ties for gene 2
    [1.5492, 0.0]
    """
    C = C if isinstance(C, _SortedReference) else _SortedReference(_dense64(C, "C"))
    X = _dense64(X, "X")
    if X.shape[1] != C.offsets.size:
        raise ValueError(f"X has {X.shape[1]} genes but C has {C.offsets.size}.")
    n, m = X.shape[0], C.n
    below, ties = C.below_and_ties(X)
    u = below + 0.5 * ties
    return (u - n * m / 2.0) / np.sqrt(n * m * (n + m + 1) / 12.0)


def top_de_by_wilcoxon(X, C, n: int = 20) -> np.ndarray:
    """The ``n`` genes with the largest absolute :func:`wilcoxon_scores` of ``X`` against
    ``C`` (ties in gene order), most differentially expressed first.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    >>> C = np.array([[1.0, 0.0, 5.0], [2.0, 0.0, 6.0]])
    >>> top_de_by_wilcoxon(X, C, 2).tolist()
    [0, 2]
    """
    if n < 0:
        raise ValueError(f"n must be a non-negative number of genes, got {n}.")
    scores = wilcoxon_scores(X, C)
    return np.argsort(-np.abs(scores), kind="stable")[: min(int(n), scores.size)]


def de_overlap(P, R, C, n: int = 20, real_top: np.ndarray | None = None) -> float:
    """The share of the real top-``n`` DE genes among the predicted top-``n``.

    Both rankings are :func:`top_de_by_wilcoxon` against the same control cells ``C``: the
    genes a user would find with ``sc.tl.rank_genes_groups(method="wilcoxon", rankby_abs=True)``
    on the prediction and on the real cells. 1 is every real DE gene found.

    Parameters
    ----------
    P, R, C
        Predicted, real perturbed and control cells on the same genes.
    n
        How many top genes.
    real_top
        The real ranking if already computed (``top_de_by_wilcoxon(R, C, n)``); ``R`` is then
        not read.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[1.0, 0.0, 5.0], [2.0, 0.0, 6.0]])
    >>> R = np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    >>> de_overlap(R, R, C, n=2), de_overlap(C, R, C, n=2)
    (1.0, 0.5)
    """
    if real_top is None:
        real_top = top_de_by_wilcoxon(R, C, n)
    real_top = np.asarray(real_top)[:n]
    if real_top.size == 0:
        return float("nan")
    found = top_de_by_wilcoxon(P, C, len(real_top))
    return float(len(set(found.tolist()) & set(real_top.tolist())) / len(real_top))


def _detected(X, name: str) -> np.ndarray:
    if sparse.issparse(X):
        X = X.tocsr()
        return np.asarray((X > 0).toarray())
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty cells x genes matrix, got shape {X.shape}.")
    return X > 0


def detection_error(P, R) -> float:
    """Mean over genes of the absolute difference of the detection rates (the share of cells
    with a non-zero value) of predicted and real cells.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> R = np.array([[1.0, 2.0], [0.0, 0.0]])
    >>> detection_error(P, R)  # gene 1: |1 - 0.5|, gene 2: |0 - 0.5|
    0.5
    """
    dp, dr = _detected(P, "P").mean(axis=0), _detected(R, "R").mean(axis=0)
    if dp.shape != dr.shape:
        raise ValueError(f"P has {dp.size} genes but R has {dr.size}.")
    return float(np.abs(dp - dr).mean())


def expressed_genes_ratio(P, R) -> float:
    """The median number of expressed (non-zero) genes per predicted cell over the same median
    for real cells (1: as many as real cells; the issue's acceptable range is 0.67 to 1.5).

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    >>> R = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> expressed_genes_ratio(P, R)
    2.5
    """
    p = np.median(_detected(P, "P").sum(axis=1))
    r = np.median(_detected(R, "R").sum(axis=1))
    return float(p / r) if r > 0 else float("nan")


def constant_genes(P, atol: float = 0.0) -> np.ndarray:
    """Genes whose value is one identical non-zero number in every cell of ``P`` (indices).

    Real cells never look like this (sampling makes some cells zero or different); in a
    prediction such a gene is an artefact that a rank test against control cells calls
    infinitely significant. Needs at least two cells.

    Parameters
    ----------
    P
        Cells x genes.
    atol
        Largest spread (max - min) still counted as one value.

    Examples
    --------
    >>> import numpy as np
    >>> constant_genes(np.array([[0.5, 0.0, 1.0], [0.5, 0.0, 2.0]])).tolist()
    [0]
    """
    P = _dense64(P, "P")
    if P.shape[0] < 2:
        return np.array([], dtype=np.int64)
    high, low = P.max(axis=0), P.min(axis=0)
    return np.flatnonzero((np.abs(high) > 0) & (high - low <= atol))
