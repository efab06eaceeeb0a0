"""The README's example data: a 3,375-cell subset of Norman et al. 2019, from PerturBench.

PerturBench (Wu et al. 2024, https://github.com/altoslabs/perturbench, BSD-3-Clause) ships a
small development file, ``src/perturbench/data/resources/devel.h5ad`` (1.1 MB), whose
``norman19`` part holds 3,375 K562 cells of Norman et al. 2019 (Science; CRISPR activation of
single genes and gene pairs; the scPerturb release of the data) on 500 highly variable genes:
100 control cells, 21 single genes and 12 pairs of about 100 cells each. Its ``X`` is
log-normalised (``normalize_total`` to 10,000, then ``log1p``); :func:`norman_2019_subset`
downloads it once, keeps the Norman cells and recovers their integer counts exactly, so that
the result is the raw-count file the README, the tests and the benchmarks use
(``norman2019_k562_subset.h5ad``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["norman_2019_subset"]

PERTURBENCH_COMMIT = "4dd6a03c54ef348f6be6e46e21ea7f80eb2daaa2"
DEVEL_PATH = "src/perturbench/data/resources/devel.h5ad"
DEVEL_URL = (
    f"https://raw.githubusercontent.com/altoslabs/perturbench/{PERTURBENCH_COMMIT}/{DEVEL_PATH}"
)
DEVEL_SHA256 = "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b"
DEVEL_FILE = "perturbench_devel.h5ad"
SOURCE = (
    "altoslabs/perturbench src/perturbench/data/resources/devel.h5ad (norman19 part); Norman et "
    "al. 2019 Science; counts recovered from log1p(normalize_total 1e4)"
)
#: the smallest count of a cell is taken to be one of these (1 in almost every cell)
_SMALLEST_COUNTS = range(1, 11)


def norman_2019_subset(path: str | Path | None = None, cache_dir: str | Path | None = None):
    """The README's example data: 3,375 K562 cells x 500 genes of Norman et al. 2019, raw counts.

    This function **downloads data** on its first call: PerturBench's development file
    (``devel.h5ad``, 1.1 MB, at a fixed commit, checked against its SHA-256), kept in
    ``cache_dir``. It keeps the file's Norman cells and recovers their integer counts from the
    log-normalised values (per cell, the factor that makes the smallest non-zero value a
    count of 1, or 2, ... and every value an integer: exact).

    Parameters
    ----------
    path
        A copy of ``devel.h5ad`` already on disk (nothing is downloaded).
    cache_dir
        Where the download is kept; default ``scanpy.settings.datasetdir`` (``./data``).

    Returns
    -------
    Raw counts (float32, sparse) with ``obs["perturbation"]`` (``"control"``, ``"KLF1"``,
    ``"KLF1+MAP2K6"``, ...), ``n_targets``, ``is_control``, ``cell_line``, ``modality`` and
    ``total_counts_all_genes``; normalise before use (``sc.pp.normalize_total``,
    ``sc.pp.log1p``). The control label is ``"control"``.

    Raises
    ------
    ValueError
        If the downloaded file is not the expected one (its SHA-256 differs).

    Examples
    --------
    >>> import scanpy as sc, scdoloris
    >>> adata = scdoloris.datasets.norman_2019_subset()  # doctest: +SKIP
    >>> sc.pp.normalize_total(adata); sc.pp.log1p(adata)  # doctest: +SKIP
    """
    if path is None:
        path = _download(cache_dir)
    return norman_subset_from_devel(ad.read_h5ad(path))


def _download(cache_dir: str | Path | None) -> Path:
    """PerturBench's ``devel.h5ad`` in ``cache_dir``, downloaded and checked if absent."""
    import urllib.request

    if cache_dir is None:
        import scanpy as sc

        cache_dir = sc.settings.datasetdir
    target = Path(cache_dir) / DEVEL_FILE
    if target.exists() and _sha256(target) == DEVEL_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        with urllib.request.urlopen(DEVEL_URL, timeout=60) as response:
            tmp.write(response.read())
    got = _sha256(Path(tmp.name))
    if got != DEVEL_SHA256:
        os.unlink(tmp.name)
        raise ValueError(
            f"The file downloaded from {DEVEL_URL} has SHA-256 {got}, not {DEVEL_SHA256}; "
            "it is not the expected PerturBench file. Download it by hand and pass path=..."
        )
    os.replace(tmp.name, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recover_counts(X) -> sparse.csr_matrix:
    """Integer counts from ``log1p(normalize_total(counts))`` values (cells x genes).

    Per cell, ``expm1`` of the values is proportional to the counts; the factor makes the
    smallest non-zero value a count of ``k``, the smallest ``k`` in 1..10 that makes every value
    an integer (within 0.01).

    Examples
    --------
    >>> counts = np.array([[1.0, 0.0, 5.0], [2.0, 3.0, 0.0]])
    >>> logged = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    >>> recover_counts(logged).toarray()
    array([[1., 0., 5.],
           [2., 3., 0.]], dtype=float32)
    """
    X = sparse.csr_matrix(X, dtype=np.float64)
    X.sort_indices()
    out = X.copy()
    for row in range(X.shape[0]):
        start, end = X.indptr[row], X.indptr[row + 1]
        values = np.expm1(X.data[start:end])
        if not len(values):
            continue
        for k in _SMALLEST_COUNTS:
            counts = values * (k / values.min())
            if np.abs(counts - np.rint(counts)).max() < 0.01:
                break
        else:
            raise ValueError(
                f"Cell {row}: no factor makes its values integer counts; they are not "
                "log1p(normalize_total(counts))."
            )
        out.data[start:end] = np.rint(counts)
    return out.astype(np.float32)


def norman_subset_from_devel(devel: ad.AnnData) -> ad.AnnData:
    """The Norman cells of PerturBench's ``devel.h5ad``, as raw counts (see
    :func:`norman_2019_subset`)."""
    cells = devel[devel.obs["dataset"].astype(str) == "norman19"]
    obs = cells.obs
    condition = obs["condition"].astype(str)
    n_targets = [0 if c == "control" else len(c.split("+")) for c in condition]
    out = ad.AnnData(
        X=recover_counts(cells.X),
        obs=pd.DataFrame(
            {
                "perturbation": pd.Categorical(condition),
                "n_targets": np.asarray(n_targets, dtype=np.int64),
                "is_control": (condition == "control").to_numpy(),
                "cell_line": pd.Categorical(obs["cell_type"].astype(str)),
                "modality": pd.Categorical(obs["perturbation_type"].astype(str)),
                "total_counts_all_genes": obs["ncounts"].to_numpy(np.float64),
            },
            index=obs.index.copy(),
        ),
        var=pd.DataFrame(
            {"highly_variable_orig": cells.var["highly_variable"].to_numpy(bool)},
            index=cells.var_names.copy(),
        ),
        uns={"source": SOURCE},
    )
    out.obs.index.name = None
    return out
