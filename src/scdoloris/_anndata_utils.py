"""Reading expression from AnnData and writing predictions back as AnnData.

Shared by :class:`~scdoloris.DolorisModel` and the baselines so that every method reads the
same matrix and returns the same AnnData layout.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

RAW_COUNT_MAX = 30.0


class RawCountsError(ValueError):
    """Expression that looks like raw counts where log-normalised values are expected.

    ``where`` names the matrix (``"adata.X"``, ``"layer 'counts'"``, ...) and ``max_value`` its
    largest value, so that a caller (the command line) can word its own advice.
    """

    def __init__(self, message: str, where: str, max_value: float):
        super().__init__(message)
        self.where = where
        self.max_value = max_value


def dense(X, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A dense array of a matrix, sparse or dense.

    Parameters
    ----------
    X
        A SciPy sparse matrix or anything :func:`numpy.asarray` takes.
    dtype
        The array's dtype; ``None`` keeps the matrix's own.

    Returns
    -------
    ``X`` as a :class:`numpy.ndarray` (not copied when it already is one of ``dtype``).
    """
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=dtype)


def get_matrix(adata: ad.AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]`` (dense or sparse, not copied)."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty. Pass `layer=` naming a log-normalised layer.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} is not in adata.layers (it has {list(adata.layers.keys())}). "
            "Pass one of these, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def _values(X) -> np.ndarray:
    if sparse.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def check_log_normalised(X, where: str = "adata.X") -> None:
    """Refuse matrices that are not finite, negative, or look like raw counts.

    Raw counts are recognised as all-integral values with a maximum above 30: log-normalised
    expression (``normalize_total`` then ``log1p``) is rarely integral and stays far below 30.

    Raises
    ------
    ValueError
        Naming the problem and the fix.
    """
    if hasattr(X, "to_memory"):  # backed sparse dataset
        X = X.to_memory()
    values = _values(X)
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
        values.dtype, np.complexfloating
    ):
        raise TypeError(f"{where} has dtype {values.dtype}; expected real numbers.")
    finite = np.isfinite(values)
    if not finite.all():
        n_bad = int((~finite).sum())
        raise ValueError(
            f"{where} has {n_bad} non-finite values (NaN or inf). Remove or impute them, e.g. "
            "`adata = adata[np.isfinite(adata.X.sum(1))]`, before setting up the model."
        )
    vmin = float(values.min())
    if vmin < 0:
        raise ValueError(
            f"{where} has negative values (minimum {vmin:.3g}). Doloris expects log-normalised "
            "expression (sc.pp.normalize_total then sc.pp.log1p), not scaled or centred data "
            "(do not run sc.pp.scale). Pass `layer=` naming a log-normalised layer."
        )
    vmax = float(values.max())
    if vmax > RAW_COUNT_MAX and np.all(np.mod(values, 1) == 0):
        raise RawCountsError(
            f"{where} looks like raw counts (integers up to {vmax:.0f}). Doloris expects "
            "log-normalised expression: run `sc.pp.normalize_total(adata)` and "
            "`sc.pp.log1p(adata)` first (keep the counts in a layer if you need them), or pass "
            "`layer=` naming a log-normalised layer.",
            where=where,
            max_value=vmax,
        )


def check_unique_var_names(adata: ad.AnnData, what: str = "adata") -> None:
    """A ValueError naming duplicated ``var_names`` (genes are matched by name) and the fix.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> check_unique_var_names(ad.AnnData(np.zeros((1, 2), dtype=np.float32)))
    """
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{what}.var_names has duplicates (e.g. {dup}). Run `{what}.var_names_make_unique()`."
        )


def _check_genes(adata: ad.AnnData, genes: Sequence[str], what: str) -> pd.Index:
    """``genes`` as an Index; a ValueError naming duplicated var_names or missing genes (and,
    when the two sides look like different kinds of identifiers, which: :func:`gene_id_hint`)."""
    genes = pd.Index(genes)
    check_unique_var_names(adata, what)
    missing = genes.difference(adata.var_names)
    if len(missing) > 0:
        raise ValueError(
            f"{what} lacks {len(missing)} of the model's {len(genes)} genes, e.g. "
            f"{missing[:10].tolist()}. "
            + (
                gene_id_hint(genes, adata, what)
                or "Predict from cells measured on the training genes (subset or reindex the "
                "input to the model's var_names)."
            )
        )
    return genes


