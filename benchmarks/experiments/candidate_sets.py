"""Calibrations with different candidate sets, compared on the inner validation.

The shared part of the studies that ask whether the calibration chooses better with other
candidates (``shrunk_baselines.py``, ``input_blend.py``). Each reads the inner validation's
candidate scores written by ``defaults.py --scores`` (the fold's test conditions are never
predicted) and splits every fold-seed's scores into named candidate sets, the first the
reference. Each inner condition is scored with the choice of a calibration fitted on the OTHER
inner conditions of its fold and seed (leave one condition out, as ``defaults.py``'s
"calibrated LOO"); differences are paired per condition and seed, against the first set, with
their standard error.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

# benchmarks/ is a folder of scripts, not a package: its modules (run.py, tasks.py,
# _machine.py) are imported from there; this folder's own are beside the script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from _machine import run_record  # noqa: E402
from defaults import held_out_choices  # noqa: E402

KEY = ["task", "fold", "seed"]
Sets = Callable[[pd.DataFrame], dict[str, pd.DataFrame]]  # one fold-seed's scores, by set


def compare(scores: pd.DataFrame, candidate_sets: Sets) -> pd.DataFrame:
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


def summary(
    table: pd.DataFrame, chose: str, marks: Callable[[pd.DataFrame], pd.Series]
) -> pd.DataFrame:
    """Per task kind: mean E-distance and EMD per set, each later set minus the first (± SE;
    the last per seed too), and the share of the last set's choices that ``marks`` marks
    (column ``"<last set> chose <chose>"``)."""
    sets = list(dict.fromkeys(table["set"]))
    first, last = sets[0], sets[-1]
    wide = table.pivot_table(
        index=["task", "seed", "fold", "condition"], columns="set", values=["e_distance", "emd"]
    )
    rows = []
    for task, q in wide.groupby(level="task"):
        row = {"task kind": task, "n": len(q)}
        for metric, label in (("e_distance", "E"), ("emd", "EMD")):
            for name in sets:
                row[f"{label} {name}"] = f"{q[(metric, name)].mean():.4f}"
            for name in sets[1:]:
                d = q[(metric, name)] - q[(metric, first)]
                se = d.std(ddof=1) / np.sqrt(len(d))
                row[f"Δ {label} {name}"] = f"{d.mean():+.5f} ± {se:.5f}"
            d = q[(metric, last)] - q[(metric, first)]
            seeds = d.groupby(level="seed").mean()
            row[f"Δ {label} {last} per seed"] = " / ".join(f"{v:+.4f}" for v in seeds)
        chosen = table[(table["task"] == task) & (table["set"] == last)]
        row[f"{last} chose {chose}"] = f"{marks(chosen).mean():.0%}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("task kind")


def report(
    argv: list[str] | None,
    candidate_sets: Sets,
    chose: str,
    marks: Callable[[pd.DataFrame], pd.Series],
    needs: Callable[[pd.DataFrame], str | None],
) -> int:
    """Read the score files named in ``argv``, print the command, commit, machine and the
    :func:`summary` as a markdown table. ``needs`` returns what the scores lack (or None)."""
    info = run_record(run._command(argv))
    paths = sys.argv[1:] if argv is None else argv
    scores = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    missing = needs(scores)
    if missing:
        raise SystemExit(f"{' '.join(paths)}: {missing}")
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    print(summary(compare(scores, candidate_sets), chose, marks).T.to_markdown())
    return 0
