"""The scale of the expression: recorded from the training data, checked on ``predict``'s input.

A model trained on ``normalize_total`` then ``log1p`` values predicts nonsense from cells on
another scale, and most such inputs pass the basic checks (finite, non-negative, not obviously
raw counts). The common slips each leave a trace in the cells' totals after ``expm1`` over the
model's genes (:func:`expression_scale`), which :func:`scale_mismatch` compares with the
training cells':

- **raw counts** with small values (low depth, or a few genes): every value an integer where
  the training values were not;
- **log1p applied twice**: totals far below the training's, which undoing ``log1p`` once more
  brings back;
- **normalised, not log-transformed**: the values themselves sum to the training's totals;
- **another target sum** (``target_sum=1e6`` against ``1e4``, or the median of another data
  set's depths): totals more than :data:`SCALE_FACTOR` times off.
"""

from __future__ import annotations

import math

import numpy as np

#: Input totals within this factor of the training cells' pass (normalising the controls apart
#: from the screen moves the median depth by far less); beyond it the scales clearly differ.
SCALE_FACTOR = 2.0
#: Cells read to measure a scale (the first ones of the input; the training's control cells
#: spread evenly).
SCALE_CELLS = 2000
#: Per-cell totals this close to constant mean that normalize_total ran on exactly these genes
#: (its target_sum is then known).
CONSTANT_TOTALS = 0.01


def expression_scale(X: np.ndarray) -> dict:
    """The scale of cells x genes log-normalised expression (a sample of cells).

    Returns
    -------
    ``max`` (the largest value), ``integral`` (every non-zero value an integer),
    ``median_total`` (the median over cells of the sum of ``expm1(x)``: the normalisation's
    total over these genes), ``target_sum`` (that total when it is the same in every cell, i.e.
    ``normalize_total`` ran on exactly these genes; else None), ``median_total_twice`` (the
    same after undoing ``log1p`` twice), ``median_sum`` (the median sum of the values
    themselves) and ``n_cells``.

    Examples
    --------
    >>> x = np.log1p(np.array([[3.0, 7.0], [5.0, 5.0]]))
    >>> scale = expression_scale(x)
    >>> scale["median_total"], scale["target_sum"], scale["integral"]
    (10.0, 10.0, False)
    """
    X = np.asarray(X, dtype=np.float64)
    if X.size == 0:
        return {
            "max": 0.0,
            "integral": False,
            "median_total": float("nan"),
            "target_sum": None,
            "median_total_twice": float("nan"),
            "median_sum": float("nan"),
            "n_cells": 0,
        }
    values = X[X != 0]
    totals = np.expm1(X).sum(axis=1)
    median = float(np.median(totals))
    low, high = np.quantile(totals, [0.1, 0.9])
    constant = median > 0 and (high - low) <= CONSTANT_TOTALS * median
    with np.errstate(over="ignore"):
        twice = float(np.median(np.expm1(np.expm1(np.minimum(X, 50.0))).sum(axis=1)))
    return {
        "max": float(X.max()),
        "integral": bool(values.size and np.all(np.mod(values, 1) == 0)),
        "median_total": round(median, 6),
        "target_sum": round(median, 6) if constant else None,
        "median_total_twice": twice,
        "median_sum": float(np.median(X.sum(axis=1))),
        "n_cells": int(X.shape[0]),
    }


def _far(a: float, b: float, factor: float = SCALE_FACTOR) -> bool:
    """Whether positive ``a`` and ``b`` differ by more than ``factor`` (either way)."""
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        return a != b
    return abs(math.log(a / b)) > math.log(factor)


def _total(value: float) -> str:
    return f"{value:,.0f}" if 10 <= value < 1e7 else f"{value:.3g}"


def scale_mismatch(training: dict | None, given: dict, what: str = "the input") -> str | None:
    """What is wrong with the scale ``given`` (:func:`expression_scale` of ``predict``'s
    input) against the ``training`` one, and the fix; None when they agree.

    Examples
    --------
    >>> train = expression_scale(np.log1p(np.array([[3.0, 7.0], [5.0, 5.0]]) * 1000))
    >>> scale_mismatch(train, expression_scale(np.log1p(np.array([[3.0, 7.0]]) * 1000))) is None
    True
    >>> message = scale_mismatch(train, expression_scale(np.log1p(np.array([[3.0, 7.0]]))))
    >>> print(message)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    The input's cells sum to about 10 over the model's genes after expm1, the training cells to
    about 10,000: the input was normalised to another total. ...(adata, target_sum=10000)...
    """
    message = _mismatch(training, given, what)
    return None if message is None else message[0].upper() + message[1:]


def _mismatch(training: dict | None, given: dict, what: str) -> str | None:
    if not training or not given.get("n_cells"):
        return None
    ref = float(training["median_total"])
    target = training.get("target_sum")
    how = (
        f"sc.pp.normalize_total(adata, target_sum={target:g}) then sc.pp.log1p(adata)"
        if target
        else "sc.pp.normalize_total then sc.pp.log1p, with the training data's target_sum"
    )
    if given["integral"] and not training["integral"] and given["max"] >= 1:
        return (
            f"{what} holds integers only (up to {given['max']:.0f}), like raw counts, but the "
            f"model was trained on log-normalised values. Run {how} on {what} first."
        )
    total = float(given["median_total"])
    if not _far(total, ref):
        return None
    said = (
        f"{what}'s cells sum to about {_total(total)} over the model's genes after expm1, the "
        f"training cells to about {_total(ref)}"
    )
    if not _far(float(given["median_total_twice"]), ref):
        return (
            f"{what} looks log-transformed twice (log1p applied twice): {said}, and "
            f"{what}'s to about {_total(given['median_total_twice'])} after undoing log1p twice. "
            "Undo the second log1p (adata.X = np.expm1(adata.X)), or start again from the "
            f"counts: {how}, once."
        )
    if not _far(float(given["median_sum"]), ref):
        return (
            f"{what} looks normalised but not log-transformed: {said}, and its values "
            f"themselves to about {_total(given['median_sum'])}. Run sc.pp.log1p(adata)."
        )
    return (
        f"{said}: {what} was normalised to another total. Normalise its counts as the training "
        f"data were: {how}."
    )
