"""The input blend in the calibration: candidate sets with and without it, on the inner validation.

The calibration (``DolorisModel.train``) chooses a baseline, a weight of the model and a blend
per kind of condition on held-out TRAINING conditions. The blend ``"input"`` scales the input
cells, not the model's, to the blended means (``scdoloris.model._calibration.blend``). This
script scores, on the inner validation's candidate scores written by ``defaults.py --scores``
(the fold's test conditions are never predicted), the calibration fitted with:

- ``without input``: the candidates before the input blend (scaled and cell-by-cell blends);
- ``input at 0 and 1``: the input blend added at weights 0 and 1 only;
- ``with input``: the input blend at every weight (the method).

Each inner condition is scored with the choice of a calibration fitted on the OTHER inner
conditions of its fold and seed (leave one condition out, as ``defaults.py``'s "calibrated
LOO"). Differences are paired per condition and seed, against ``without input``, with their
standard error.

Usage::

    python benchmarks/defaults.py --tasks ... --seeds 0,1,2 --scores scores.csv
    python benchmarks/input_blend.py benchmarks/input/scores_*.csv.gz
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import run
from _machine import run_record
from defaults import held_out_choices

KEY = ["task", "fold", "seed"]
SETS = ("without input", "input at 0 and 1", "with input")


def candidate_sets(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One fold-seed's candidate scores as the three calibrations of the module docstring."""
    other = scores["blend"] != "input"
    ends = scores[other | scores["weight"].isin([0.0, 1.0])]
    return dict(zip(SETS, (scores[other], ends, scores), strict=True))


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
    """Per task kind: mean E-distance and EMD per set, and each set minus ``without input``."""
    wide = table.pivot_table(
        index=["task", "seed", "fold", "condition"], columns="set", values=["e_distance", "emd"]
    )
    rows = []
    for task, q in wide.groupby(level="task"):
        row = {"task kind": task, "n": len(q)}
        for metric, label in (("e_distance", "E"), ("emd", "EMD")):
            for name in SETS:
                row[f"{label} {name}"] = f"{q[(metric, name)].mean():.4f}"
            for name in SETS[1:]:
                d = q[(metric, name)] - q[(metric, SETS[0])]
                se = d.std(ddof=1) / np.sqrt(len(d))
                row[f"Δ {label} {name}"] = f"{d.mean():+.5f} ± {se:.5f}"
            d = q[(metric, SETS[-1])] - q[(metric, SETS[0])]
            seeds = d.groupby(level="seed").mean()
            row[f"Δ {label} with input per seed"] = " / ".join(f"{v:+.4f}" for v in seeds)
        chosen = table[(table["task"] == task) & (table["set"] == SETS[-1])]
        row["with input chose it"] = f"{(chosen['blend'] == 'input').mean():.0%}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("task kind")


def main(argv: list[str] | None = None) -> int:
    info = run_record(run._command(argv))
    paths = sys.argv[1:] if argv is None else argv
    scores = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    assert (scores["blend"] == "input").any(), "scores without the input blend"
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    print(summary(compare(scores)).T.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
