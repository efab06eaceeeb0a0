"""Benchmark protocols: fixed, documented train / input / held-out splits of the shared data.

Every protocol function reads one file of ``../shared/data`` (raw counts), log-normalises a copy
(``normalize_total`` then ``log1p``: ``tasks.read_log_normalised``, the benchmark's reader) and
returns a :class:`Split`:

``train``
    The cells every method is fitted on (control cells and the seen conditions).
``controls``
    The input control cells: every method predicts from exactly these cells. They are NOT in
    ``train``: the control cells of a protocol (of the held-out cell types for ``kang``) are
    split at random into two halves, one half goes into ``train``, the other half is the input.
    So the E-distance of "no change" is a fair distance between two independent samples, and
    no method can copy its training controls.
``real``
    The real held-out perturbed cells the predictions are compared with.
``conditions``
    The held-out conditions (:class:`Condition`: name, perturbation label, cell type).
``setup``
    Keyword arguments of ``DolorisModel.setup_anndata`` and of the baselines' ``fit``
    (``perturbation_key``, ``control_group``, ``cell_type_key``).

All random choices use ``numpy.random.default_rng(seed)`` with ``seed=SPLIT_SEED`` (0) unless
another seed is passed; they do not depend on the seeds of the methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
from tasks import DATA_DIR, KANG_FILE, NORMAN_FILE, PAPALEXI_FILE, SPLIT_SEED, read_log_normalised

NORMAN_PAIRS = ("KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2")
PAPALEXI_TARGETS = ("JAK2", "IFNGR2", "STAT2", "NFKBIA", "CMTM6")
PAPALEXI_MAX_CELLS = 300
KANG_CELL_TYPES = ("CD14+ Monocytes", "B cells")


class Condition(NamedTuple):
    """One held-out condition: its display name, perturbation label and cell type (or None)."""

    name: str
    perturbation: str
    cell_type: str | None


class Split(NamedTuple):
    """What a protocol function returns (see the module docstring)."""

    train: ad.AnnData
    controls: ad.AnnData
    real: ad.AnnData
    conditions: list[Condition]
    setup: dict


def cap_per_group(labels: np.ndarray, max_cells: int | None, rng: np.random.Generator):
    """Indices keeping at most ``max_cells`` cells of every label (drawn at random), sorted.

    Parameters
    ----------
    labels
        One label per cell.
    max_cells
        Cap per label; ``None`` keeps every cell.
    rng
        Random generator.

    Returns
    -------
    Sorted integer indices of the kept cells.
    """
    labels = np.asarray(labels)
    keep = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if max_cells is not None and len(rows) > max_cells:
            rows = rng.choice(rows, max_cells, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split cells into two random halves, within every label (the first half gets the odd one).

    Parameters
    ----------
    labels
        One label per cell (e.g. cell type); each label is halved separately.
    rng
        Random generator.

    Returns
    -------
    Sorted indices of the first and of the second half.
    """
    labels = np.asarray(labels)
    first, second = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cut = (len(rows) + 1) // 2
        first.append(rows[:cut])
        second.append(rows[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def condition_mask(adata: ad.AnnData, condition: Condition, setup: dict) -> np.ndarray:
    """Boolean mask of the cells of ``adata`` in ``condition`` (perturbation and cell type).

    Parameters
    ----------
    adata
        Cells with the protocol's obs columns.
    condition
        The condition.
    setup
        The protocol's setup keyword arguments.

    Returns
    -------
    A boolean array, one entry per cell.
    """
    mask = adata.obs[setup["perturbation_key"]].astype(str).to_numpy() == condition.perturbation
    return mask & cell_type_mask(adata, condition.cell_type, setup)


def cell_type_mask(adata: ad.AnnData, cell_type: str | None, setup: dict) -> np.ndarray:
    """Boolean mask of the cells of ``cell_type`` (all cells when it or the key is None).

    Parameters
    ----------
    adata
        Cells with the protocol's obs columns.
    cell_type
        The cell type, or None.
    setup
        The protocol's setup keyword arguments.

    Returns
    -------
    A boolean array, one entry per cell.
    """
    key = setup.get("cell_type_key")
    if cell_type is None or key is None:
        return np.ones(adata.n_obs, dtype=bool)
    return adata.obs[key].astype(str).to_numpy() == cell_type


def _assemble(
    adata: ad.AnnData,
    train_rows: np.ndarray,
    input_rows: np.ndarray,
    real_rows: np.ndarray,
    conditions: list[Condition],
    setup: dict,
) -> Split:
    """Copy the three row sets out of ``adata`` into a :class:`Split`."""
    return Split(
        adata[np.sort(train_rows)].copy(),
        adata[np.sort(input_rows)].copy(),
        adata[np.sort(real_rows)].copy(),
        conditions,
        setup,
    )


def norman(
    data_dir: Path | str = DATA_DIR,
    max_cells: int | None = None,
    seed: int = SPLIT_SEED,
) -> Split:
    """Norman et al. 2019 (CRISPRa, K562): predict five unseen gene pairs.

    Held out: the pairs KLF1+MAP2K6, KLF1+TGFBR2, MAP2K3+MAP2K6, MAP2K3+SLC38A2, MAPK1+TGFBR2
    (both singles of each are in training). Training: half of the control cells, every single
    perturbation and the seven other pairs. Input: the other half of the control cells
    (50 of 100).

    Parameters
    ----------
    data_dir
        The shared data folder.
    max_cells
        Optional cap on the cells of every condition (controls included, before halving) and of
        every held-out pair; ``None`` (the benchmark) keeps all (about 100 each).
    seed
        Seed of the subsampling and of the control halves.

    Returns
    -------
    The :class:`Split`.
    """
    adata = read_log_normalised(NORMAN_FILE, data_dir)
    setup = {"perturbation_key": "perturbation", "control_group": "control"}
    return _perturbation_split(adata, setup, NORMAN_PAIRS, max_cells, max_cells, seed)


def papalexi(
    data_dir: Path | str = DATA_DIR,
    max_cells: int | None = PAPALEXI_MAX_CELLS,
    max_real: int | None = None,
    seed: int = SPLIT_SEED,
) -> Split:
    """Papalexi et al. 2021 (CRISPR knockout, THP-1): predict knockouts of unseen targets.

    Held out: JAK2, IFNGR2, STAT2, NFKBIA, CMTM6 (all measured genes, never perturbed in
    training). The file has 20,729 cells; for speed the control cells and the cells of every
    training target are first subsampled to at most ``max_cells`` (300) at random. The 300
    control cells are then halved: 150 train, 150 are the input. Training: those control cells
    and the other 20 targets. Real: every cell of the five held-out targets (``max_real``).

    Parameters
    ----------
    data_dir
        The shared data folder.
    max_cells
        Cap on the control cells (before halving) and on the cells of every training target.
    max_real
        Optional cap on the real cells of each held-out target; ``None`` keeps all (661-1,213).
    seed
        Seed of the subsampling and of the control halves.

    Returns
    -------
    The :class:`Split`.
    """
    adata = read_log_normalised(PAPALEXI_FILE, data_dir)
    setup = {"perturbation_key": "target", "control_group": "non-targeting"}
    return _perturbation_split(adata, setup, PAPALEXI_TARGETS, max_cells, max_real, seed)


def _perturbation_split(
    adata: ad.AnnData,
    setup: dict,
    held_out: tuple[str, ...],
    max_cells: int | None,
    max_real: int | None,
    seed: int,
) -> Split:
    """Held-out perturbations, one cell type: cap, halve the controls, assemble."""
    rng = np.random.default_rng(seed)
    labels = adata.obs[setup["perturbation_key"]].astype(str).to_numpy()
    missing = sorted(set(held_out) - set(labels))
    if missing:
        raise ValueError(f"Held-out conditions {missing} are not in the data.")
    is_held = np.isin(labels, held_out)
    seen = np.flatnonzero(~is_held)
    seen = seen[cap_per_group(labels[seen], max_cells, rng)]
    real_rows = np.flatnonzero(is_held)
    real_rows = real_rows[cap_per_group(labels[real_rows], max_real, rng)]
    controls = seen[labels[seen] == setup["control_group"]]
    train_half, input_half = halves(np.zeros(len(controls)), rng)
    train_rows = np.concatenate(
        [seen[labels[seen] != setup["control_group"]], controls[train_half]]
    )
    conditions = [Condition(p, p, None) for p in held_out]
    return _assemble(adata, train_rows, controls[input_half], real_rows, conditions, setup)


def kang(
    data_dir: Path | str = DATA_DIR,
    max_cells: int | None = None,
    seed: int = SPLIT_SEED,
) -> Split:
    """Kang et al. 2018 (PBMC, interferon-beta): predict the stimulated state of unseen types.

    One model holds out both cell types "CD14+ Monocytes" and "B cells" (one training run per
    method and seed instead of two; the task is harder than holding out one type, since only
    three stimulated types remain). Training: every control cell of the three other types, one
    half of the control cells of each held-out type, and the stimulated cells of the other three
    types. Input: the other half of the held-out types' control cells (100 and 72). Real: the
    stimulated cells of the held-out types (200 and 154). Conditions: ``stim`` in each held-out
    type.

    Parameters
    ----------
    data_dir
        The shared data folder.
    max_cells
        Optional cap on the cells of every (condition, cell type) group; ``None`` keeps all.
    seed
        Seed of the subsampling and of the control halves.

    Returns
    -------
    The :class:`Split`.
    """
    adata = read_log_normalised(KANG_FILE, data_dir)
    setup = {"perturbation_key": "group_id", "control_group": "ctrl", "cell_type_key": "cluster_id"}
    rng = np.random.default_rng(seed)
    group = adata.obs["group_id"].astype(str).to_numpy()
    cell_type = adata.obs["cluster_id"].astype(str).to_numpy()
    rows = cap_per_group(np.char.add(np.char.add(group, "|"), cell_type), max_cells, rng)
    held_type = np.isin(cell_type[rows], KANG_CELL_TYPES)
    is_ctrl = group[rows] == "ctrl"
    held_ctrl = rows[held_type & is_ctrl]
    train_half, input_half = halves(cell_type[held_ctrl], rng)
    train_rows = np.concatenate([rows[~held_type], held_ctrl[train_half]])
    real_rows = rows[held_type & ~is_ctrl]
    conditions = [Condition(f"stim | {ct}", "stim", ct) for ct in KANG_CELL_TYPES]
    return _assemble(adata, train_rows, held_ctrl[input_half], real_rows, conditions, setup)


PROTOCOLS = {"norman": norman, "papalexi": papalexi, "kang": kang}