# Ensembl stable gene IDs: ENSG (human), ENSMUSG (mouse), ENS<species>G for other species
_ENSEMBL = re.compile(r"^ENS([A-Z]{0,6})G\d{6,}(\.\d+)?$")
_ENSEMBL_SPECIES = {"": "human", "MUS": "mouse"}


def identifier_kind(names: Sequence[str]) -> str:
    """What most of ``names`` look like: ``"human Ensembl IDs"``, ``"mouse Ensembl IDs"``,
    ``"Ensembl IDs"`` (another species), ``"gene symbols"`` or ``"unknown"`` (mixed, numbers).

    Examples
    --------
    >>> identifier_kind(["ENSG00000102145", "ENSG00000105610.6"])
    'human Ensembl IDs'
    >>> identifier_kind(["ENSMUSG00000031162"])
    'mouse Ensembl IDs'
    >>> identifier_kind(["GATA1", "KLF1", "HBG2"])
    'gene symbols'
    """
    names = [str(n) for n in names[:500]]
    if not names:
        return "unknown"
    ensembl = [_ENSEMBL.match(n) for n in names]
    if sum(m is not None for m in ensembl) >= 0.8 * len(names):
        species = {m.group(1) for m in ensembl if m is not None}
        if len(species) == 1:
            kind = _ENSEMBL_SPECIES.get(species.pop())
            return f"{kind} Ensembl IDs" if kind else "Ensembl IDs"
        return "Ensembl IDs"
    symbol = re.compile(r"^[A-Za-z][A-Za-z0-9\-\.]*$")
    if sum(bool(symbol.match(n)) for n in names) >= 0.8 * len(names):
        return "gene symbols"
    return "unknown"


def gene_id_hint(genes: Sequence[str], adata: ad.AnnData, what: str = "adata") -> str:
    """A sentence for a gene mismatch: whether the model's genes and ``adata.var_names`` look
    like different kinds of identifiers (Ensembl IDs against gene symbols, human against mouse)
    and, when a column of ``adata.var`` holds the model's genes, how to use it; ``""`` if
    neither.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> var = pd.DataFrame({"symbol": ["GATA1", "KLF1"]}, index=["ENSG00000102145",
    ...                                                         "ENSG00000105610"])
    >>> adata = ad.AnnData(np.zeros((1, 2), dtype=np.float32), var=var)
    >>> gene_id_hint(["GATA1", "KLF1"], adata)  # doctest: +NORMALIZE_WHITESPACE
    "The model's genes look like gene symbols (e.g. 'GATA1') and adata.var_names like human
    Ensembl IDs (e.g. 'ENSG00000102145'). adata.var['symbol'] holds the model's genes: set
    adata.var_names = adata.var['symbol'] (then adata.var_names_make_unique())."
    """
    genes = pd.Index(genes).astype(str)
    names = pd.Index(adata.var_names).astype(str)
    ours, theirs = identifier_kind(list(genes)), identifier_kind(list(names))
    sentences = []
    if "unknown" not in (ours, theirs) and ours != theirs:
        sentences.append(
            f"The model's genes look like {ours} (e.g. {genes[0]!r}) and {what}.var_names like "
            f"{theirs} (e.g. {names[0]!r})."
        )
    best, covered = None, 0.0
    for column in adata.var.columns:
        values = adata.var[column]
        if not (values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype)):
            continue
        share = float(genes.isin(values.astype(str)).mean()) if len(genes) else 0.0
        if share > covered:
            best, covered = column, share
    if best is not None and covered >= 0.5 and covered > float(genes.isin(names).mean()):
        sentences.append(
            f"{what}.var[{best!r}] holds {'the' if covered == 1 else f'{covered:.0%} of the'} "
            f"model's genes: set {what}.var_names = {what}.var[{best!r}] (then "
            f"{what}.var_names_make_unique())."
        )
    elif sentences:
        sentences.append(
            f"Map {what}'s genes to the model's kind of identifier (e.g. with the gene table of "
            "your reference annotation) before predicting."
        )
    return " ".join(sentences)


