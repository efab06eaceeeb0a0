"""Compare the calibration's choice rule with its first version, offline, on inner scores only.

The calibration (``scdoloris.model._calibration.Calibration.fit``) keeps the equal-weight blend
unless another candidate is better on a kind's inner conditions by more than ``CLEAR_SE``
standard errors (one when this comparison was made, two since: ``clear_margin.py``).
Its first version tested only the candidate with the lowest mean loss (``lowest_mean_only``
below, at one standard error); the rule now takes, of the candidates that pass the test, the
one with the lowest mean.
Both rules are scored here leave one inner condition out (``defaults.held_out_choices``) on the
candidates' inner scores that ``defaults.py --scores`` writes: the benchmark's test conditions
are never read.

Usage::

    python benchmarks/experiments/defaults.py --tasks papalexi_replicate --seeds 0,1,2 --scores inner.csv
    python benchmarks/experiments/calibration_rule.py inner.csv [more.csv ...]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from scdoloris.model import _calibration

# benchmarks/ is a folder of scripts, not a package: its modules (run.py, tasks.py,
# _machine.py) are imported from there; this folder's own are beside the script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from _machine import run_record  # noqa: E402
from defaults import held_out_choices  # noqa: E402


def lowest_mean_only(frame: pd.DataFrame, kind: str, *args, **rule) -> tuple[str, float, str]:
    """The first version of ``_calibration._choose``: the candidate with the lowest mean loss
    replaces the default when its paired gain is more than one standard error, else the
    default stays (even when another candidate's gain is clear). It takes the current rule's
    arguments (``blends``, ``clear_se``, ...) and ignores them."""
    default = _calibration._default_candidate(frame, kind)
    table = _calibration._loss_table(frame)
    if default not in table.columns or len(table) < _calibration.MIN_EVIDENCE:
        return default
    best = min(table.columns, key=lambda c: (round(float(table[c].mean()), 9), c != default, c[1]))
    gain = (table[default] - table[best]).to_numpy()
    if best != default and gain.mean() > gain.std(ddof=1) / np.sqrt(len(table)):
        return str(best[0]), float(best[1]), str(best[2])
    return default


@contextlib.contextmanager
def rule(choose):
    """``Calibration.fit`` with another choice rule inside the block."""
    current = _calibration._choose
    _calibration._choose = choose
    try:
        yield
    finally:
        _calibration._choose = current


def compare(scores: pd.DataFrame) -> pd.DataFrame:
    """Per inner condition and run: the held-out scores of the current and the first rule."""
    rows = []
    keys = [k for k in ("task", "fold", "seed", "train", "predict") if k in scores]
    for key, frame in scores.groupby(keys, dropna=False):
        current = held_out_choices(frame)
        with rule(lowest_mean_only):
            first = held_out_choices(frame)
        both = current.join(first, lsuffix=" current", rsuffix=" first")
        rows.append(both.assign(**dict(zip(keys, key, strict=True))))
    return pd.concat(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per task kind: mean of each rule, the paired difference ± SE, the share of choices that
    differ."""
    out = {}
    for task, t in table.groupby("task"):
        row = {"conditions": len(t)}
        for metric in ("e_distance", "emd"):
            diff = t[f"{metric} current"] - t[f"{metric} first"]
            name = "E" if metric == "e_distance" else "EMD"
            row[f"{name} current"] = t[f"{metric} current"].mean()
            row[f"{name} first"] = t[f"{metric} first"].mean()
            row[f"Δ {name}"] = diff.mean()
            row[f"SE Δ {name}"] = diff.std(ddof=1) / np.sqrt(len(t))
            row[f"Δ {name} per seed"] = " ".join(
                f"{v:+.4f}" for v in diff.groupby(t["seed"]).mean()
            )
        cols = ("baseline", "weight", "blend")
        changed = np.zeros(len(t), dtype=bool)
        for c in cols:
            changed |= (t[f"{c} current"] != t[f"{c} first"]).to_numpy()
        row["choices changed"] = changed.mean()
        out[task] = row
    return pd.DataFrame.from_dict(out, orient="index")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", nargs="+", help="CSVs written by defaults.py --scores")
    args = parser.parse_args(argv)
    scores = pd.concat([pd.read_csv(p, keep_default_na=False) for p in args.scores])
    for col in ("weight", "e_distance", "emd"):
        scores[col] = scores[col].astype(float)
    info = run_record(run._command(argv))
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(summarise(compare(scores)).to_string(float_format=lambda x: f"{x:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
