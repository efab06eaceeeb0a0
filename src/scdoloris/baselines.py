"""Simple baselines for perturbation response prediction.

Recent benchmarks (Ahlmann-Eltze, Huber and Anders, Nature Methods 2025; PerturBench) show that
deep models rarely beat these, so every evaluation should report them:

* :class:`NoChange`: the control cells themselves;
* :class:`MeanShift`: control cells plus the mean change of the perturbation in training;
* :class:`Additive`: for a combination, control cells plus the sum of the single-token changes;
* :class:`LinearBaseline`: the low-rank linear model of Ahlmann-Eltze et al.;

and :func:`shrink_change`, a measured change shrunk toward no change by its sampling noise
(the calibration of :class:`~scdoloris.DolorisModel` uses it as a candidate baseline).

All share the interface of :class:`~scdoloris.DolorisModel`: ``fit`` on an AnnData of
log-normalised expression with a perturbation column, then ``predict`` from control cells.
``predict`` returns one predicted cell per control cell and perturbation, in the AnnData layout
of every scdoloris prediction (``obs``: ``perturbation``, ``cell_type``, ``control_cell``,
``predicted``; ``uns["scdoloris"]["method"]``). Changes are computed on the log-normalised
scale and predictions are clipped at 0. No baseline modifies the AnnData it is given.

A "change" (shift) of a condition is ``mean(perturbed cells) - mean(control cells)`` within a
cell type that has both; where a cell type lacks the condition it is the average of the
per-cell-type changes of the cell types that have it, weighted by their numbers of perturbed
cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ._anndata_utils import (
    align_genes,
    check_log_normalised,
    check_unique_var_names,
    close_matches,
    get_matrix,
    prediction_anndata,
)
from ._constants import DEFAULT_CELL_TYPE
from ._perturbation import normalize_perturbation, parse_perturbation

__all__ = ["NoChange", "MeanShift", "Additive", "LinearBaseline", "shrink_change"]

# Internal condition key: all perturbed (non-control) cells of a cell type.
_ANY_PERTURBED = "\x00any perturbed"


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    hits = close_matches(name, list(choices))
    return f" Did you mean {hits}?" if hits else ""


def _obs_labels(adata: ad.AnnData, key: str, argument: str) -> np.ndarray:
    """The values of ``adata.obs[key]`` as strings; clear errors for a bad key or missing values."""
    if key not in adata.obs:
        raise KeyError(
            f"{argument}={key!r} is not a column of adata.obs."
            + (_did_you_mean(key, adata.obs.columns) or f" Columns: {list(adata.obs.columns)}.")
        )
    column = adata.obs[key]
    n_missing = int(column.isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs[{key!r}] has {n_missing} missing values. Fill them (e.g. with the control "
            "label) or drop those cells."
        )
    return column.astype(str).to_numpy()


def _where(layer: str | None, what: str = "adata") -> str:
    return f"{what}.X" if layer is None else f"{what}.layers[{layer!r}]"


@dataclass
class _TrainingMeans:
    """Per (cell type, condition) expression sums and cell counts of the training data."""

    var_names: pd.Index
    control_group: str
    delimiter: str
    cell_type_key: str | None
    cell_types: list[str]
    sums: dict[tuple[str, str], np.ndarray]
    counts: dict[tuple[str, str], int]
    # sums of squares (None in baselines pickled without them: no shrinkage, see ``shift``)
    sumsq: dict[tuple[str, str], np.ndarray] | None = None

    @property
    def conditions(self) -> list[str]:
        """Perturbed (non-control) conditions seen in training, normalised."""
        skip = {self.control_group, _ANY_PERTURBED}
        return sorted({c for _, c in self.counts if c not in skip})

    def mean(self, cell_type: str, condition: str) -> np.ndarray:
        key = (cell_type, condition)
        return self.sums[key] / self.counts[key]

    def mean_variance(self, cell_type: str, condition: str) -> np.ndarray:
        """Per gene, the sampling variance of :meth:`mean` (infinite for a single cell).

        The cells' variance (``ddof=1``) divided by their number.
        """
        key = (cell_type, condition)
        n = self.counts[key]
        if n < 2:
            return np.full(len(self.var_names), np.inf)
        var = np.maximum(self.sumsq[key] / n - self.mean(*key) ** 2, 0.0) * n / (n - 1)
        return var / n

    def shift(
        self, condition: str, cell_type: str | None = None, shrink: bool = False
    ) -> np.ndarray | None:
        """Mean change of ``condition`` from control (see the module docstring); ``None`` if unseen.

        ``shrink``: shrunk toward no change by :func:`shrink_change` with the change's sampling
        variance (unshrunk for a baseline fitted without sums of squares). A context of fewer
        than two cells has no noise estimate: the shrunk change pools the others (none: no
        change).
        """
        types = [
            ct
            for ct in self.cell_types
            if (ct, condition) in self.counts and (ct, self.control_group) in self.counts
        ]
        if not types:
            return None
        if cell_type in types:
            types = [cell_type]
        shrink = shrink and self.sumsq is not None
        if shrink:
            types = [t for t in types if min(self._n(t, condition), self._n(t, None)) >= 2]
            if not types:
                return np.zeros(len(self.var_names))
        weights = np.array([self._n(ct, condition) for ct in types], dtype=np.float64)
        weights /= weights.sum()
        change = sum(
            w * (self.mean(ct, condition) - self.mean(ct, self.control_group))
            for w, ct in zip(weights, types, strict=True)
        )
        if not shrink:
            return change
        variance = sum(
            w**2 * (self.mean_variance(ct, condition) + self.mean_variance(ct, self.control_group))
            for w, ct in zip(weights, types, strict=True)
        )
        return shrink_change(change, variance)

    def _n(self, cell_type: str, condition: str | None) -> int:
        """Cells of ``condition`` (None: the control group) in ``cell_type``."""
        return self.counts[(cell_type, self.control_group if condition is None else condition)]

    def singles(self) -> list[str]:
        """Single-token conditions seen in training with a change from control."""
        return [
            c
            for c in self.conditions
            if len(parse_perturbation(c, self.control_group, self.delimiter)) == 1
            and self.shift(c) is not None
        ]

    def control_mean(self) -> np.ndarray:
        """Mean of all control cells, pooled over cell types."""
        keys = [(ct, self.control_group) for ct in self.cell_types]
        keys = [k for k in keys if k in self.counts]
        return sum(self.sums[k] for k in keys) / sum(self.counts[k] for k in keys)


def shrink_change(change: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """A change of mean expression shrunk toward no change by the positive-part James-Stein
    factor ``max(0, 1 - sum(variance) / |change|^2)``.

    Parameters
    ----------
    change
        Per gene, a measured change of mean expression (perturbed minus control).
    variance
        Per gene, the sampling variance of ``change`` (the variance of the perturbed cells'
        mean plus that of the control cells' mean); any infinite value shrinks all of it.

    Returns
    -------
    ``change`` times the factor (a new array).

    Notes
    -----
    A change no larger than its sampling noise (a knockout with little effect, few cells)
    becomes no change; a change well above it is kept nearly whole. Over thousands of genes
    this factor lowers the expected squared error of the change whatever the true change is,
    which is what the E-distance of a shifted prediction grows with. Hand-written (a two-line
    formula; no library ships it).

    Examples
    --------
    >>> shrink_change(np.array([6.0, 8.0]), np.array([10.0, 15.0])).tolist()  # 1 - 25 / 100
    [4.5, 6.0]
    >>> shrink_change(np.array([1.0, 0.0]), np.array([1.0, 1.0])).tolist()
    [0.0, 0.0]
    """
    power = float(np.dot(change, change))
    if not np.isfinite(variance).all() or power <= 0:
        return np.zeros_like(change)
    return change * max(0.0, 1.0 - float(np.sum(variance)) / power)


def _group_sums(X, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of ``X`` per group code, as a dense float64 (groups x genes) array."""
    indicator = sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes))
    )
    sums = indicator @ X
    sums = sums.toarray() if sparse.issparse(sums) else np.asarray(sums)
    return sums.astype(np.float64, copy=False)


