"""The files a peer's runner reads and writes: one fold of the benchmark, written by
``benchmarks/peers.py`` (the benchmark's environment) and read by a runner in the peer's own
virtual environment.

Only numpy, pandas and anndata are imported here (both peer environments have them; CPA's pins
anndata 0.9), never scdoloris.

Layout of ``IN_DIR``
--------------------
``train.h5ad``
    The fold's training cells. ``X``: log-normalised expression (``normalize_total`` to the data
    set's median total count, then ``log1p``), dense float32; ``layers["counts"]``: the same cells'
    raw counts; ``obs["perturbation"]``: the perturbation label (``"A+B"`` for a pair),
    ``obs["cell_type"]``: the covariate (``"all"`` when the task kind has none);
    ``uns["control"]``: the control label, ``uns["target_sum"]``: the normalisation's target.
``input_<i>.h5ad``
    The input control cells of prediction ``i``, in the same layout (no ``obs["perturbation"]``).
``conditions.json``
    A list of ``{"i", "name", "perturbation", "cell_type", "view"}``: what to predict from
    ``input_<i>.h5ad``.

Layout of ``OUT_DIR``
---------------------
``pred_<i>.h5ad``
    One predicted cell per input cell, on the training genes in their order, ``X`` on the same
    log-normalised scale (dense float32).
``meta.json``
    ``peer``, ``train_seconds``, ``predict_seconds`` (per ``i``), ``settings``, ``sources``,
    ``preprocessing``, ``versions`` and ``na`` (``{i: reason}`` for predictions the peer cannot
    make; no ``pred_<i>.h5ad`` is written for them).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np

NO_COVARIATE = "all"


def limit_threads(n: int) -> None:
    """Ask numpy's BLAS, numba and XLA for ``n`` threads (call before importing them)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()


def read_fold(in_dir: str | Path):
    """The training cells, the predictions asked for and a reader of their input cells.

    Returns
    -------
    ``(train, conditions, read_input)``: an AnnData, a list of dicts (``conditions.json``) and a
    function ``i -> AnnData``.
    """
    import anndata as ad

    in_dir = Path(in_dir)
    train = ad.read_h5ad(in_dir / "train.h5ad")
    conditions = json.loads((in_dir / "conditions.json").read_text())

    def read_input(i: int):
        return ad.read_h5ad(in_dir / f"input_{i}.h5ad")

    return train, conditions, read_input


def write_prediction(out_dir: str | Path, i: int, X, var_names) -> None:
    """``pred_<i>.h5ad``: ``X`` (cells x genes, log-normalised scale) as dense float32."""
    import anndata as ad
    import pandas as pd

    X = np.asarray(X, dtype=np.float32)
    pred = ad.AnnData(X=X, var=pd.DataFrame(index=pd.Index([str(g) for g in var_names])))
    pred.write_h5ad(Path(out_dir) / f"pred_{i}.h5ad")


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (``"absent"`` if not installed)."""
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def write_meta(out_dir: str | Path, meta: dict) -> None:
    """``meta.json`` (keys of ``na`` and ``predict_seconds`` as strings)."""
    Path(out_dir, "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


def split_tokens(label: str) -> list[str]:
    """The genes of a perturbation label (``"A+B"`` -> ``["A", "B"]``)."""
    return [t for t in str(label).split("+") if t]


def lognorm_counts(mu: np.ndarray, target_sum: float) -> np.ndarray:
    """Expected counts on the benchmark's scale: ``log1p`` of counts scaled to ``target_sum``."""
    mu = np.clip(np.asarray(mu, dtype=np.float64), 0.0, None)
    total = mu.sum(1, keepdims=True)
    total[total <= 0] = 1.0
    return np.log1p(mu / total * target_sum).astype(np.float32)
