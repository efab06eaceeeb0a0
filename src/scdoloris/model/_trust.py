"""Trust at a glance: a plain-language account of the calibration and of the training run.

``print(model)`` and :meth:`TrustMixin.validation_summary` say, per kind of condition, what a
prediction is made of (how much of the diffusion model, how much of which baseline), what the
choice rests on (how many held-out training conditions, of that kind or pooled over the other
kinds) and the error to expect, next to the error of the baseline alone and of predicting no
change; and the seed the model was trained with.

The account only reads the public side of the calibration (``model.validation``, and the
``choices``, ``validated_on``, ``expected_error`` and ``summary`` of
:class:`~scdoloris.model._calibration.Calibration`), so that it describes blends, baselines
and columns it does not know by their names.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from ._calibration import Calibration

SHRUNK = " (shrunk)"
# how the account names the baselines it knows; any other name is shown as it is
BASELINE_WORDS = {
    "NoChange": "no change",
    "MeanShift": "mean-shift baseline",
    "Additive": "additive baseline",
}
# how the account describes the blends it knows; any other is "the '<name>' blend"
BLEND_WORDS = {
    "scaled": "the model's cells, each gene moved toward the blended mean, zeros kept",
    "cells": "each cell averaged with its baseline prediction",
    "input": "the input cells, each gene moved toward the blended mean, zeros kept",
}


def baseline_words(name: str) -> str:
    """A baseline's name in words.

    Examples
    --------
    >>> baseline_words("MeanShift (shrunk)")
    'mean-shift baseline (shrunk toward no change)'
    >>> baseline_words("Linear")
    'Linear'
    """
    shrunk = name.endswith(SHRUNK)
    base = name.removesuffix(SHRUNK)
    words = BASELINE_WORDS.get(base, base)
    return f"{words} (shrunk toward no change)" if shrunk else words


def mixture_words(baseline: str, weight: float, blend: str) -> str:
    """``"75% model, 25% additive baseline"`` and how they are combined.

    Examples
    --------
    >>> mixture_words("Additive", 0.75, "scaled")
    "75% model, 25% additive baseline (the model's cells, each gene moved toward the blended mean, zeros kept)"
    >>> mixture_words("MeanShift", 1.0, "scaled")
    'the diffusion model alone'
    >>> mixture_words("NoChange", 0.0, "cells")
    'no change (the input cells)'
    >>> mixture_words("MeanShift", 0.5, "newblend")
    "50% model, 50% mean-shift baseline (the 'newblend' blend)"
    """
    name = baseline_words(baseline)
    how = BLEND_WORDS.get(blend, f"the {blend!r} blend")
    if weight >= 1.0 and blend == "scaled":
        return "the diffusion model alone"
    if weight <= 0.0 and blend == "cells":
        return "no change (the input cells)" if baseline == "NoChange" else f"the {name} alone"
    return f"{weight:.0%} model, {1 - weight:.0%} {name} ({how})"


def _number(value: float | None) -> str:
    return "unknown" if value is None or not math.isfinite(value) else f"{value:.2g}"


def _spread(sd: float | None, n: int) -> str:
    if sd is None or not math.isfinite(sd):
        return "sd unknown: one condition" if n == 1 else "sd unknown"
    return f"sd {sd:.2g}"


def kind_account(kind: str, calibration: Calibration, summary: pd.DataFrame) -> str:
    """One kind's line of :func:`calibration_account`."""
    baseline, weight, how = calibration.choice(kind)[:3]
    expected = calibration.expected_error(kind)
    n = int(expected.get("n_conditions", 0))
    rests = expected.get("validated_on", calibration.validated_on.get(kind, "none"))
    if rests == kind:
        basis = f"chosen on {n} held-out condition{'s' if n != 1 else ''} of this kind"
    elif rests == "pooled":
        basis = (
            f"no held-out condition of this kind: chosen on {n} held-out "
            f"condition{'s' if n != 1 else ''} pooled over the other kinds"
        )
    else:
        basis = f"chosen on {n} held-out condition{'s' if n != 1 else ''} ({rests})"
    row = summary.loc[kind] if kind in summary.index else None
    comparisons = []
    alone = None if row is None else row.get(f"E {baseline}")
    if baseline != "NoChange" and alone is not None and not (weight <= 0 and how == "cells"):
        comparisons.append(f"{_number(float(alone))} for the {baseline_words(baseline)} alone")
    model = None if row is None else row.get("E model")
    if model is not None and not (weight >= 1 and how == "scaled"):
        comparisons.append(f"{_number(float(model))} for the model alone")
    none = expected.get("e_distance_no_change")
    comparisons.append(f"{_number(none)} for no change")
    mine = expected.get("e_distance")
    warning = ""
    if none is not None and mine is not None and math.isfinite(mine) and mine >= none:
        warning = " No better than predicting no change here: check before trusting it."
    found = expected.get("de_overlap")
    de = ""
    if found is not None and math.isfinite(found):
        model_de = None if row is None else row.get("DE model")
        versus = (
            f" (the model alone {float(model_de):.0%})"
            if model_de is not None and math.isfinite(float(model_de))
            else ""
        )
        de = f" It finds {found:.0%} of the real top-20 DE genes{versus}."
    return (
        f"{kind}: {mixture_words(baseline, weight, how)}; {basis}; expected E-distance "
        f"{_number(mine)} ({_spread(expected.get('e_distance_sd'), n)}) against "
        f"{', '.join(comparisons)}.{de}{warning}"
    )