def _group_sums_of_squares(X, codes: np.ndarray, n_groups: int, chunk: int = 10_000) -> np.ndarray:
    """Row sums of ``X`` squared per group code (float64), a chunk of rows at a time (the
    squares of the whole matrix are never held)."""
    out = np.zeros((n_groups, X.shape[1]))
    for start in range(0, X.shape[0], chunk):
        block = X[start : start + chunk]
        if sparse.issparse(block):
            block = block.astype(np.float64)
            block = block.multiply(block)
        else:
            block = np.square(np.asarray(block, dtype=np.float64))
        out += _group_sums(block, codes[start : start + chunk], n_groups)
    return out


def _training_means(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    cell_type_key: str | None,
    layer: str | None,
    delimiter: str,
) -> _TrainingMeans:
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    check_unique_var_names(adata)
    raw = _obs_labels(adata, perturbation_key, "perturbation_key")
    unique, inverse = np.unique(raw, return_inverse=True)
    canon = np.array([normalize_perturbation(u, control_group, delimiter) for u in unique])
    conditions = canon[inverse]
    if not (conditions == control_group).any():
        raise ValueError(
            f"No control cells: no value of adata.obs[{perturbation_key!r}] is the control "
            f"group {control_group!r}.{_did_you_mean(control_group, unique)} Pass "
            "control_group= naming the label of control cells."
        )
    if cell_type_key is None:
        cell_types = np.full(adata.n_obs, DEFAULT_CELL_TYPE, dtype=object)
    else:
        cell_types = _obs_labels(adata, cell_type_key, "cell_type_key")

    X = get_matrix(adata, layer)
    if hasattr(X, "to_memory"):
        X = X.to_memory()
    check_log_normalised(X, where=_where(layer))

    frame = pd.DataFrame({"ct": cell_types, "cond": conditions})
    grouped = frame.groupby(["ct", "cond"], sort=True, observed=True)
    codes = grouped.ngroup().to_numpy()
    group_sums = _group_sums(X, codes, grouped.ngroups)
    group_sumsq = _group_sums_of_squares(X, codes, grouped.ngroups)
    group_counts = np.bincount(codes, minlength=grouped.ngroups)
    sums: dict[tuple[str, str], np.ndarray] = {}
    sumsq: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    first = frame.assign(code=codes).drop_duplicates("code").sort_values("code")
    for i, (ct, cond) in enumerate(zip(first["ct"], first["cond"], strict=True)):
        keys = [(str(ct), str(cond))]
        if cond != control_group:  # also pool all perturbed cells of the cell type
            keys.append((str(ct), _ANY_PERTURBED))
        for key in keys:
            sums[key] = sums.get(key, 0.0) + group_sums[i]
            sumsq[key] = sumsq.get(key, 0.0) + group_sumsq[i]
            counts[key] = counts.get(key, 0) + int(group_counts[i])
    keys = list(counts)

    types = sorted({str(ct) for ct, _ in keys})
    no_control = [ct for ct in types if (ct, control_group) not in keys]
    if no_control:
        warnings.warn(
            f"Cell types {no_control} have no control cells; their perturbed cells cannot give a "
            "change from control and are ignored.",
            UserWarning,
            stacklevel=3,
        )
    return _TrainingMeans(
        var_names=pd.Index(adata.var_names.astype(str)),
        control_group=control_group,
        delimiter=delimiter,
        cell_type_key=cell_type_key,
        cell_types=types,
        sums=sums,
        counts=counts,
        sumsq=sumsq,
    )


