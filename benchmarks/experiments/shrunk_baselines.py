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

Compared as in ``candidate_sets.py``: each inner condition scored with the choice of a
calibration fitted on the other inner conditions of its fold and seed, paired differences
against ``measured`` ± SE.

Usage::

    python benchmarks/experiments/defaults.py --tasks ... --seeds 0,1,2 --scores scores.csv
    python benchmarks/experiments/shrunk_baselines.py benchmarks/experiments/shrink/scores_*.csv.gz
"""

from __future__ import annotations

import sys

import pandas as pd
from candidate_sets import report

from scdoloris.model._calibration import MEASURED, SHRUNK


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


def chose_shrunk(choices: pd.DataFrame) -> pd.Series:
    """Which held-out choices are a shrunk baseline."""
    return choices["baseline"].str.endswith(SHRUNK)


def main(argv: list[str] | None = None) -> int:
    def needs(scores: pd.DataFrame) -> str | None:
        has = set(MEASURED) <= set(scores["baseline"])
        return None if has else "scores without the measured baselines"

    return report(argv, candidate_sets, "a shrunk baseline", chose_shrunk, needs)


if __name__ == "__main__":
    sys.exit(main())