def calibration_account(calibration: Calibration | None) -> str:
    """The calibration in plain language: per kind of condition, what a prediction is made of,
    what the choice rests on and the error to expect (lower is better).

    Parameters
    ----------
    calibration
        A model's :attr:`~scdoloris.DolorisModel.calibration` (None: not calibrated).

    Returns
    -------
    Lines of text, one per kind after a header.

    Examples
    --------
    >>> print(calibration_account(None))  # doctest: +NORMALIZE_WHITESPACE
    Calibration: none (train(calibrate=False), or too few training conditions to hold some
    out): predictions are the diffusion model's own.
    """
    if calibration is None or not calibration.choices:
        return (
            "Calibration: none (train(calibrate=False), or too few training conditions to hold "
            "some out): predictions are the diffusion model's own."
        )
    scores = calibration.scores
    n_all = int(scores["condition"].nunique()) if "condition" in scores else 0
    summary = calibration.summary()
    lines = [
        f"Calibration (the inner validation of train(): {n_all} training conditions held out "
        "and predicted; E-distance to their real cells, lower is better). Per kind of "
        "condition:"
    ]
    lines += [f"  {kind_account(kind, calibration, summary)}" for kind in calibration.choices]
    lines.append(
        "model.validation has the numbers, scdoloris.plotting.validation(model) the curves; "
        "predict(calibrate=False) gives the model alone."
    )
    return "\n".join(lines)


def seed_account(seed: int | None, drawn: bool = False) -> str:
    """The line of ``print(model)`` that says which seed training used.

    Examples
    --------
    >>> print(seed_account(0))
    Seed: 0 (scvi.settings.seed at training; set it to 0 before creating the model to repeat the run).
    >>> seed_account(None)
    'Seed: not recorded (a model saved before scdoloris recorded seeds).'
    """
    if seed is None:
        return "Seed: not recorded (a model saved before scdoloris recorded seeds)."
    how = "drawn at random, as scvi.settings.seed was None" if drawn else "scvi.settings.seed"
    return (
        f"Seed: {seed} ({how} at training; set it to {seed} before creating the model to "
        "repeat the run)."
    )


class TrustMixin:
    """``print(model)`` with the seed and the calibration in plain language (see the module
    docstring)."""

    @property
    def summary_string(self) -> str:
        """The model's summary, its training status, and once trained, its seed and the
        calibration in plain language (what ``print(model)`` shows)."""
        text = self._model_summary_string
        text += "\nTraining status: {}".format("Trained" if self.is_trained_ else "Not Trained")
        if self.is_trained_:
            text += "\n" + self.validation_summary()
        return text

    def validation_summary(self) -> str:
        """The seed and the calibration in plain language: per kind of condition, how much of
        the diffusion model and of which baseline a prediction takes, how many held-out
        training conditions that rests on, and the E-distance to expect next to the
        baseline's, the model's alone and no change's (lower is better). An sd from one
        condition is unknown.

        Returns
        -------
        Lines of text; :attr:`validation` has the numbers as a table.

        Examples
        --------
        >>> print(model.validation_summary())  # doctest: +SKIP
        Seed: 0 (scvi.settings.seed at training; ...).
        Calibration (the inner validation of train(): 8 training conditions held out ...):
          new combination: 50% model, 50% additive baseline (...); chosen on 3 held-out
          conditions of this kind; expected E-distance 0.43 (sd 0.05) against 0.52 for the
          additive baseline alone, 0.61 for the model alone, 0.9 for no change.
        """
        seed = getattr(self, "seed_", None)
        drawn = bool(getattr(self, "seed_drawn_", False))
        return seed_account(seed, drawn) + "\n" + calibration_account(self.calibration)