class _Baseline:
    """Shared ``fit``/``predict`` of the baselines; subclasses define :meth:`_delta`."""

    name = "baseline"

    def __init__(self) -> None:
        self.training_: _TrainingMeans | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.training_ is not None else "not fitted"
        return f"{type(self).__name__}({state})"

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        adata: ad.AnnData,
        perturbation_key: str,
        control_group: str = "ctrl",
        cell_type_key: str | None = None,
        layer: str | None = None,
        combination_delimiter: str = "+",
    ) -> Self:
        """Learn the mean expression of every condition (and cell type) in ``adata``.

        Parameters
        ----------
        adata
            Training cells, log-normalised expression (``normalize_total`` then ``log1p``).
            Not modified.
        perturbation_key
            Column of ``adata.obs`` naming each cell's perturbation (``"A"``, ``"A+B"``, or the
            control label). Values are normalised (``"B+A"`` is ``"A+B"``).
        control_group
            The label of control cells in that column.
        cell_type_key
            Optional column of ``adata.obs`` with cell types (changes are then computed within
            cell types).
        layer
            Layer of ``adata`` to read (``None``: ``adata.X``).
        combination_delimiter
            The string joining the parts of a combination.

        Returns
        -------
        The fitted baseline (``self``).
        """
        self.training_ = _training_means(
            adata, perturbation_key, control_group, cell_type_key, layer, combination_delimiter
        )
        try:
            self._after_fit()
        except Exception:
            self.training_ = None
            raise
        return self

    def _after_fit(self) -> None:
        """Hook for subclasses that precompute something from :attr:`training_`."""

    @property
    def var_names_(self) -> pd.Index:
        """Genes the baseline was fitted on (and predicts)."""
        return self._fitted().var_names

    @property
    def conditions_(self) -> list[str]:
        """Perturbed conditions seen in training (normalised spelling)."""
        return self._fitted().conditions

    @property
    def cell_types_(self) -> list[str]:
        """Cell types seen in training (``["all"]`` without ``cell_type_key``)."""
        return list(self._fitted().cell_types)

    def _fitted(self) -> _TrainingMeans:
        if self.training_ is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call `.fit(adata, ...)` first."
            )
        return self.training_

    # -------------------------------------------------------------- predict
    def _check_perturbation(self, perturbation: str) -> None:
        """Raise (or warn) for a normalised perturbation the baseline cannot predict."""

    def _delta(self, perturbation: str, cell_type: str) -> np.ndarray | None:
        """Change added to control cells of ``cell_type``; ``None`` for no change."""
        raise NotImplementedError

    def _cell_type_labels(self, adata_ctrl: ad.AnnData, cell_type: str | None) -> np.ndarray:
        train = self._fitted()
        if cell_type is not None:
            if train.cell_type_key is not None and cell_type not in train.cell_types:
                raise ValueError(
                    f"cell_type={cell_type!r} was not in training (cell types: "
                    f"{train.cell_types}).{_did_you_mean(cell_type, train.cell_types)}"
                )
            return np.full(adata_ctrl.n_obs, str(cell_type), dtype=object)
        key = train.cell_type_key
        if key is not None and key in adata_ctrl.obs:
            labels = _obs_labels(adata_ctrl, key, "cell_type_key").astype(object)
            unknown = sorted(set(labels) - set(train.cell_types))
            if unknown:
                warnings.warn(
                    f"Cell types {unknown} of adata_ctrl.obs[{key!r}] were not in training; "
                    "their cells get changes pooled over the training cell types.",
                    UserWarning,
                    stacklevel=3,
                )
            return labels
        return np.full(adata_ctrl.n_obs, DEFAULT_CELL_TYPE, dtype=object)

    def predict(
        self,
        adata_ctrl: ad.AnnData,
        perturbation: str | Sequence[str],
        cell_type: str | None = None,
        layer: str | None = None,
    ) -> ad.AnnData:
        """Predict perturbed cells from control cells.

        Parameters
        ----------
        adata_ctrl
            Control cells, log-normalised, with (at least) the training genes. Not modified.
        perturbation
            One perturbation (``"A"``, ``"A+B"``) or a list of them.
        cell_type
            Cell type of all of ``adata_ctrl``'s cells. ``None``: taken from
            ``adata_ctrl.obs[cell_type_key]`` when the baseline was fitted with a
            ``cell_type_key`` that ``adata_ctrl`` has, else changes pooled over cell types.
            Without ``cell_type_key`` in ``fit`` it is only a label.
        layer
            Layer of ``adata_ctrl`` to read (``None``: ``adata_ctrl.X``).

        Returns
        -------
        One predicted cell per control cell and perturbation (perturbations in the given order),
        on the training genes; ``obs["control_cell"]`` is the obs name of the control cell it
        came from and ``obs["perturbation"]`` the normalised perturbation.
        """
        train = self._fitted()
        perturbations = [perturbation] if isinstance(perturbation, str) else list(perturbation)
        if not perturbations:
            raise ValueError("perturbation is empty; pass a perturbation or a list of them.")
        perturbations = [
            normalize_perturbation(p, train.control_group, train.delimiter) for p in perturbations
        ]
        for p in perturbations:
            self._check_perturbation(p)
        X0 = align_genes(adata_ctrl, train.var_names, layer, what="adata_ctrl")
        check_log_normalised(X0, where=_where(layer, "adata_ctrl"))
        if X0.shape[0] == 0:
            raise ValueError("adata_ctrl has no cells.")
        labels = self._cell_type_labels(adata_ctrl, cell_type)

        blocks = []
        for p in perturbations:
            block = X0.copy()
            for ct in pd.unique(labels):
                delta = self._delta(p, str(ct))
                if delta is not None:
                    rows = labels == ct
                    block[rows] = np.maximum(X0[rows] + delta, 0.0)
            blocks.append(block)
        n = X0.shape[0]
        return prediction_anndata(
            np.concatenate(blocks),
            var_names=train.var_names,
            perturbation=np.repeat(np.asarray(perturbations, dtype=object), n),
            cell_type=np.tile(labels, len(perturbations)),
            control_cell=np.tile(
                np.asarray(adata_ctrl.obs_names, dtype=object), len(perturbations)
            ),
            uns={"method": self.name},
        )


