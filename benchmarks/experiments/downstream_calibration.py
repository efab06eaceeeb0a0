"""The calibration of cells that hold up downstream, chosen on the inner validation only.

Reads the inner validation's candidate scores written by ``defaults.py --scores`` (E-distance,
EMD and the share of the real top-20 DE genes found, for every candidate of every inner
condition; the fold's test conditions are never predicted) and compares calibration rules and
candidate sets. Each inner condition is scored with the choice of a calibration fitted on the
OTHER inner conditions of its fold and seed (leave one condition out); differences are paired
per condition and seed against the method (the first variant), with their standard error.

Variants:

- ``method``: the blends that keep cells (model's cells scaled, input cells scaled), every
  baseline (measured and shrunk), weights 0.25 to 1; the loss counts E-distance, EMD and DE
  genes missed; a candidate must beat the default by two SE and be worse on no metric by more
  than one SE.
- ``with weight 0``: also the weight 0 of both blends (the baseline's means on the model's or
  the input's cells).
- ``no DE term``: the loss of E-distance and EMD only (the guard on them alone).
- ``no guard``: no per-metric guard.
- ``scaled only``: the model's cells only (no input blend).
- ``measured only``: no shrunk baseline.
- ``3 SE``: a margin of three standard errors.
- ``default``: always the kind's equal-weight blend (no choice).
- ``model alone``: the diffusion model (weight 1).

Also per task kind and variant: how often a fold's kinds get the same candidate at all three
training seeds (each seed has its own inner split and inner model), or candidates whose
scores are within noise of each other.

Usage::

    python benchmarks/experiments/downstream_calibration.py benchmarks/experiments/downstream/scores_*.csv.gz
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scdoloris.model._calibration import BLENDS, MEASURED, Calibration, is_candidate

# benchmarks/ is a folder of scripts, not a package: its modules (run.py, tasks.py,
# _machine.py) are imported from there; this folder's own are beside the script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from _machine import run_record  # noqa: E402

KEY = ["task", "fold", "seed"]
METRICS = {"E": "e_distance", "EMD": "emd", "DE": "de_overlap"}


def _candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """The method's candidates: weights 0.25 to 1 (the scores also hold weight 0)."""
    return frame[(frame["weight"] > 0) | (frame["blend"] == "cells")]


VARIANTS = {
    "method": {"rows": _candidates},
    "with weight 0": {},
    "no DE term": {"rows": _candidates, "metrics": ("e_distance", "emd")},
    "no guard": {"rows": _candidates, "no_worse_se": np.inf},
    "scaled only": {"rows": _candidates, "blends": ("scaled",)},
    "measured only": {"rows": lambda f: _candidates(f[f["baseline"].isin(MEASURED)])},
    "3 SE": {"rows": _candidates, "clear_se": 3.0},
    "default": {"rows": _candidates, "clear_se": np.inf},
}


def _fit(frame: pd.DataFrame, options: dict) -> Calibration:
    options = dict(options)
    rows = options.pop("rows", None)
    if rows is not None:
        frame = rows(frame)
    blends = options.pop("blends", BLENDS)
    return Calibration.fit(frame, blends, **options)


