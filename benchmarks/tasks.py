"""The cross-validated benchmark's task kinds: which conditions are held out, fold by fold.

Six task kinds on the three shared data sets (``../shared/data``, raw counts, log-normalised on
a copy with ``normalize_total`` then ``log1p``). In every task kind each held-out condition is
held out exactly once (K folds over the conditions); a fold trains on everything but its
conditions.

========================  ===============================================================
task kind                 held out (one condition = one perturbation in one context)
========================  ===============================================================
``norman_pairs``          the 5 gene pairs whose two singles are measured; the singles and
                          the 7 other pairs train (5 folds, one pair each)
``norman_singles``        the 21 single genes (3 folds of 7); the pairs train, so a gene
                          seen in a pair is a seen token, the others are unseen tokens
``papalexi_unseen``       the 25 knocked-out targets (5 folds of 5): unseen tokens
``papalexi_replicate``    every target in one biological replicate (3 folds, one
                          replicate each; the model's covariate is ``bio_rep``)
``kang_cell_type``        the stimulated cells of one cell type (5 folds)
``kang_donor``            the stimulated cells of one donor, per cell type (2 folds; the
                          covariate is the cell type, the donor is the context)
========================  ===============================================================

Cells. Every (perturbation, context) group keeps at most ``max_cells`` (300) cells, drawn once
per task with :data:`SPLIT_SEED`, so every fold, method and seed sees the same cells. The
control cells of each context (at most ``2 * max_cells``) are halved once: one half is in
every fold's training data and is the **input** of the main view (the user's own controls, as
they trained on them), the other half never trains and is the input of the second view
(``"held-out"``). Real cells: the held-out condition's cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

# the shared data folder: $SCDOLORIS_DATA (as the tests), else ../shared/data beside the checkout
DATA_DIR = Path(
    os.environ.get("SCDOLORIS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
SPLIT_SEED = 0
MAX_CELLS = 300
VIEWS = ("train", "held-out")

NORMAN_FILE = "norman2019_k562_subset.h5ad"
PAPALEXI_FILE = "papalexi2021_thp1.h5ad"
KANG_FILE = "kang2018_pbmc_ifnb.h5ad"


@dataclass(frozen=True)
class Condition:
    """One held-out condition.

    ``name`` is unique within a task kind; ``perturbation`` and ``cell_type`` are what a method
    is asked to predict (``cell_type`` is the model's covariate, ``None`` without one);
    ``context`` names the group of control cells the prediction starts from.
    """

    name: str
    perturbation: str
    cell_type: str | None
    context: str


@dataclass
class Fold:
    """One fold of a task kind: training cells, held-out conditions, their real and input cells.

    ``inputs[view][context]`` are the input control cells of a context, for the views
    ``"train"`` (controls in ``train``) and ``"held-out"`` (controls never trained on).
    """

    task: str
    index: int
    train: ad.AnnData
    conditions: list[Condition]
    real: dict[str, ad.AnnData]
    inputs: dict[str, dict[str, ad.AnnData]]
    setup: dict = field(default_factory=dict)

    def input_cells(self, condition: Condition, view: str = "train") -> ad.AnnData:
        """The input control cells of ``condition`` in ``view``."""
        return self.inputs[view][condition.context]


@dataclass(frozen=True)
class TaskKind:
    """A task kind: its data set, setup arguments and how its conditions fall into folds."""

    name: str
    file: str
    setup: dict
    description: str
    n_folds: int | None  # None: one fold per group of ``fold_group``


def read_log_normalised(name: str, data_dir: Path | str = DATA_DIR) -> ad.AnnData:
    """Read ``data_dir / name`` (raw counts) and return a log-normalised copy.

    Parameters
    ----------
    name
        File name in the shared data folder.
    data_dir
        The shared data folder.

    Returns
    -------
    The AnnData with ``X`` replaced by ``log1p(normalize_total(counts))``.

    Raises
    ------
    FileNotFoundError
        If the file is absent (the shared data folder is not beside the checkout).
    """
    import scanpy as sc

    path = Path(data_dir) / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the benchmark needs the shared data folder ../shared/data "
            "beside the repository checkout."
        )
    adata = sc.read_h5ad(path)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    return adata


def dense(X) -> np.ndarray:
    """A matrix of cells (sparse or dense) as a dense float32 array, as the metrics take it."""
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float32)


TASKS = {
    "norman_pairs": TaskKind(
        "norman_pairs",
        NORMAN_FILE,
        {"perturbation_key": "perturbation", "control_group": "control"},
        "Norman 2019 CRISPRa: unseen gene pairs whose two singles were seen",
        5,
    ),
    "norman_singles": TaskKind(
        "norman_singles",
        NORMAN_FILE,
        {"perturbation_key": "perturbation", "control_group": "control"},
        "Norman 2019 CRISPRa: unseen single genes (the pairs train)",
        3,
    ),
    "papalexi_unseen": TaskKind(
        "papalexi_unseen",
        PAPALEXI_FILE,
        {"perturbation_key": "target", "control_group": "non-targeting"},
        "Papalexi 2021 CRISPR KO: unseen knockouts",
        5,
    ),
    "papalexi_replicate": TaskKind(
        "papalexi_replicate",
        PAPALEXI_FILE,
        {
            "perturbation_key": "target",
            "control_group": "non-targeting",
            "cell_type_key": "bio_rep",
        },
        "Papalexi 2021 CRISPR KO: knockouts in a held-out biological replicate",
        None,
    ),
    "kang_cell_type": TaskKind(
        "kang_cell_type",
        KANG_FILE,
        {"perturbation_key": "group_id", "control_group": "ctrl", "cell_type_key": "cluster_id"},
        "Kang 2018 IFN-beta PBMCs: a held-out cell type",
        None,
    ),
    "kang_donor": TaskKind(
        "kang_donor",
        KANG_FILE,
        {"perturbation_key": "group_id", "control_group": "ctrl", "cell_type_key": "cluster_id"},
        "Kang 2018 IFN-beta PBMCs: a held-out donor",
        None,
    ),
}


def _labels(adata: ad.AnnData, task: TaskKind) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: perturbation label, context, fold group (for tasks folded by group)."""
    obs = adata.obs
    pert = obs[task.setup["perturbation_key"]].astype(str).to_numpy()
    n = adata.n_obs
    if task.name == "papalexi_replicate":
        rep = obs["bio_rep"].astype(str).to_numpy()
        return pert, rep, rep
    if task.name == "kang_cell_type":
        ct = obs["cluster_id"].astype(str).to_numpy()
        return pert, ct, ct
    if task.name == "kang_donor":
        ct = obs["cluster_id"].astype(str).to_numpy()
        donor = np.char.replace(
            np.char.replace(obs["sample_id"].astype(str).to_numpy().astype(str), "ctrl", ""),
            "stim",
            "",
        )
        donor = np.char.add("donor ", donor)
        return pert, np.char.add(np.char.add(donor, " | "), ct), donor
    return pert, np.full(n, "all"), np.full(n, "all")


def _held_out_perturbations(task: TaskKind, pert: np.ndarray, control: str) -> list[str]:
    """The perturbations a perturbation-folded task holds out (sorted)."""
    perts = sorted(set(pert) - {control})
    if task.name == "norman_pairs":
        singles = {p for p in perts if "+" not in p}
        return [p for p in perts if "+" in p and all(t in singles for t in p.split("+"))]
    if task.name == "norman_singles":
        return [p for p in perts if "+" not in p]
    return perts


@cache
def _prepared(task_name: str, data_dir: str, max_cells: int, seed: int):
    """The capped cells of a task and their labels, computed once per process."""
    task = TASKS[task_name]
    adata = read_log_normalised(task.file, data_dir)
    pert, context, group = _labels(adata, task)
    control = task.setup["control_group"]
    rng = np.random.default_rng(seed)
    is_ctrl = pert == control
    keep, ctrl_train, ctrl_held = [], [], []
    key = np.char.add(np.char.add(pert.astype(str), " @ "), context.astype(str))
    for k in np.unique(key):
        rows = rng.permutation(np.flatnonzero(key == k))
        if is_ctrl[rows[0]]:
            rows = rows[: 2 * max_cells]
            cut = (len(rows) + 1) // 2
            ctrl_train.append(np.sort(rows[:cut]))
            ctrl_held.append(np.sort(rows[cut:]))
        else:
            keep.append(np.sort(rows[:max_cells]))
    perturbed = np.sort(np.concatenate(keep))
    return (
        adata,
        pert,
        context,
        group,
        perturbed,
        np.sort(np.concatenate(ctrl_train)),
        np.sort(np.concatenate(ctrl_held)),
    )


def conditions(
    task_name: str,
    data_dir: Path | str = DATA_DIR,
    max_cells: int = MAX_CELLS,
    seed: int = SPLIT_SEED,
) -> list[tuple[Condition, str]]:
    """Every held-out condition of a task kind with its fold group."""
    task = TASKS[task_name]
    adata, pert, context, group, perturbed, _, _ = _prepared(
        task_name, str(data_dir), max_cells, seed
    )
    ct_key = task.setup.get("cell_type_key")
    cell_type = adata.obs[ct_key].astype(str).to_numpy() if ct_key else None
    held = set(_held_out_perturbations(task, pert, task.setup["control_group"]))
    out = {}
    for i in perturbed:
        if pert[i] not in held:
            continue
        name = pert[i] if context[i] == "all" else f"{pert[i]} | {context[i]}"
        ct = None if cell_type is None else str(cell_type[i])
        out.setdefault(name, (Condition(name, str(pert[i]), ct, str(context[i])), str(group[i])))
    return [out[k] for k in sorted(out)]


def fold_assignment(
    task_name: str,
    items: list[tuple[Condition, str]],
    seed: int = SPLIT_SEED,
    n_folds: int | None = None,
) -> list[list[Condition]]:
    """Conditions per fold: by group (``n_folds`` None) or a seeded round-robin over K folds."""
    task = TASKS[task_name]
    k = task.n_folds if n_folds is None else n_folds
    if task.n_folds is None:
        groups = sorted({g for _, g in items})
        return [[c for c, g in items if g == grp] for grp in groups]
    order = np.random.default_rng(seed).permutation(len(items))
    folds: list[list[Condition]] = [[] for _ in range(min(k, len(items)))]
    for rank, i in enumerate(order):
        folds[rank % len(folds)].append(items[i][0])
    return [sorted(f, key=lambda c: c.name) for f in folds]


def folds(
    task_name: str,
    data_dir: Path | str = DATA_DIR,
    max_cells: int = MAX_CELLS,
    seed: int = SPLIT_SEED,
    n_folds: int | None = None,
    only: list[int] | None = None,
) -> Iterator[Fold]:
    """The folds of a task kind, built one at a time (copies of the cells).

    Parameters
    ----------
    task_name
        A key of :data:`TASKS`.
    data_dir
        The shared data folder.
    max_cells
        Cells kept per (perturbation, context) group; controls: twice that, halved.
    seed
        Seed of the subsampling, the control halves and the fold assignment.
    n_folds
        Number of folds of a perturbation-folded task (default: the task's).
    only
        Indices of the folds to build (default: all).
    """
    task = TASKS[task_name]
    items = conditions(task_name, data_dir, max_cells, seed)
    assignment = fold_assignment(task_name, items, seed, n_folds)
    adata, pert, context, _, perturbed, ctrl_train, ctrl_held = _prepared(
        task_name, str(data_dir), max_cells, seed
    )
    names = np.where(
        context == "all",
        pert,
        np.char.add(np.char.add(pert.astype(str), " | "), context.astype(str)),
    )
    for index, held in enumerate(assignment):
        if only is not None and index not in only:
            continue
        held_names = {c.name for c in held}
        is_held = np.isin(names[perturbed], list(held_names))
        train_rows = np.sort(np.concatenate([perturbed[~is_held], ctrl_train]))
        real = {c.name: adata[perturbed[names[perturbed] == c.name]].copy() for c in held}
        contexts = sorted({c.context for c in held})
        inputs = {
            "train": {x: adata[ctrl_train[context[ctrl_train] == x]].copy() for x in contexts},
            "held-out": {x: adata[ctrl_held[context[ctrl_held] == x]].copy() for x in contexts},
        }
        yield Fold(task_name, index, adata[train_rows].copy(), held, real, inputs, dict(task.setup))