class NoChange(_Baseline):
    """Predict the control cells themselves, whatever the perturbation.

    The lower bar every method must clear: its score measures how different the perturbed
    cells are from control at all.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"perturbation": ["ctrl", "ctrl", "A"]}, index=["c1", "c2", "a1"])
    >>> adata = ad.AnnData(np.array([[0.5, 1.0], [1.5, 1.0], [2.0, 0.0]]), obs=obs)
    >>> pred = NoChange().fit(adata, "perturbation").predict(adata[:2], "A")
    >>> pred.X.tolist()
    [[0.5, 1.0], [1.5, 1.0]]
    """

    name = "NoChange"

    def _delta(self, perturbation: str, cell_type: str) -> np.ndarray | None:
        return None


class MeanShift(_Baseline):
    """Control cells plus the mean change of the perturbation in the training data.

    The change of a perturbation is ``mean(perturbed) - mean(control)`` of that exact
    (normalised) condition, within the cell type when it has both, else pooled over the cell
    types where it was seen (weighted by cells). A perturbation never seen in training gets the
    mean change of all perturbed training cells (all conditions pooled, within cell type where
    possible), with a warning: the usual "average perturbation" baseline. Predictions are
    clipped at 0.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"perturbation": ["ctrl", "ctrl", "A"]}, index=["c1", "c2", "a1"])
    >>> adata = ad.AnnData(np.array([[0.5, 1.0], [1.5, 1.0], [2.0, 0.0]]), obs=obs)
    >>> pred = MeanShift().fit(adata, "perturbation").predict(adata[:2], "A")
    >>> pred.X.tolist()  # change of A: (2 - 1, 0 - 1)
    [[1.5, 0.0], [2.5, 0.0]]
    """

    name = "MeanShift"

    def _check_perturbation(self, perturbation: str) -> None:
        train = self._fitted()
        if perturbation == train.control_group or train.shift(perturbation) is not None:
            return
        warnings.warn(
            f"{perturbation!r} was not in the training data; predicting the mean change of all "
            f"perturbed training cells.{_did_you_mean(perturbation, train.conditions)}",
            UserWarning,
            stacklevel=3,
        )

    def _delta(self, perturbation: str, cell_type: str, shrink: bool = False) -> np.ndarray | None:
        train = self._fitted()
        if perturbation == train.control_group:
            return None
        shift = train.shift(perturbation, cell_type, shrink)
        if shift is None:
            shift = train.shift(_ANY_PERTURBED, cell_type, shrink)
        if shift is None:
            raise ValueError(
                "The training data had no perturbed cells in a cell type with control cells; "
                "MeanShift cannot predict."
            )
        return shift


