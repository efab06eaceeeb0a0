"""Validation splits carved from the benchmark's training cells, for choosing Doloris's defaults.

The held-out conditions of :mod:`protocols` are the test: no default may be chosen by looking
at them. This script builds, from each protocol's TRAINING cells only, a validation split of
the same kind, trains Doloris on the rest and scores prediction options and baselines on it:

``norman``
    Hold out the training pairs SAMD1+PTPN12 and CNN1+MAPK1 (the pairs whose two genes are
    both tokens of other training conditions, as in the test pairs).
``papalexi``
    Hold out the training targets STAT1, UBE2L6 and TNFRSF14 (targets that are measured
    genes, as the test's are).
``kang``
    Hold out the stimulated cells of one more cell type (fold ``CD4 T cells``,
    ``CD8 T cells`` or ``FCGR3A+ Monocytes``), as the test holds out CD14+ Monocytes and B
    cells. (Session 3's figures used the CD4 T and FCGR3A+ folds only; ``--kang-folds``
    chooses.)

In each, the training controls (of the held-out cell type for ``kang``) are halved again: one
half trains, the other half is the input, as in :mod:`protocols`.

Usage::

    python benchmarks/validate.py                                 # every protocol, defaults
    python benchmarks/validate.py --protocols kang --options "depth=0.5" "start=noise"
    python benchmarks/validate.py --model prior=none --options "residual=none"

``--options`` lists prediction settings to compare (each a comma-separated ``key=value`` list
of :meth:`~scdoloris.DolorisModel.predict` arguments, or ``module.NAME=value`` to set a module
attribute for that prediction, e.g. ``module.unseen_prior=none``; ``""`` is the default);
``--model``
passes module keyword arguments to the trained model, ``--train`` arguments of
:meth:`~scdoloris.DolorisModel.train` (e.g. ``lr_schedule=cosine``). Values are parsed as
Python literals when they are ones (``0.5``, ``None``), else kept as strings.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import protocols
from _machine import run_record
from protocols import Condition, Split, halves
from run import (
    Config,
    Predictions,
    _doloris_predictor,
    _quiet,
    predict_blocks,
    run_baseline,
    score_run,
    train_doloris,
)

VALIDATION_PAIRS = ("SAMD1+PTPN12", "CNN1+MAPK1")
VALIDATION_TARGETS = ("STAT1", "UBE2L6", "TNFRSF14")
VALIDATION_CELL_TYPES = ("CD4 T cells", "CD8 T cells", "FCGR3A+ Monocytes")
FOLDS = {
    "norman": [VALIDATION_PAIRS],
    "papalexi": [VALIDATION_TARGETS],
    "kang": [(ct,) for ct in VALIDATION_CELL_TYPES],
}


def carve_perturbations(split: Split, held_out: tuple[str, ...], seed: int) -> Split:
    """Validation split of a perturbation protocol: ``held_out`` training conditions.

    Parameters
    ----------
    split
        The protocol's split (only its ``train`` cells are used).
    held_out
        Training perturbations to hold out.
    seed
        Seed of the control halves.

    Returns
    -------
    The validation :class:`~protocols.Split`.
    """
    setup, adata = split.setup, split.train
    labels = adata.obs[setup["perturbation_key"]].astype(str).to_numpy()
    missing = sorted(set(held_out) - set(labels))
    if missing:
        raise ValueError(f"Validation conditions {missing} are not in the training cells.")
    controls = np.flatnonzero(labels == setup["control_group"])
    first, second = halves(np.zeros(len(controls)), np.random.default_rng(seed))
    keep = ~np.isin(labels, held_out) & (labels != setup["control_group"])
    train_rows = np.sort(np.concatenate([np.flatnonzero(keep), controls[first]]))
    return Split(
        adata[train_rows].copy(),
        adata[controls[second]].copy(),
        adata[np.isin(labels, held_out)].copy(),
        [Condition(p, p, None) for p in held_out],
        setup,
    )


def carve_cell_types(split: Split, held_out: tuple[str, ...], seed: int) -> Split:
    """Validation split of the cell-type protocol: the perturbed cells of ``held_out`` types.

    Parameters
    ----------
    split
        The protocol's split (only its ``train`` cells are used).
    held_out
        Cell types whose perturbed training cells are held out.
    seed
        Seed of the control halves.

    Returns
    -------
    The validation :class:`~protocols.Split`.
    """
    setup, adata = split.setup, split.train
    group = adata.obs[setup["perturbation_key"]].astype(str).to_numpy()
    cell_type = adata.obs[setup["cell_type_key"]].astype(str).to_numpy()
    is_ctrl = group == setup["control_group"]
    held = np.isin(cell_type, held_out)
    held_ctrl = np.flatnonzero(held & is_ctrl)
    first, second = halves(cell_type[held_ctrl], np.random.default_rng(seed))
    train_rows = np.sort(np.concatenate([np.flatnonzero(~held), held_ctrl[first]]))
    perts = sorted(set(group[held & ~is_ctrl]))
    conditions = [Condition(f"{p} | {ct}", p, ct) for ct in held_out for p in perts]
    return Split(
        adata[train_rows].copy(),
        adata[np.sort(held_ctrl[second])].copy(),
        adata[np.flatnonzero(held & ~is_ctrl)].copy(),
        conditions,
        setup,
    )


def validation_splits(
    name: str, seed: int = protocols.SPLIT_SEED, folds: list[tuple[str, ...]] | None = None
) -> list[Split]:
    """The validation folds of one protocol (see the module docstring; ``folds`` replaces
    the protocol's default held-out sets)."""
    split = protocols.PROTOCOLS[name]()
    if name == "kang" and folds:
        known = set(split.train.obs[split.setup["cell_type_key"]].astype(str))
        unknown = sorted({ct for held in folds for ct in held} - known)
        if unknown:
            raise ValueError(f"Unknown kang cell types {unknown}; choose from {sorted(known)}.")
    carve = carve_cell_types if name == "kang" else carve_perturbations
    return [carve(split, held, seed) for held in folds or FOLDS[name]]


def parse_settings(text: str) -> dict:
    """``"depth=0.5,start=noise"`` to ``{"depth": 0.5, "start": "noise"}``."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Expected key=value, got {item!r}.")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def validate(
    name: str,
    options: list[str],
    model_kwargs: dict,
    seeds: list[int],
    baselines: bool,
    folds: list[tuple[str, ...]] | None = None,
    train_kwargs: dict | None = None,
) -> pd.DataFrame:
    """Train on every validation fold of ``name`` and score each prediction option.

    Returns
    -------
    One row per (method, seed, condition) with all metrics of :func:`run.score`.
    """
    config = Config(protocols=[name], seeds=seeds, methods=[], out=Path("."))
    rows = []
    for split in validation_splits(name, folds=folds):
        print(f"[{name}] held out {[c.name for c in split.conditions]}: train {split.train.n_obs}")
        for seed in seeds:
            model, train_s = train_doloris(split, config, model_kwargs, seed, train_kwargs)
            print(f"  seed {seed}: trained in {train_s:.1f} s")
            for text in options:
                predict = _doloris_predictor(model, seed, parse_settings(text))
                blocks, seconds, genes = predict_blocks(split, predict)
                method = f"Doloris {text}" if text else "Doloris"
                pred = Predictions(blocks, genes, train_s, seconds)
                rows += score_run(split, name, method, seed, pred)
        if baselines:
            has_pairs = any("+" in c.perturbation for c in split.conditions)
            for baseline in ("NoChange", "MeanShift", "Additive", "LinearBaseline"):
                if baseline == "Additive" and not has_pairs:
                    continue
                try:
                    pred = run_baseline(split, baseline)
                except ValueError as err:  # Additive without both singles in training
                    print(f"  {baseline}: not applicable ({err})")
                    continue
                rows += score_run(split, name, baseline, None, pred)
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(summary(pd.DataFrame(rows)), flush=True)
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean E-distance and EMD per protocol and method, and E per condition."""
    mean = results.groupby(["protocol", "method"], sort=False)[["e_distance", "emd"]].mean()
    per = results.pivot_table(
        index=["protocol", "method"], columns="condition", values="e_distance", sort=False
    )
    return mean.join(per.add_prefix("E ")).round(4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="+", default=list(FOLDS), choices=list(FOLDS))
    parser.add_argument("--options", nargs="+", default=[""], help="prediction settings")
    parser.add_argument("--model", default="", help="module keyword arguments, key=value,...")
    parser.add_argument("--train", default="", help="DolorisModel.train arguments, key=value,...")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--kang-folds",
        nargs="+",
        default=None,
        help=f"kang: the cell types held out, one fold each (default {VALIDATION_CELL_TYPES})",
    )
    args = parser.parse_args(argv)

    import scvi

    # scvi-tools' setting: torch's count, and the one DolorisModel respects (issue #17)
    scvi.settings.num_threads = args.threads
    _quiet()
    start = time.perf_counter()
    results = pd.concat(
        [
            validate(
                p,
                args.options,
                parse_settings(args.model),
                args.seeds,
                not args.no_baselines,
                [(ct,) for ct in args.kang_folds] if args.kang_folds and p == "kang" else None,
                parse_settings(args.train),
            )
            for p in args.protocols
        ]
    )
    command = " ".join(["python benchmarks/validate.py", *(argv or sys.argv[1:])])
    print(f"\n{run_record(command)}\nseconds: {time.perf_counter() - start:.0f}")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(summary(results))
    if args.csv is not None:
        results.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
