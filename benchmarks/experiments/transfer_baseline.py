"""How much the transfer baseline loses when it pools one context fewer (a diagnosis).

On ``papalexi_replicate`` a test condition's mean shift pools the knockout's change over the two
training replicates, but an inner validation condition's (``DolorisModel.train``'s calibration)
over one: the other training replicate. This script scores, on the benchmark's test conditions
(input: the target replicate's training controls), the mean shift fitted on both training
replicates against the mean shift fitted on one of them (each in turn; all controls kept). It
chooses nothing: it measures how much weaker the baseline the inner validation sees is.

Usage::

    python benchmarks/experiments/transfer_baseline.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scdoloris import baselines
from scdoloris.metrics import e_distance, emd

# benchmarks/ is a folder of scripts, not a package: its modules (run.py, tasks.py,
# _machine.py) are imported from there; this folder's own are beside the script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
import tasks  # noqa: E402
from _machine import run_record  # noqa: E402


def mean_shifts(fold: tasks.Fold) -> dict[str, baselines.MeanShift]:
    """MeanShift fitted on all training cells ("both") and on each perturbed replicate alone."""
    obs = fold.train.obs
    key, control = fold.setup["perturbation_key"], fold.setup["control_group"]
    perturbed = (obs[key].astype(str) != control).to_numpy()
    rep = obs[fold.setup["cell_type_key"]].astype(str).to_numpy()
    fits = {"both": fold.train}
    for r in sorted(set(rep[perturbed])):
        fits[r] = fold.train[~perturbed | (rep == r)].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: baselines.MeanShift().fit(a, **fold.setup) for name, a in fits.items()}


def scores(task: str = "papalexi_replicate") -> pd.DataFrame:
    """Per test condition: E-distance and EMD of the two-replicate and one-replicate fits."""
    rows = []
    for fold in tasks.folds(task):
        models = mean_shifts(fold)
        for cond in fold.conditions:
            ctrl = fold.input_cells(cond, "train")
            real = tasks.dense(fold.real[cond.name].X)
            for name, model in models.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pred = model.predict(ctrl, cond.perturbation, cell_type=cond.cell_type)
                pred = tasks.dense(pred.X)
                rows.append(
                    {
                        "condition": cond.name,
                        "fit": "two replicates" if name == "both" else "one replicate",
                        "e_distance": e_distance(pred, real),
                        "emd": emd(pred, real),
                    }
                )
    return pd.DataFrame(rows).groupby(["condition", "fit"]).mean().unstack()


def main(argv: list[str] | None = None) -> int:
    info = run_record(run._command(argv))
    table = scores()
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    for metric in ("e_distance", "emd"):
        one, two = table[metric]["one replicate"], table[metric]["two replicates"]
        diff = one - two
        print(
            f"{metric}: two replicates {two.mean():.4f}, one replicate {one.mean():.4f}; "
            f"difference {diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f} (SE), "
            f"one worse on {(diff > 0).mean():.0%} of {len(diff)} conditions"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