class Additive(_Baseline):
    """Control cells plus the sum of the changes of the single perturbations.

    For ``"A+B"`` the prediction is ``control + shift(A) + shift(B)`` clipped at 0, where
    ``shift(A)`` is the change of the single perturbation ``A`` in training (within cell type
    where possible, see :class:`MeanShift`). A single perturbation gets its own change. Only
    single perturbations are used, even if the combination itself was in the training data; a
    token without a single perturbation in training raises a ``ValueError``. The hard baseline
    for combinations.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"perturbation": ["ctrl", "A", "B"]}, index=["c1", "a1", "b1"])
    >>> adata = ad.AnnData(np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 0.5]]), obs=obs)
    >>> pred = Additive().fit(adata, "perturbation").predict(adata[:1], "B+A")
    >>> pred.X.tolist(), pred.obs["perturbation"].tolist()
    ([[2.0, 0.5]], ['A+B'])
    """

    name = "Additive"

    def _check_perturbation(self, perturbation: str) -> None:
        train = self._fitted()
        singles = train.singles()
        for token in parse_perturbation(perturbation, train.control_group, train.delimiter):
            if token not in singles:
                raise ValueError(
                    f"Additive needs the single perturbation {token!r} (of {perturbation!r}) in "
                    f"the training data, but it was not there.{_did_you_mean(token, singles)}"
                )

    def _delta(self, perturbation: str, cell_type: str, shrink: bool = False) -> np.ndarray | None:
        train = self._fitted()
        tokens = parse_perturbation(perturbation, train.control_group, train.delimiter)
        if not tokens:
            return None
        return sum(train.shift(t, cell_type, shrink) for t in tokens)


