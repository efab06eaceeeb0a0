"""The input blend in the calibration: candidate sets with and without it, on the inner validation.

The calibration (``DolorisModel.train``) chooses a baseline, a weight of the model and a blend
per kind of condition on held-out TRAINING conditions. The blend ``"input"`` scales the input
cells, not the model's, to the blended means (``scdoloris.model._calibration.blend``). This
script scores, on the inner validation's candidate scores written by ``defaults.py --scores``
(the fold's test conditions are never predicted), the calibration fitted with:

- ``without input``: the candidates before the input blend (scaled and cell-by-cell blends);
- ``input at 0 and 1``: the input blend added at weights 0 and 1 only;
- ``with input``: the input blend at every weight (the method).

Compared as in ``candidate_sets.py``: each inner condition scored with the choice of a
calibration fitted on the other inner conditions of its fold and seed, paired differences
against ``without input`` ± SE.

Usage::

    python benchmarks/experiments/defaults.py --tasks ... --seeds 0,1,2 --scores scores.csv
    python benchmarks/experiments/input_blend.py benchmarks/experiments/input/scores_*.csv.gz
"""

from __future__ import annotations

import sys

import pandas as pd
from candidate_sets import report

SETS = ("without input", "input at 0 and 1", "with input")


def candidate_sets(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One fold-seed's candidate scores as the three calibrations of the module docstring."""
    other = scores["blend"] != "input"
    ends = scores[other | scores["weight"].isin([0.0, 1.0])]
    return dict(zip(SETS, (scores[other], ends, scores), strict=True))


def chose_input(choices: pd.DataFrame) -> pd.Series:
    """Which held-out choices are the input blend."""
    return choices["blend"] == "input"


def main(argv: list[str] | None = None) -> int:
    def needs(scores: pd.DataFrame) -> str | None:
        has = (scores["blend"] == "input").any()
        return None if has else "no input blend in the scores: write them at eaed4ad or later"

    return report(argv, candidate_sets, "input", chose_input, needs)


if __name__ == "__main__":
    sys.exit(main())
