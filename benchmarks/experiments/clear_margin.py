"""The calibration's margin (``CLEAR_SE``) compared on inner scores only.

The calibration keeps a kind's default blend unless another candidate is better on the kind's
inner conditions by more than ``CLEAR_SE`` standard errors (``scdoloris.model._calibration``).
About 37 candidates are tested per kind, so a small margin lets chance move a kind. This script
fits the calibration with several margins on the candidates' inner scores that
``defaults.py --scores`` writes (the benchmark's test conditions are never read), each inner
condition scored with the choice of a calibration fitted on the OTHER inner conditions of its
fold and seed (``defaults.held_out_choices``), and prints per task kind each margin's mean
E-distance and EMD with its paired difference from the margin ``--reference`` (± SE).

Usage::

    python benchmarks/experiments/clear_margin.py benchmarks/experiments/shrink/scores_*.csv.gz
"""

from __future__ import annotations

import argparse
import sys
import warnings
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

KEY = ["task", "fold", "seed"]


def compare(scores: pd.DataFrame, margins: list[float]) -> pd.DataFrame:
    """Per inner condition and margin: the held-out choice and its scores."""
    rows = []
    for tags, frame in scores.groupby(KEY):
        kinds = frame.groupby("condition")["kind"].first()
        for value in margins:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loo = held_out_choices(frame.drop(columns=KEY), clear_se=value)
            loo = loo.rename_axis("condition").reset_index()
            loo["kind"] = loo["condition"].map(kinds)
            rows.append(loo.assign(**dict(zip(KEY, tags, strict=True)), margin=value))
    return pd.concat(rows, ignore_index=True)


def summary(table: pd.DataFrame, reference: float) -> pd.DataFrame:
    """Per task kind and margin: mean E and EMD, the paired difference from ``reference``
    (± SE) and the share of inner conditions whose choice is not the kind's default blend
    (its measured baseline at weight 0.5, scaled)."""
    wide = table.pivot_table(
        index=["task", "seed", "fold", "condition"], columns="margin", values=["e_distance", "emd"]
    )
    default = table["kind"].map(_calibration.DEFAULT_BASELINE)
    table = table.assign(
        moved=(table["baseline"] != default)
        | (table["weight"] != _calibration.PRIOR_WEIGHT)
        | (table["blend"] != _calibration.BLENDS[0])
    )
    rows = []
    for (task, value), q in table.groupby(["task", "margin"]):
        w = wide.loc[task]
        row = {"task kind": task, "margin (SE)": value, "n": len(q)}
        for metric, label in (("e_distance", "E"), ("emd", "EMD")):
            d = w[(metric, value)] - w[(metric, reference)]
            row[label] = f"{w[(metric, value)].mean():.4f}"
            row[f"Δ {label}"] = f"{d.mean():+.5f} ± {d.std(ddof=1) / np.sqrt(len(d)):.5f}"
        row["moved from the default"] = f"{q['moved'].mean():.0%}"
        rows.append(row)
    return pd.DataFrame(rows).set_index(["task kind", "margin (SE)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", help="csv(.gz) files of defaults.py --scores")
    parser.add_argument("--margins", default="0.5,1,1.5,2,2.5,3")
    parser.add_argument("--reference", type=float, default=1.0)
    args = parser.parse_args(argv)
    info = run_record(run._command(argv))
    margins = sorted({float(m) for m in args.margins.split(",")} | {args.reference})
    scores = pd.concat([pd.read_csv(p) for p in args.scores], ignore_index=True)
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    print(summary(compare(scores, margins), args.reference).to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