def _ridge_solve(Y: np.ndarray, A: np.ndarray, B: np.ndarray, ridge: float) -> np.ndarray:
    """``K = (A^T A + r I)^-1 A^T Y B (B^T B + r I)^-1``: the two-sided ridge fit of ``Y ~ A K B^T``.

    The closed form of the paper's ``solve_y_axb`` (Ahlmann-Eltze et al., with ``B`` there the
    transpose of ``B`` here).
    """
    left = np.linalg.pinv(A.T @ A + ridge * np.eye(A.shape[1]), hermitian=True)
    right = np.linalg.pinv(B.T @ B + ridge * np.eye(B.shape[1]), hermitian=True)
    return left @ A.T @ Y @ B @ right


def _pca_scores(M: np.ndarray, k: int) -> np.ndarray:
    """Scores of the rows of ``M`` on its top ``k`` principal components (columns centred)."""
    M = M - M.mean(axis=0, keepdims=True)
    U, S, _ = np.linalg.svd(M, full_matrices=False)
    k = min(k, S.size)
    return U[:, :k] * S[:k]


class LinearBaseline(_Baseline):
    """Low-rank linear model of Ahlmann-Eltze, Huber and Anders (Nature Methods 2025).

    What is implemented (all on log-normalised expression, changes pooled over cell types):

    1. ``Y`` (genes x conditions): the change of every single perturbation seen in training
       (``mean(perturbed) - mean(control)``, see :class:`MeanShift`), plus a control column of
       zeros, as in the paper. ``b`` = the row means of ``Y``.
    2. Gene embedding ``G`` (genes x K): scores of the genes on the top ``K`` principal
       components of the pseudobulk matrix ``control mean + Y`` (genes as observations, columns
       centred), as the paper's ``prcomp_irlba(train pseudobulk)$x``.
    3. Perturbation embedding ``P`` (conditions x K): scores of the conditions on the top ``K``
       principal components of the same pseudobulk matrix with conditions as observations
       (genes centred).
    4. ``W = (G^T G + l I)^-1 G^T (Y - b) P (P^T P + l I)^-1``, the paper's two-sided ridge
       solution, ``l = ridge = 0.1``, ``K = n_components = 10`` (the paper's defaults).
    5. The change of a seen token ``t`` is ``G W p_t + b``; a combination gets the sum of its
       tokens' changes; the prediction is control cells plus that change, clipped at 0.

    A token never seen as a single perturbation but measured as a gene uses the paper's
    gene-embedding variant: ``G W_g g_t + b_g`` where ``g_t`` is the gene's row of ``G`` and
    ``W_g``, ``b_g`` are fitted as above on the seen single perturbations whose target is a
    measured gene, with ``P`` = their rows of ``G`` (and zero for control). Any other unseen
    token raises a ``ValueError``.

    Differences from the paper: the paper's self-trained model always takes the perturbation
    embedding from the rows of ``G`` of the perturbed genes, so it needs the targets to be
    measured genes (here only for unseen tokens; seen tokens use the condition PCA, which also
    works when the targets are not measured, as in Norman et al.'s CRISPRa data). The paper
    predicts pseudobulk means; here the change is added to each control cell and clipped at 0.
    The paper adds ``b`` once to a combination (``G W (p_A + p_B) + b``, its double-perturbation
    script); here the change of ``A+B`` is ``change(A) + change(B)``, so with exact
    reconstruction the model reduces to :class:`Additive`. Cell types are pooled: the same
    change is added to control cells of every cell type. Combinations in the training data are
    not used.

    Parameters
    ----------
    n_components
        ``K``, the number of principal components of both embeddings (capped by the data).
    ridge
        The ridge penalty ``l`` on both sides.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> labels = ["ctrl", "A", "B", "C"] * 5
    >>> obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(20)])
    >>> adata = ad.AnnData(rng.uniform(1, 2, size=(20, 6)), obs=obs)
    >>> model = LinearBaseline(n_components=2).fit(adata, "perturbation")
    >>> model.predict(adata[:5], ["A", "A+B"]).shape
    (10, 6)
    """

    name = "LinearBaseline"

    def __init__(self, n_components: int = 10, ridge: float = 0.1) -> None:
        super().__init__()
        if int(n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}.")
        if ridge < 0:
            raise ValueError(f"ridge must be non-negative, got {ridge}.")
        self.n_components = int(n_components)
        self.ridge = float(ridge)
        self.token_effects_: dict[str, np.ndarray] = {}
        self._gene_model: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.training_ is not None else "not fitted"
        return f"LinearBaseline(n_components={self.n_components}, ridge={self.ridge}, {state})"

    def _after_fit(self) -> None:
        train = self._fitted()
        singles = train.singles()
        shifts = {t: train.shift(t) for t in singles}
        if not singles:
            raise ValueError(
                "LinearBaseline needs single perturbations (with control cells of the same cell "
                "type) in the training data; there are none."
            )
        n_genes = len(train.var_names)
        Y = np.column_stack([shifts[t] for t in singles] + [np.zeros(n_genes)])
        pseudobulk = Y + train.control_mean()[:, None]
        G = _pca_scores(pseudobulk, self.n_components)
        P = _pca_scores(pseudobulk.T, self.n_components)
        b = Y.mean(axis=1)
        W = _ridge_solve(Y - b[:, None], G, P, self.ridge)
        effects = G @ W @ P[:-1].T + b[:, None]
        self.token_effects_ = {t: effects[:, i] for i, t in enumerate(singles)}

        gene_tokens = [t for t in singles if t in train.var_names]
        self._gene_model = None
        if gene_tokens:
            Pg = np.vstack([G[train.var_names.get_indexer(gene_tokens)], np.zeros(G.shape[1])])
            Yg = np.column_stack([shifts[t] for t in gene_tokens] + [np.zeros(n_genes)])
            bg = Yg.mean(axis=1)
            self._gene_model = (G, _ridge_solve(Yg - bg[:, None], G, Pg, self.ridge), bg)

    def _token_effect(self, token: str) -> np.ndarray:
        if token in self.token_effects_:
            return self.token_effects_[token]
        G, Wg, bg = self._gene_model  # checked in _check_perturbation
        return G @ Wg @ G[self._fitted().var_names.get_loc(token)] + bg

    def _check_perturbation(self, perturbation: str) -> None:
        train = self._fitted()
        for token in parse_perturbation(perturbation, train.control_group, train.delimiter):
            if token in self.token_effects_:
                continue
            if token not in train.var_names:
                raise ValueError(
                    f"LinearBaseline cannot predict the token {token!r} (of {perturbation!r}): it "
                    "was not a single perturbation in training and is not a measured gene."
                    + _did_you_mean(token, list(self.token_effects_))
                )
            if self._gene_model is None:
                raise ValueError(
                    f"The token {token!r} (of {perturbation!r}) was not a single perturbation in "
                    "training; it is a measured gene, but no training perturbation targets a "
                    "measured gene, so the gene-embedding map cannot be fitted."
                )

    def _delta(self, perturbation: str, cell_type: str) -> np.ndarray | None:
        train = self._fitted()
        tokens = parse_perturbation(perturbation, train.control_group, train.delimiter)
        if not tokens:
            return None
        return sum(self._token_effect(t) for t in tokens)
