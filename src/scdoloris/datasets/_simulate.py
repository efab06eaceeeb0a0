"""Simulation of a single-cell perturbation screen with a known ground truth.

The simulator writes raw UMI counts for control cells, single-gene knockouts, gene pairs with a
known genetic interaction and (optionally) drugs at several doses. Expression follows a low-rank
gene-program model:

* every gene ``g`` has a baseline log-rate ``b_g`` and non-negative, sparse loadings ``W[:, g]``
  on ``n_programs`` gene programs;
* every cell type ``t`` has program activities ``A[t]``; each cell adds its own activity noise,
  so cells of one type vary along the programs;
* a perturbation adds a shift ``delta[t]`` to the log-rates of a cell of type ``t``; each cell
  scales that shift by a penetrance factor around 1;
* counts are negative binomial with mean ``library_size * softmax(log-rates)`` and a per-gene
  inverse dispersion ``theta_g``; library sizes are log-normal.

Highly expressed (housekeeping-like) genes have small loadings and respond little to
perturbations, and downstream shifts are softly bounded (about 20-fold), so that a perturbation
does not redistribute a large part of the library. Shifts are defined on the log-rates before the
softmax: after library-size normalisation the observed shifts also carry a small per-condition
offset, and ``log1p`` squeezes the shifts of barely detected genes.

Everything needed to score a method (true shifts per cell type, interaction types, dose-response
parameters, genes without effect) is stored in ``adata.uns["simulation"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._perturbation import format_tokens

__all__ = ["simulate"]

INTERACTION_TYPES = ("additive", "synergistic", "buffering", "epistatic")

# Real, simple molecules (valid SMILES) used as made-up drugs.
_MOLECULES: tuple[tuple[str, str], ...] = (
    ("ethanol", "CCO"),
    ("phenol", "c1ccccc1O"),
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"),
    ("paracetamol", "CC(=O)Nc1ccc(O)cc1"),
    ("ibuprofen", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"),
    ("benzoic_acid", "O=C(O)c1ccccc1"),
    ("toluene", "Cc1ccccc1"),
    ("aniline", "Nc1ccccc1"),
    ("pyridine", "c1ccncc1"),
    ("acetone", "CC(C)=O"),
    ("glycine", "NCC(=O)O"),
    ("urea", "NC(N)=O"),
    ("nicotine", "CN1CCC[C@H]1c1cccnc1"),
    ("salicylic_acid", "O=C(O)c1ccccc1O"),
    ("acetic_acid", "CC(=O)O"),
    ("naphthalene", "c1ccc2ccccc2c1"),
    ("indole", "c1ccc2[nH]ccc2c1"),
    ("glucose", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"),
    ("metformin", "CN(C)C(=N)N=C(N)N"),
    ("dopamine", "NCCc1ccc(O)c(O)c1"),
    ("serotonin", "NCCc1c[nH]c2ccc(O)cc12"),
    ("lidocaine", "CCN(CC)CC(=O)Nc1c(C)cccc1C"),
    ("theophylline", "Cn1c(=O)c2[nH]cnc2n(C)c1=O"),
)

_CHUNK_CELLS = 2048
_MAX_ABS_SHIFT = 3.0  # soft bound of a downstream log-rate shift (a 20-fold change)


def _gene_names(n_genes: int) -> np.ndarray:
    width = max(4, len(str(n_genes - 1)))
    return np.array([f"G{i:0{width}d}" for i in range(n_genes)], dtype=object)


def _random_sign(rng: np.random.Generator, size: int | None = None) -> Any:
    return rng.choice(np.array([-1.0, 1.0]), size=size)


def _downstream_effect(
    rng: np.random.Generator,
    loadings: np.ndarray,
    responsiveness: np.ndarray,
    n_cell_types: int,
    programs: tuple[int, int],
    program_strength: tuple[float, float],
    targets: tuple[int, int],
    target_strength: tuple[float, float],
    type_scale: tuple[float, float],
    exclude: Sequence[int] = (),
    max_abs: float = _MAX_ABS_SHIFT,
) -> np.ndarray:
    """A sparse log-rate shift per cell type: a few shifted programs plus a few direct targets.

    ``loadings`` already include the genes' ``responsiveness``, which also damps direct targets.
    Shifts are softly bounded by ``max_abs`` (in log units).
    """
    n_programs, n_genes = loadings.shape
    n_prog = int(rng.integers(programs[0], programs[1] + 1))
    which = rng.choice(n_programs, size=min(n_prog, n_programs), replace=False)
    strength = _random_sign(rng, which.size) * rng.uniform(*program_strength, size=which.size)
    program_part = strength @ loadings[which]  # (n_genes,)
    direct = np.zeros(n_genes)
    candidates = np.setdiff1d(np.arange(n_genes), np.asarray(exclude, dtype=int))
    n_targets = min(int(rng.integers(targets[0], targets[1] + 1)), candidates.size)
    hit = rng.choice(candidates, size=n_targets, replace=False)
    direct[hit] = _random_sign(rng, n_targets) * rng.uniform(*target_strength, size=n_targets)
    direct *= responsiveness
    scale = rng.uniform(*type_scale, size=n_cell_types)
    return _soft_clip(scale[:, None] * program_part[None, :] + direct[None, :], max_abs)


def _soft_clip(x: np.ndarray, max_abs: float) -> np.ndarray:
    return max_abs * np.tanh(x / max_abs)


def _hill(dose: float, ec50: np.ndarray, hill: float) -> np.ndarray:
    dose = float(dose)
    if dose <= 0:
        return np.zeros_like(ec50)
    return 1.0 / (1.0 + (ec50 / dose) ** hill)


def _allocate_cells(
    n_cells: int, n_conditions: int, control_weight: float, cells_per_condition: int | None
) -> np.ndarray:
    """Cells per condition (condition 0 is the control)."""
    if cells_per_condition is not None:
        if cells_per_condition < 1:
            raise ValueError(f"cells_per_condition must be >= 1, got {cells_per_condition}.")
        sizes = np.full(n_conditions, int(cells_per_condition))
        sizes[0] = int(round(control_weight * cells_per_condition))
        return sizes
    weights = np.ones(n_conditions)
    weights[0] = control_weight
    exact = n_cells * weights / weights.sum()
    sizes = np.floor(exact).astype(int)
    remainder = n_cells - sizes.sum()
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[:remainder]] += 1
    if sizes.min() < 1:
        raise ValueError(
            f"n_cells={n_cells} is too small for {n_conditions} conditions; give at least "
            f"{int(np.ceil(weights.sum()))} cells or set cells_per_condition."
        )
    return sizes


def simulate(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_cell_types: int = 3,
    n_single: int = 12,
    n_pairs: int = 8,
    n_drugs: int = 0,
    doses: Sequence[float] = (0.01, 0.1, 1.0),
    frac_no_effect: float = 0.2,
    cells_per_condition: int | None = None,
    library_size_median: float = 3000.0,
    seed: int = 0,
    *,
    n_programs: int = 10,
    library_size_sigma: float = 0.4,
    control_weight: float = 3.0,
    penetrance_sd: float = 0.15,
) -> ad.AnnData:
    """Simulate raw counts of a perturbation screen with a known ground truth.

    Cells come from ``n_cell_types`` cell types whose baseline log-mean expression is built from
    ``n_programs`` gene programs (sparse non-negative gene loadings, cell-type program activities
    and per-cell activity noise). A single-gene perturbation knocks its target gene down strongly
    and shifts a sparse set of downstream genes (one or two programs, weighted by their loadings,
    plus a few direct targets); a fraction ``frac_no_effect`` of them has no effect at all. Gene
    pairs ``"A+B"`` combine two effective singles with a known interaction type:

    * ``"additive"``: the sum of the two singles' shifts;
    * ``"synergistic"``: the summed downstream shift times a factor in [1.5, 2] plus an extra
      sparse shift;
    * ``"buffering"``: the summed downstream shift times a factor in [0.3, 0.5];
    * ``"epistatic"``: the downstream shift of one gene only (it masks the other).

    In every pair both target genes stay knocked down; the interaction acts on the downstream
    part of the shifts. Drugs act with ``hill(dose) * cell_type_scale * effect`` where
    ``hill(dose) = 1 / (1 + (EC50 / dose) ** h)`` with an EC50 per drug and cell type and one Hill
    coefficient ``h`` per drug.

    Counts are negative binomial with mean ``library_size * softmax(log_rates)`` and a per-gene
    dispersion; library sizes are log-normal with median ``library_size_median``. With the default
    depth about 73% of the entries are zero at 2000 genes (58% at 500, 82% at 5000 genes).

    Parameters
    ----------
    n_cells
        Total number of cells, shared out so that every condition gets about the same number of
        cells and the control ``control_weight`` times as many. Ignored when
        ``cells_per_condition`` is given.
    n_genes
        Number of genes, named ``"G0000"``, ``"G0001"``, ...
    n_cell_types
        Number of cell types, named ``"type_0"``, ``"type_1"``, ...
    n_single
        Number of perturbed genes (single-gene conditions). Targets are drawn among the third
        of the genes with the highest baseline expression.
    n_pairs
        Number of gene pairs, each made of two perturbed genes that have an effect. Interaction
        types are spread evenly over the four kinds.
    n_drugs
        Number of drugs; each is given at every dose of ``doses``.
    doses
        Doses at which every drug is applied (positive).
    frac_no_effect
        Fraction of the perturbed genes without any effect (rounded to a number of genes).
    cells_per_condition
        If given, the number of cells of every non-control condition (a drug at one dose is one
        condition); the control gets ``control_weight`` times as many.
    library_size_median
        Median number of UMIs per cell.
    seed
        Seed of the random generator; the same arguments and seed give an identical AnnData.
    n_programs
        Number of gene programs.
    library_size_sigma
        Standard deviation of the log library size.
    control_weight
        How many times more cells the control gets than another condition.
    penetrance_sd
        Standard deviation of the per-cell factor (mean 1, clipped to [0, 2]) that scales the
        shift of a perturbed cell.

    Returns
    -------
    AnnData with integer-valued ``float32`` CSR counts in ``X`` and ``layers["counts"]``, gene
    names in ``var_names`` and ``obs`` columns ``"perturbation"`` (``"ctrl"``, ``"G0012"``,
    ``"G0012+G0040"`` or a drug name), ``"cell_type"``, ``"dose"`` (0 except for drugs),
    ``"perturbation_type"`` (``"control"``, ``"single"``, ``"pair"``, ``"drug"``), ``"smiles"``
    (``""`` except for drugs) and ``"n_counts"``. ``uns["simulation"]`` holds the ground truth:

    * ``"params"``: the arguments;
    * ``"cell_types"``, ``"singles"``, ``"pairs"``, ``"no_effect"``: names;
    * ``"shifts"``: for every single and pair an array ``(n_cell_types, n_genes)`` with its true
      mean shift of the log-rates (before the softmax normalisation to the library size);
    * ``"interactions"``: pair -> interaction type; ``"pair_info"``: pair -> interaction,
      ``"scale"`` (factor on the summed downstream shifts, 1 if additive, 0 if epistatic) and
      ``"dominant"`` (the masking gene of an epistatic pair, else ``""``);
    * ``"drugs"``: drug -> ``"smiles"``, ``"ec50"`` (per cell type), ``"hill"``,
      ``"cell_type_scale"``, ``"effect"`` (full-response shift, per cell type) and ``"shifts"``
      ``(n_doses, n_cell_types, n_genes)``; ``"doses"``;
    * ``"baseline_log_rate"`` ``(n_cell_types, n_genes)``, ``"program_loadings"``,
      ``"cell_type_program_activity"`` and ``"dispersion"`` (NB inverse dispersion per gene).

    Examples
    --------
    >>> adata = simulate(n_cells=300, n_genes=100, n_single=4, n_pairs=2, seed=1)
    >>> adata.obs["perturbation_type"].cat.categories.tolist()
    ['control', 'single', 'pair']
    >>> pair = adata.uns["simulation"]["pairs"][0]
    >>> adata.uns["simulation"]["shifts"][pair].shape
    (3, 100)
    """
    # ---- argument checks ------------------------------------------------------------------
    if n_genes < 2 or n_cell_types < 1 or n_programs < 1:
        raise ValueError("n_genes must be >= 2 and n_cell_types, n_programs >= 1.")
    if n_single < 0 or n_pairs < 0 or n_drugs < 0:
        raise ValueError("n_single, n_pairs and n_drugs must be non-negative.")
    if not 0.0 <= frac_no_effect <= 1.0:
        raise ValueError(f"frac_no_effect must lie in [0, 1], got {frac_no_effect}.")
    if library_size_median <= 0 or library_size_sigma < 0:
        raise ValueError("library_size_median must be positive and library_size_sigma >= 0.")
    doses_arr = np.asarray(list(doses), dtype=float)
    if n_drugs > 0:
        if doses_arr.size == 0 or np.any(doses_arr <= 0):
            raise ValueError(f"doses must be a non-empty list of positive numbers, got {doses}.")
        if n_drugs > len(_MOLECULES):
            raise ValueError(f"At most {len(_MOLECULES)} drugs can be simulated, got {n_drugs}.")
    n_candidates = max(n_genes // 3, 1)
    if n_single > n_candidates:
        raise ValueError(
            f"n_single={n_single} is larger than the number of candidate target genes "
            f"({n_candidates}, a third of n_genes); lower n_single or raise n_genes."
        )

    rng = np.random.default_rng(seed)
    genes = _gene_names(n_genes)
    cell_types = np.array([f"type_{i}" for i in range(n_cell_types)], dtype=object)

    # ---- baseline: gene programs ------------------------------------------------------------
    # Baseline log-rate per gene: a broad log-normal bulk plus ~5% highly expressed
    # (housekeeping-like) genes.
    base = rng.normal(0.0, 2.0, size=n_genes)
    base += np.where(rng.random(n_genes) < 0.05, rng.normal(5.0, 0.5, size=n_genes), 0.0)
    # Highly expressed genes respond less (in log-fold) to programs and perturbations, so that
    # perturbations do not redistribute a large part of the library.
    responsiveness = 1.0 / (1.0 + np.exp(base - np.median(base) - 2.0))
    member = rng.random((n_programs, n_genes)) < 0.12
    loadings = np.where(
        member, np.minimum(rng.gamma(2.0, 0.4, size=(n_programs, n_genes)), 2.0), 0.0
    )
    loadings *= responsiveness[None, :]
    activity = rng.normal(0.0, 0.8, size=(n_cell_types, n_programs))
    raw = base[None, :] + activity @ loadings  # (T, G)
    # Soft cap so that no single gene takes a large share of the library.
    cap = np.median(base) + 6.0
    baseline = cap - np.logaddexp(0.0, cap - raw)
    # NB inverse dispersion: lowly expressed genes are more overdispersed.
    rel = baseline.mean(0) - np.median(baseline)
    theta = np.clip(np.exp(np.log(2.0) + 0.3 * rel + rng.normal(0.0, 0.5, size=n_genes)), 0.1, 100)
    type_lib = np.exp(rng.normal(0.0, 0.15, size=n_cell_types))

    # ---- single-gene perturbations ----------------------------------------------------------
    expressed = np.argsort(-baseline.mean(0), kind="stable")[:n_candidates]
    targets = np.sort(rng.choice(expressed, size=n_single, replace=False))
    n_none = int(round(frac_no_effect * n_single))
    no_effect_idx = np.sort(rng.choice(targets, size=n_none, replace=False))
    singles = [str(genes[g]) for g in targets]

    knockout: dict[str, np.ndarray] = {}
    downstream: dict[str, np.ndarray] = {}
    for g in targets:
        name = str(genes[g])
        ko = np.zeros((n_cell_types, n_genes))
        ds = np.zeros((n_cell_types, n_genes))
        if g not in no_effect_idx:
            ko[:, g] = np.log(rng.uniform(0.03, 0.15))
            ds = _downstream_effect(
                rng,
                loadings,
                responsiveness,
                n_cell_types,
                programs=(1, 2),
                program_strength=(0.6, 1.4),
                targets=(3, 8),
                target_strength=(0.5, 1.5),
                type_scale=(0.6, 1.4),
                exclude=(g,),
            )
            ds[:, g] = 0.0  # the knockout alone sets the level of the target gene
        knockout[name] = ko
        downstream[name] = ds
    shifts: dict[str, np.ndarray] = {s: knockout[s] + downstream[s] for s in singles}

    # ---- pairs ------------------------------------------------------------------------------
    effective = [str(genes[g]) for g in targets if g not in no_effect_idx]
    pool = effective if len(effective) >= 2 else singles
    all_pairs = [(a, b) for i, a in enumerate(pool) for b in pool[i + 1 :]]
    if n_pairs > len(all_pairs):
        raise ValueError(
            f"n_pairs={n_pairs} exceeds the {len(all_pairs)} possible pairs of perturbed genes "
            "with an effect; raise n_single or lower n_pairs / frac_no_effect."
        )
    chosen = np.sort(rng.choice(len(all_pairs), size=n_pairs, replace=False))
    kinds = rng.permutation(np.resize(np.array(INTERACTION_TYPES, dtype=object), n_pairs))
    pairs: list[str] = []
    interactions: dict[str, str] = {}
    pair_info: dict[str, dict[str, Any]] = {}
    for k, kind in zip(chosen, kinds, strict=True):
        a, b = all_pairs[int(k)]
        name = format_tokens((a, b))
        ko = knockout[a] + knockout[b]
        ds_sum = downstream[a] + downstream[b]
        dominant = ""
        if kind == "additive":
            scale = 1.0
            ds = ds_sum
        elif kind == "synergistic":
            scale = float(rng.uniform(1.5, 2.0))
            extra = _downstream_effect(
                rng,
                loadings,
                responsiveness,
                n_cell_types,
                programs=(1, 1),
                program_strength=(0.5, 1.0),
                targets=(2, 5),
                target_strength=(0.5, 1.0),
                type_scale=(0.8, 1.2),
            )
            ds = _soft_clip(scale * ds_sum + extra, 2 * _MAX_ABS_SHIFT)
        elif kind == "buffering":
            scale = float(rng.uniform(0.3, 0.5))
            ds = scale * ds_sum
        else:  # epistatic: one gene masks the other
            scale = 0.0
            dominant = a if rng.random() < 0.5 else b
            ds = downstream[dominant]
        pairs.append(name)
        shifts[name] = ko + ds
        interactions[name] = str(kind)
        pair_info[name] = {
            "interaction": str(kind),
            "genes": np.array([a, b], dtype=object),
            "scale": scale,
            "dominant": dominant,
        }

    # ---- drugs ------------------------------------------------------------------------------
    drugs: dict[str, dict[str, Any]] = {}
    drug_names: list[str] = []
    if n_drugs > 0:
        log_lo, log_hi = np.log10(doses_arr.min()), np.log10(doses_arr.max())
        mid, half = (log_lo + log_hi) / 2, max((log_hi - log_lo) / 4, 0.25)
        molecules = rng.choice(len(_MOLECULES), size=n_drugs, replace=False)
        for m in molecules:
            name, smiles = _MOLECULES[int(m)]
            effect = _downstream_effect(
                rng,
                loadings,
                responsiveness,
                n_cell_types,
                programs=(1, 3),
                program_strength=(0.6, 1.4),
                targets=(10, 30),
                target_strength=(0.4, 1.2),
                type_scale=(1.0, 1.0),
            )
            ec50 = 10.0 ** rng.uniform(mid - half, mid + half, size=n_cell_types)
            hill = float(rng.uniform(1.0, 2.5))
            type_scale = rng.uniform(0.4, 1.4, size=n_cell_types)
            full = type_scale[:, None] * effect
            dose_shifts = np.stack([_hill(d, ec50, hill)[:, None] * full for d in doses_arr])
            drug_names.append(name)
            drugs[name] = {
                "smiles": smiles,
                "ec50": ec50,
                "hill": hill,
                "cell_type_scale": type_scale,
                "effect": full.astype(np.float32),
                "shifts": dose_shifts.astype(np.float32),
            }

    # ---- conditions and cells ---------------------------------------------------------------
    # (perturbation, perturbation_type, dose, smiles, shift (T, G) or None)
    conditions: list[tuple[str, str, float, str, np.ndarray | None]] = [
        ("ctrl", "control", 0.0, "", None)
    ]
    conditions += [(s, "single", 0.0, "", shifts[s]) for s in singles]
    conditions += [(p, "pair", 0.0, "", shifts[p]) for p in pairs]
    for name in drug_names:
        for i, d in enumerate(doses_arr):
            conditions.append(
                (name, "drug", float(d), drugs[name]["smiles"], drugs[name]["shifts"][i])
            )
    sizes = _allocate_cells(n_cells, len(conditions), control_weight, cells_per_condition)
    total = int(sizes.sum())

    cond_idx = np.repeat(np.arange(len(conditions)), sizes)
    type_idx = np.concatenate([rng.permutation(np.arange(n) % n_cell_types) for n in sizes]).astype(
        np.int64
    )
    order = rng.permutation(total)
    cond_idx, type_idx = cond_idx[order], type_idx[order]

    shift_table = np.zeros((len(conditions), n_cell_types, n_genes), dtype=np.float32)
    for c, cond in enumerate(conditions):
        if cond[4] is not None:
            shift_table[c] = cond[4]
    perturbed = cond_idx > 0
    penetrance = np.where(
        perturbed, np.clip(rng.normal(1.0, penetrance_sd, size=total), 0.0, 2.0), 0.0
    ).astype(np.float32)
    library = library_size_median * type_lib[type_idx]
    library = library * np.exp(rng.normal(0.0, library_size_sigma, size=total))
    cell_noise = rng.normal(0.0, 0.3, size=(total, n_programs)).astype(np.float32)

    baseline32 = baseline.astype(np.float32)
    loadings32 = loadings.astype(np.float32)
    theta_row = theta[None, :]
    blocks = []
    for start in range(0, total, _CHUNK_CELLS):
        sl = slice(start, min(start + _CHUNK_CELLS, total))
        eta = baseline32[type_idx[sl]] + cell_noise[sl] @ loadings32
        eta += penetrance[sl, None] * shift_table[cond_idx[sl], type_idx[sl]]
        eta -= eta.max(axis=1, keepdims=True)
        rates = np.exp(eta, dtype=np.float64)
        mu = rates * (library[sl] / rates.sum(axis=1))[:, None]
        counts = rng.negative_binomial(theta_row, theta_row / (theta_row + mu))
        blocks.append(sparse.csr_matrix(counts.astype(np.float32)))
    X = sparse.vstack(blocks, format="csr", dtype=np.float32)
    X.sort_indices()

    # ---- AnnData ----------------------------------------------------------------------------
    def _categorical(values: np.ndarray, categories: Sequence[str]) -> pd.Categorical:
        present = set(values.tolist())
        return pd.Categorical(values, categories=[c for c in categories if c in present])

    pert_names = np.array([c[0] for c in conditions], dtype=object)
    pert_types = np.array([c[1] for c in conditions], dtype=object)
    smiles_arr = np.array([c[3] for c in conditions], dtype=object)
    dose_arr = np.array([c[2] for c in conditions], dtype=float)
    obs = pd.DataFrame(
        {
            "perturbation": _categorical(
                pert_names[cond_idx], list(dict.fromkeys(pert_names.tolist()))
            ),
            "cell_type": pd.Categorical(cell_types[type_idx], categories=list(cell_types)),
            "dose": dose_arr[cond_idx],
            "perturbation_type": _categorical(
                pert_types[cond_idx], ["control", "single", "pair", "drug"]
            ),
            "smiles": _categorical(smiles_arr[cond_idx], list(dict.fromkeys(smiles_arr))),
            "n_counts": np.asarray(X.sum(axis=1)).ravel().astype(np.float32),
        },
        index=pd.Index([f"cell_{i:06d}" for i in range(total)]),
    )
    var = pd.DataFrame(index=pd.Index(genes.tolist()))

    truth: dict[str, Any] = {
        "params": {
            "seed": int(seed),
            "n_cells": int(total),
            "n_genes": int(n_genes),
            "n_cell_types": int(n_cell_types),
            "n_programs": int(n_programs),
            "n_single": int(n_single),
            "n_pairs": int(n_pairs),
            "n_drugs": int(n_drugs),
            "doses": doses_arr,
            "frac_no_effect": float(frac_no_effect),
            "cells_per_condition": int(cells_per_condition or 0),
            "library_size_median": float(library_size_median),
            "library_size_sigma": float(library_size_sigma),
            "control_weight": float(control_weight),
            "penetrance_sd": float(penetrance_sd),
        },
        "cell_types": cell_types.astype(str),
        "singles": np.array(singles, dtype=str),
        "pairs": np.array(pairs, dtype=str),
        "no_effect": np.array([str(genes[g]) for g in no_effect_idx], dtype=str),
        "shifts": {k: v.astype(np.float32) for k, v in shifts.items()},
        "interactions": interactions,
        "pair_info": pair_info,
        "drugs": drugs,
        "doses": doses_arr,
        "baseline_log_rate": baseline.astype(np.float32),
        "program_loadings": loadings.astype(np.float32),
        "cell_type_program_activity": activity.astype(np.float32),
        "dispersion": theta.astype(np.float32),
    }
    adata = ad.AnnData(X=X, obs=obs, var=var, uns={"simulation": truth})
    adata.layers["counts"] = X.copy()
    return adata
