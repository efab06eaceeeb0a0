"""The benchmark's cell-eval scores: the main view's predictions scored by the Virtual Cell
Challenge's evaluator (cell-eval 0.8.2, in its own venv; ``cell_eval_runner.py``).

``run.py`` keeps every method's predicted cells of the main view; per task kind, seed and
method this module writes one cell-eval group per context (the conditions that share input
control cells: a replicate, a cell type, a donor's cell type), with those control cells as
cell-eval's control, runs the runner once over all groups and joins its per-condition metrics
to the task's table as ``ce_<metric>`` columns. The discrimination score ranks a condition
among the conditions of its group: it is undefined (NaN) where a context holds one condition
(Kang's held-out cell types).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv-cell-eval" / "bin" / "python"
RUNNER = Path(__file__).resolve().parent / "cell_eval_runner.py"
VIEW = "train"  # the main view (cell-eval scores it only: the other view's numbers follow it)
#: the runner's columns kept, as ``ce_<name>`` (the issue's four and their context)
KEEP = (
    "overlap_at_N",
    "precision_at_N",
    "de_direction_match",
    "de_spearman_lfc_sig",
    "discrimination_score_l1",
    "de_nsig_counts_real",
    "de_nsig_counts_pred",
)
_SEP = "__"


def wanted(choice: str, tiny: bool) -> bool:
    """Whether a run scores with cell-eval: ``"yes"`` (its venv must exist), ``"no"``, or
    ``"auto"`` (when the venv exists and the run is not ``--tiny``)."""
    if choice == "yes" and not VENV_PYTHON.exists():
        raise SystemExit(
            f"--cell-eval yes needs {VENV_PYTHON.relative_to(REPO)}: run `make cell-eval-venv`."
        )
    return choice == "yes" or (choice == "auto" and not tiny and VENV_PYTHON.exists())


def _anndata(blocks: list[tuple[str, np.ndarray]], genes: list[str]):
    import anndata as ad

    X = np.vstack([b for _, b in blocks]).astype(np.float32)
    labels = np.concatenate([[name] * len(b) for name, b in blocks])
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes))


def write_groups(results: list[dict], folder: Path) -> dict[str, tuple[str, float]]:
    """One pred/real pair of files per (method, seed, context); returns group -> (method,
    seed)."""
    cells, reals, contexts, controls, genes = {}, {}, {}, {}, None
    for r in results:
        cells.update(r["cells"])
        if r.get("genes") is not None:
            genes = r["genes"]
            reals.update(r["reals"])
            contexts.update(r["contexts"])
            controls.update(r["controls"])
    groups: dict[tuple, list] = {}
    for (method, seed, cond), (P, real) in cells.items():
        groups.setdefault((method, seed, contexts[cond]), []).append((cond, P, real))
    names, context_ids = {}, {c: i for i, c in enumerate(sorted(controls))}
    for (method, seed, context), members in groups.items():
        seed_value = -1 if seed is None or pd.isna(seed) else int(seed)
        group = _SEP.join([str(len(names)), f"s{seed_value}", f"c{context_ids[context]}"])
        names[group] = (method, np.nan if seed_value < 0 else float(seed_value))
        control = [("control", controls[context])]
        pred = [(cond, P) for cond, P, _ in members]
        real = [(cond, reals[cond] if R is None else R) for cond, _, R in members]
        _anndata(pred + control, genes).write_h5ad(folder / f"{group}.pred.h5ad")
        _anndata(real + control, genes).write_h5ad(folder / f"{group}.real.h5ad")
    return names


def add_scores(table: pd.DataFrame, results: list[dict], task: str, threads: int) -> pd.DataFrame:
    """``table`` with the cell-eval columns joined on (method, seed, condition) of the main
    view (NaN elsewhere)."""
    with tempfile.TemporaryDirectory(prefix=f"cell-eval-{task}-") as tmp:
        folder = Path(tmp)
        names = write_groups(results, folder)
        if not names:
            return table
        out_csv = folder / "scores.csv"
        command = [str(VENV_PYTHON), str(RUNNER), str(folder), str(out_csv), "--threads"]
        done = subprocess.run([*command, str(threads)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            raise RuntimeError(f"cell-eval failed on {task} (exit {done.returncode}).")
        scores = pd.read_csv(out_csv)
    scores["method"] = [names[g][0] for g in scores["group"]]
    scores["seed"] = [names[g][1] for g in scores["group"]]
    scores = scores.rename(columns={"perturbation": "condition"})
    scores = scores[["method", "seed", "condition", *KEEP]]
    scores.columns = [*scores.columns[:3], *(f"ce_{k}" for k in KEEP)]
    scores["view"] = VIEW
    key = ["view", "method", "seed", "condition"]
    merged = table.assign(seed=table["seed"].astype(float)).merge(scores, on=key, how="left")
    return merged