def held_out(scores: pd.DataFrame, options: dict) -> pd.DataFrame:
    """Per inner condition of one fold-seed: the choice fitted on the other conditions and
    its scores on this one."""
    rows = []
    for cond, frame in scores.groupby("condition"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choice = _fit(scores[scores["condition"] != cond], options).choice(
                frame["kind"].iloc[0]
            )
        held = frame[is_candidate(frame, choice)].iloc[0]
        rows.append(
            {"condition": cond, "kind": held["kind"], "choice": " ".join(map(str, choice))}
            | {m: held[c] for m, c in METRICS.items()}
        )
    return pd.DataFrame(rows)


def model_alone(scores: pd.DataFrame) -> pd.DataFrame:
    alone = scores[(scores["weight"] == 1.0) & (scores["blend"] == BLENDS[0])]
    alone = alone.drop_duplicates("condition")
    out = alone[["condition", "kind", *METRICS.values()]].rename(
        columns={c: m for m, c in METRICS.items()}
    )
    return out.assign(choice="model alone")


def compare(scores: pd.DataFrame) -> pd.DataFrame:
    """Every variant's held-out choices and scores, per inner condition and fold-seed."""
    parts = []
    for tags, frame in scores.groupby(KEY):
        frame, where = frame.drop(columns=KEY), dict(zip(KEY, tags, strict=True))
        for name, options in VARIANTS.items():
            parts.append(held_out(frame, options).assign(variant=name, **where))
        parts.append(model_alone(frame).assign(variant="model alone", **where))
    return pd.concat(parts, ignore_index=True)


def _loss(frame: pd.DataFrame) -> pd.Series:
    """Per row, the calibration's summed loss (E, EMD, DE missed, each over its mean)."""
    e = frame["e_distance"] / frame["e_distance"].mean()
    m = frame["emd"] / frame["emd"].mean()
    miss = 1.0 - frame["de_overlap"]
    return e + m + miss / max(miss.mean(), 1e-12)


def stability(scores: pd.DataFrame, options: dict) -> pd.DataFrame:
    """Per task kind: the share of (fold, kind) whose choice (fitted on all of a fold-seed's
    inner conditions) is the same at every training seed, and the share where it is the same
    or every two choices score within noise of each other (paired over the inner conditions
    of the fold's three seeds, the loss difference within two standard errors)."""
    rows = []
    for (task, fold, seed), frame in scores.groupby(KEY):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal = _fit(frame.drop(columns=KEY), options)
        for kind in set(frame["kind"]):
            rows.append((task, fold, seed, kind, cal.choice(kind)))
    table = pd.DataFrame(rows, columns=["task", "fold", "seed", "kind", "choice"])
    out = []
    for (task, fold, kind), sub in table.groupby(["task", "fold", "kind"]):
        choices = list(dict.fromkeys(sub["choice"]))
        within = True
        frame = scores[(scores["task"] == task) & (scores["fold"] == fold)]
        frame = frame[frame["kind"] == kind].assign(loss=lambda f: _loss(f))
        for i, a in enumerate(choices):
            for b in choices[i + 1 :]:
                la = frame[is_candidate(frame, a)].set_index(["seed", "condition"])["loss"]
                lb = frame[is_candidate(frame, b)].set_index(["seed", "condition"])["loss"]
                d = (la - lb).dropna()
                if len(d) > 1 and abs(d.mean()) > 2 * d.std(ddof=1) / np.sqrt(len(d)):
                    within = False
        out.append((task, len(choices) == 1, within))
    frame = pd.DataFrame(out, columns=["task", "same", "within noise"])
    return frame.groupby("task").mean()


def summary(table: pd.DataFrame, stable: dict[str, pd.DataFrame]) -> pd.DataFrame:
    variants = list(dict.fromkeys(table["variant"]))
    wide = table.pivot_table(
        index=["task", "seed", "fold", "condition"], columns="variant", values=list(METRICS)
    )
    rows = []
    for task, q in wide.groupby(level="task"):
        row = {"task kind": task, "n": len(q)}
        for v, st in stable.items():
            row[f"stable: {v}"] = (
                f"{st.loc[task, 'same']:.0%} same, {st.loc[task, 'within noise']:.0%} within noise"
            )
        for m in METRICS:
            digits = 5 if m == "EMD" else 4
            for v in variants:
                row[f"{m} {v}"] = f"{q[(m, v)].mean():.{digits}f}"
            for v in variants[1:]:
                d = q[(m, v)] - q[(m, variants[0])]
                se = d.std(ddof=1) / np.sqrt(len(d))
                row[f"Δ{m} {v}"] = f"{d.mean():+.{digits}f} ± {se:.{digits}f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("task kind")


def main(argv: list[str] | None = None) -> int:
    info = run_record(run._command(argv))
    paths = sys.argv[1:] if argv is None else argv
    scores = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    if "de_overlap" not in scores:
        raise SystemExit(f"{' '.join(paths)}: no de_overlap column (scores before this study)")
    scores = scores[[c for c in scores.columns if c not in ("train", "predict")]]
    table = compare(scores)
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    stable = {v: stability(scores, options) for v, options in VARIANTS.items()}
    print(summary(table, stable).T.to_markdown())
    chosen = table[table["variant"] == "method"]
    print("\nChoices of the method (held out), per task kind:")
    for task, sub in chosen.groupby("task"):
        counts = sub["choice"].value_counts().head(6)
        print(f"- {task}: " + ", ".join(f"{k} ({n})" for k, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
