"""Peers in their own virtual environments: CellFlow and CPA beside Doloris in ``run.py``.

Each peer pins dependencies that cannot live beside scdoloris (CPA: Python 3.10, torch 2.0,
scvi-tools 0.20, anndata 0.9; CellFlow: JAX), so it runs in a virtual environment of its own,
created by ``make peers-venvs`` from the pinned files in ``benchmarks/peers/``. A fold reaches it
through files: :func:`write_fold` writes the fold's training cells, the input cells of every
prediction and what to predict (the layout is documented in ``peers/_fold_io.py``); the peer's
runner (``peers/<peer>_runner.py``, executed by the venv's python, never importing scdoloris)
trains on them and writes one predicted cell per input cell; :func:`train_predict_peer` reads the
predictions back, and ``run.py`` scores them with the same code as every other method.

So a peer trains on exactly the fold's training cells (the same cells, folds and held-out
conditions as Doloris) and predicts from exactly the same input cells of both views.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import tasks
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class Peer:
    """A peer method: its name in the results, its virtual environment and its runner."""

    name: str
    venv: str
    runner: str
    interpreter: str | None = None  # another python than the venv's (tests)

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        if self.interpreter is not None:
            return Path(self.interpreter)
        return REPO / self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        """The runner (a path relative to ``benchmarks/peers/`` or absolute)."""
        return PEER_DIR / self.runner


PEERS = {
    "CellFlow": Peer("CellFlow", ".venv-cellflow", "cellflow_runner.py"),
    "CPA": Peer("CPA", ".venv-cpa", "cpa_runner.py"),
}


@cache
def _raw_counts(file: str, data_dir: str) -> tuple:
    """A data set's raw counts (cells x genes, CSR), its obs names and the median total count
    that ``tasks.read_log_normalised`` normalises to (scanpy's ``target_sum=None``)."""
    import anndata as ad

    raw = ad.read_h5ad(Path(data_dir) / file)
    X = sparse.csr_matrix(raw.X, dtype=np.float32)
    totals = np.asarray(X.sum(1)).ravel()
    target = float(np.median(totals[totals > 0]))
    return X, pd.Index(raw.obs_names), target


def _for_peer(adata, fold: tasks.Fold, perturbation: bool = True):
    """A copy of ``adata`` in the runners' layout (``peers/_fold_io.py``)."""
    import anndata as ad

    task = tasks.TASKS[fold.task]
    X, names, target = _raw_counts(task.file, str(tasks.DATA_DIR))
    rows = names.get_indexer(adata.obs_names)
    if (rows < 0).any():
        raise ValueError("cells of the fold are missing from the raw file")
    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    if perturbation:
        obs["perturbation"] = adata.obs[fold.setup["perturbation_key"]].astype(str).to_numpy()
    ct_key = fold.setup.get("cell_type_key")
    obs["cell_type"] = adata.obs[ct_key].astype(str).to_numpy() if ct_key else "all"
    dense = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    out = ad.AnnData(
        X=np.asarray(dense, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=adata.var_names.astype(str)),
        layers={"counts": X[rows]},
    )
    out.uns["control"] = str(fold.setup["control_group"])
    out.uns["target_sum"] = target
    out.uns["task"] = fold.task
    return out


def write_fold(fold: tasks.Fold, views, directory: Path) -> list[tuple[int, tasks.Condition, str]]:
    """Write ``fold`` for a runner: ``train.h5ad``, ``input_<i>.h5ad`` and ``conditions.json``.

    Returns
    -------
    ``(i, condition, view)`` for every prediction asked for.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _for_peer(fold.train, fold).write_h5ad(directory / "train.h5ad")
    jobs, listing = [], []
    for view in views:
        for cond in fold.conditions:
            i = len(jobs)
            _for_peer(fold.input_cells(cond, view), fold, False).write_h5ad(
                directory / f"input_{i}.h5ad"
            )
            jobs.append((i, cond, view))
            listing.append(
                {
                    "i": i,
                    "name": cond.name,
                    "perturbation": cond.perturbation,
                    "cell_type": cond.cell_type if cond.cell_type is not None else "all",
                    "view": view,
                }
            )
    (directory / "conditions.json").write_text(json.dumps(listing, indent=1) + "\n")
    return jobs


def train_predict_peer(
    name: str,
    fold: tasks.Fold,
    views,
    seed: int,
    threads: int = 1,
    max_steps: int | None = None,
    timeout: float | None = None,
) -> dict | None:
    """Train peer ``name`` on a fold and predict every condition from its input cells.

    Parameters
    ----------
    name
        A key of :data:`PEERS`.
    fold
        The fold (its training cells, conditions and input cells of both views).
    views
        The views to predict (``tasks.VIEWS``).
    seed
        The peer's seed.
    threads
        Threads of the runner (BLAS, XLA, torch).
    max_steps
        The runner's training budget (its documented budget when ``None``; see the runner).
    timeout
        Seconds before the runner is stopped.

    Returns
    -------
    ``{"pred": {(view, condition name): (cells, train_s, predict_s)}, "na": {(view, condition
    name): reason}, "meta": the runner's meta.json}``, or ``None`` (the reason printed) if the
    venv is missing or the runner fails.
    """
    peer = PEERS[name]
    if not peer.python.exists():
        print(f"  {name} skipped: {peer.python} is missing (make peers-venvs)", flush=True)
        return None
    with tempfile.TemporaryDirectory(prefix=f"scdoloris-{name.lower()}-") as tmp:
        in_dir, out_dir = Path(tmp, "in"), Path(tmp, "out")
        out_dir.mkdir()
        jobs = write_fold(fold, views, in_dir)
        cmd = [
            str(peer.python),
            str(peer.script),
            str(in_dir),
            str(out_dir),
            "--seed",
            str(seed),
            "--threads",
            str(threads),
        ]
        if max_steps is not None:
            cmd += ["--max-steps", str(max_steps)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp
            )
        except subprocess.TimeoutExpired:
            print(f"  {name} skipped: the runner ran past {timeout} s", flush=True)
            return None
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            print(f"  {name} failed (exit {proc.returncode}):\n{tail}", file=sys.stderr, flush=True)
            return None
        meta = json.loads((out_dir / "meta.json").read_text())
        meta["wall_seconds"] = wall
        import anndata as ad

        out = {"pred": {}, "na": {}, "meta": meta}
        for i, cond, view in jobs:
            path = out_dir / f"pred_{i}.h5ad"
            if not path.exists():
                out["na"][(view, cond.name)] = meta.get("na", {}).get(str(i), "no prediction")
                continue
            pred = ad.read_h5ad(path)
            if list(pred.var_names) != list(fold.train.var_names.astype(str)):
                raise ValueError(f"{name}: predicted genes differ from the training genes")
            n_in = fold.input_cells(cond, view).n_obs
            if pred.n_obs != n_in:
                raise ValueError(f"{name}: {pred.n_obs} predicted cells for {n_in} input cells")
            out["pred"][(view, cond.name)] = (
                np.asarray(pred.X, dtype=np.float32),
                float(meta["train_seconds"]),
                float(meta.get("predict_seconds", {}).get(str(i), 0.0)),
            )
        return out
