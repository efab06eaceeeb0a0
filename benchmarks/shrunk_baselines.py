"""Shrunk baselines in the calibration: three candidate sets compared on the inner validation.

The calibration (``DolorisModel.train``) chooses a baseline and a weight of the model per kind
of condition on held-out TRAINING conditions. Its baselines move the input cells by the mean
changes measured in training; each may also come shrunk toward no change by its sampling noise
(``scdoloris.baselines.shrink_change``: names ending in ``" (shrunk)"``). This script scores, on
the inner validation's candidate scores written by ``defaults.py --scores`` (the fold's test
conditions are never predicted), the calibration fitted with:

- ``measured``: the measured changes only (the method before shrunk baselines);
- ``shrunk only``: every measured change replaced by its shrunk one;
- ``both``: both as candidates (the method), the default candidate unchanged.

Each inner condition is scored with the choice of a calibration fitted on the OTHER inner
conditions of its fold and seed (leave one condition out, as ``defaults.py``'s "calibrated
LOO"). Differences are paired per condition and seed, against ``measured``, with their
standard error.

Usage::

    python benchmarks/defaults.py --tasks ... --seeds 0,1,2 --scores scores.csv
    python benchmarks/shrunk_baselines.py benchmarks/shrink/scores_*.csv.gz
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import run
from _machine import run_record
from defaults import held_out_choices

from scdoloris.model._calibration import MEASURED, SHRUNK

KEY = ["task", "fold", "seed"]


def candidate_sets(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One fold-seed's candidate scores as the three calibrations of the module docstring."""
    shrunk = scores["baseline"].str.endswith(SHRUNK)
    measured = scores[~shrunk]
    replaced = measured[(measured["baseline"] == "NoChange") | (measured["weight"] == 1.0)]
    renamed = scores[shrunk].assign(baseline=scores.loc[shrunk, "baseline"].str[: -len(SHRUNK)])
    return {
        "measured": measured,
        "shrunk only": pd.concat([replaced, renamed]),
        "both": scores,
    }


def compare(scores: pd.DataFrame) -> pd.DataFrame:
    """Per inner condition and candidate set: the held-out choice and its scores."""
    rows = []
    for tags, frame in scores.groupby(KEY):
        for name, cands in candidate_sets(frame.drop(columns=KEY)).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loo = held_out_choices(cands)
            loo = loo.rename_axis("condition").reset_index()
            rows.append(loo.assign(**dict(zip(KEY, tags, strict=True)), set=name))
    return pd.concat(rows, ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per task kind: mean E-distance and EMD per set, and each set minus ``measured``."""
    wide = table.pivot_table(
        index=["task", "seed", "fold", "condition"], columns="set", values=["e_distance", "emd"]
    )
    rows = []
    for task, q in wide.groupby(level="task"):
        row = {"task kind": task, "n": len(q)}
        for metric, label in (("e_distance", "E"), ("emd", "EMD")):
            for name in ("measured", "shrunk only", "both"):
                row[f"{label} {name}"] = f"{q[(metric, name)].mean():.4f}"
            for name in ("shrunk only", "both"):
                d = q[(metric, name)] - q[(metric, "measured")]
                se = d.std(ddof=1) / np.sqrt(len(d))
                row[f"Δ {label} {name}"] = f"{d.mean():+.5f} ± {se:.5f}"
            d = q[(metric, "both")] - q[(metric, "measured")]
            seeds = d.groupby(level="seed").mean()
            row[f"Δ {label} both per seed"] = " / ".join(f"{v:+.4f}" for v in seeds)
        both = table[(table["task"] == task) & (table["set"] == "both")]
        row["both chose a shrunk baseline"] = f"{both['baseline'].str.endswith(SHRUNK).mean():.0%}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("task kind")


def main(argv: list[str] | None = None) -> int:
    info = run_record(run._command(argv))
    paths = sys.argv[1:] if argv is None else argv
    scores = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    assert set(MEASURED) <= set(scores["baseline"]), "scores without the measured baselines"
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    print(summary(compare(scores)).T.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