def align_genes(
    adata: ad.AnnData, genes: Sequence[str], layer: str | None = None, what: str = "adata"
) -> np.ndarray:
    """Return the expression of ``genes`` (by name, in that order) as a dense float32 array.

    Extra genes of ``adata`` are ignored; missing genes raise a ``ValueError`` naming them.
    """
    genes = _check_genes(adata, genes, what)
    X = get_matrix(adata, layer)
    idx = adata.var_names.get_indexer(genes)
    if hasattr(X, "to_memory"):
        X = X.to_memory()
    X = X[:, idx]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    return X.astype(np.float32, copy=False)


class AlignedRows:
    """Rows of an expression matrix on a fixed gene order, read as dense float32 on demand.

    The matrix stays as it is (dense, sparse or backed on disk): ``rows[sl]`` densifies only
    the cells of ``sl`` (a slice), so prediction reads large and sparse inputs in batches with
    memory bounded by the batch.
    """

    def __init__(self, X, gene_index: np.ndarray):
        self.X = X
        self.idx = np.asarray(gene_index)
        self.identity = bool(
            len(self.idx) == X.shape[1] and np.array_equal(self.idx, np.arange(X.shape[1]))
        )
        self.shape = (X.shape[0], len(self.idx))

    def __getitem__(self, sl: slice) -> np.ndarray:
        rows = self.X[sl]
        if not self.identity:
            rows = rows[:, self.idx]
        if sparse.issparse(rows):
            rows = rows.toarray()
        elif hasattr(rows, "toarray"):  # sparse matrices of backed datasets, old scipy
            rows = rows.toarray()
        return np.asarray(rows, dtype=np.float32)

    def detection_counts(self, codes: np.ndarray, n_groups: int, batch_size: int = 4096):
        """Per group of ``codes``: the number of cells in which each gene is non-zero."""
        counts = np.zeros((n_groups, self.shape[1]), dtype=np.int64)
        for start in range(0, self.shape[0], batch_size):
            sl = slice(start, min(start + batch_size, self.shape[0]))
            detected, batch_codes = self[sl] != 0, codes[sl]
            for c in np.unique(batch_codes):
                counts[c] += detected[batch_codes == c].sum(0)
        return counts


def aligned_rows(
    adata: ad.AnnData, genes: Sequence[str], layer: str | None = None, what: str = "adata"
) -> AlignedRows:
    """Like :func:`align_genes`, without reading the matrix: an :class:`AlignedRows`."""
    genes = _check_genes(adata, genes, what)
    return AlignedRows(get_matrix(adata, layer), adata.var_names.get_indexer(genes))


def close_matches(name: str, choices: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` close spellings of ``name`` among ``choices`` (case-insensitive)."""
    lower = {str(c).lower(): str(c) for c in choices}
    hits = difflib.get_close_matches(str(name).lower(), list(lower), n=n, cutoff=0.6)
    return [lower[h] for h in hits]


def prediction_anndata(
    X: np.ndarray,
    var_names: Sequence[str],
    perturbation: Sequence[str],
    cell_type: Sequence[str],
    control_cell: Sequence[str],
    uns: dict | None = None,
    dose: Sequence[float] | None = None,
) -> ad.AnnData:
    """Build the AnnData that every ``predict`` returns.

    ``obs`` has ``perturbation``, ``dose`` (only when given; NaN for no dose), ``cell_type``,
    ``control_cell`` (the obs name of the control cell the prediction started from) and
    ``predicted`` (True); ``var_names`` are the model's.
    """
    n = X.shape[0]
    columns: dict = {"perturbation": pd.Categorical(np.asarray(perturbation, dtype=object))}
    if dose is not None:
        columns["dose"] = np.asarray(dose, dtype=np.float64)
    obs = pd.DataFrame(
        {
            **columns,
            "cell_type": pd.Categorical(np.asarray(cell_type, dtype=object)),
            "control_cell": np.asarray(control_cell, dtype=object).astype(str),
            "predicted": np.ones(n, dtype=bool),
        }
    )
    obs.index = [f"pred-{i}" for i in range(n)]
    out = ad.AnnData(
        X=np.asarray(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(var_names))
    )
    if uns:
        out.uns["scdoloris"] = dict(uns)
    return out


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``". Did you mean [...]?"`` with close spellings of ``name``, else ``"."``.

    Examples
    --------
    >>> did_you_mean("KLF2", ["KLF1", "GATA1"])
    ". Did you mean ['KLF1']?"
    """
    hits = close_matches(name, choices)
    return f". Did you mean {hits}?" if hits else "."
