"""Calibration: how much of the diffusion model's predicted change to trust, learned per kind.

A prediction takes, per gene, the mean of ``(1 - w) * baseline + w * model`` over the
condition's cells, and the shape of the model's cells: the diffusion model's predicted cells
are scaled, gene by gene, to that mean (:func:`blend`), so they keep their zeros and their
spread. The baseline is a prediction of the same input cells (the cells themselves, or the
cells moved by the training mean change); ``w = 0`` returns it and ``w = 1`` the model. The
baseline and ``w`` are chosen inside :meth:`~scdoloris.DolorisModel.train` by an inner
validation: training conditions held out from an inner model, predicted, and scored with the
E-distance and EMD against their real cells. They are chosen per *kind* of condition, because
what a model can know differs between them:

``"seen"``
    the condition (token set and cell type) was in training;
``"transfer"``
    the token set was seen, but in other cell types (or at other doses) only;
``"new combination"``
    several tokens, each seen alone, never together (an unseen pair of seen genes: the
    additive baseline applies);
``"seen in combinations"``
    every token was seen, but some only in combinations (a single gene seen only in pairs);
``"unseen token"``
    a token was never perturbed in training.

Why a blend and not the model alone: on the cross-validated benchmark (``benchmarks/``) the
diffusion model's errors and the baselines' errors are partly independent, so a blend is
usually better than either, and where the model has little signal (tiny real effects) the
inner validation sees it and leans on the baseline. Each baseline that moves the cells comes
twice: with the changes measured in training, and with each change shrunk toward no change by
its sampling noise (``"MeanShift (shrunk)"``: a knockout whose change is within the noise of a
few hundred cells moves nothing). The shrunk ones are candidates and never the default: on the
benchmark's inner validation they were much better where effects are small and measured on
few cells (knockouts in another biological replicate) and worse elsewhere (``benchmarks/``
README, "Shrunk baselines"). Why the model's cells scaled, and not
each cell averaged with its baseline prediction (the first version): averaging two cells
fills the zeros the model predicted (a mean shift moves every zero) and halves the cells'
spread, which cost EMD and E-distance alike on the inner validation of five of the six task
kinds of the benchmark (``benchmarks/README.md``, "The blend"); on the sixth the inner
validation may still choose the cell-by-cell blend.

A third blend, ``"input"``, takes the shape from the *input* cells instead: per gene the same
blended mean, reached by scaling the control cells given to ``predict`` (by a factor in [0.5,
2]), so the prediction keeps the input's zeros and spread. At ``w = 0`` it is the baseline
with the input's zeros kept (a mean shift that moves no zero) and at ``w = 1`` the model's mean
change carried by the input cells. It is a candidate only, chosen by the inner validation:
where effects are small and the model's cells differ from the input in shape more than the
real cells do (knockouts in another biological replicate) it was chosen in most inner folds and
lowered the error on both metrics; on the other task kinds it was (almost) never chosen
(``benchmarks/README.md``, "The input blend").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

KINDS = ("seen", "transfer", "new combination", "seen in combinations", "unseen token")
SHRUNK = " (shrunk)"  # a baseline whose measured changes are shrunk by their noise
MEASURED = ("NoChange", "MeanShift", "Additive")
# the candidates' baselines: each measured change also shrunk toward no change by its sampling
# noise (scdoloris.baselines.shrink_change), which the inner validation may choose
BASELINES = MEASURED + tuple(b + SHRUNK for b in MEASURED if b != "NoChange")
# the model's weights a kind may choose: weight 0 (the baseline's means on the model's or the
# input's cells) measured no better on the inner validation, so it is not a candidate
# (benchmarks/README.md, "Cells that hold up downstream"); each baseline's own prediction is
# scored at weight 0 for reference
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
# the calibration's starting point per kind (see Calibration.fit): the baseline that applies
DEFAULT_BASELINE = {
    "seen": "MeanShift",
    "transfer": "MeanShift",
    "new combination": "Additive",
    "seen in combinations": "MeanShift",
    "unseen token": "MeanShift",
}
PRIOR_WEIGHT = 0.5  # the equal-weight blend of the model and the baseline
# the blends a kind may choose (see blend): the first is the default. Both keep a population of
# cells: they scale cells that exist (the model's, the input's) and never fill a zero.
BLENDS = ("scaled", "input")
# the first version's cell-by-cell average (the ablation "cell blend"); at weight 0 it is the
# baseline's own prediction, which the inner validation scores for reference (never chosen)
CELL_BLEND = "cells"
MIN_EVIDENCE = 3  # inner conditions needed to move away from it
# standard errors by which a candidate must beat the default: about 60 candidates are tested
# per kind, so a one-SE margin lets chance move a kind; two measured better on the inner
# validation (benchmarks/README.md, "The choice rule's margin")
CLEAR_SE = 2.0
# ... and by which it may be worse than the default on any one metric: a candidate may not buy
# one metric with another (benchmarks/README.md, "Cells that hold up downstream")
NO_WORSE_SE = 1.0
# the inner validation's metrics: name -> the loss it adds (lower is better); the top-20 DE
# genes found (scdoloris.metrics.de_overlap) count as the share missed
METRICS = ("e_distance", "emd", "de_overlap")
# per gene, the factors by which the blend may scale the model's or input cells (blend_scale)
SCALE_RANGE = (0.5, 2.0)
MIN_MEAN = 1e-6  # a mean below this counts as silent (factor 1: it stays silent)


class ConditionKey(NamedTuple):
    """A training or predicted condition: sorted tokens, cell type and dose label."""

    tokens: tuple[str, ...]
    cell_type: str
    dose: str = ""


def condition_kind(key: ConditionKey, training: Iterable[ConditionKey]) -> str:
    """The kind of ``key`` (see the module docstring) given the training conditions.

    Examples
    --------
    >>> train = [ConditionKey(("A",), "T"), ConditionKey(("B",), "T"), ConditionKey(("A",), "B"),
    ...          ConditionKey(("C", "D"), "T")]
    >>> condition_kind(ConditionKey(("A",), "T"), train)
    'seen'
    >>> condition_kind(ConditionKey(("B",), "B"), train)
    'transfer'
    >>> condition_kind(ConditionKey(("A", "B"), "T"), train)
    'new combination'
    >>> condition_kind(ConditionKey(("C",), "T"), train)
    'seen in combinations'
    >>> condition_kind(ConditionKey(("A", "E"), "T"), train)
    'unseen token'
    """
    training = set(training)
    if key in training:
        return "seen"
    if any(k.tokens == key.tokens for k in training):
        return "transfer"
    singles = {k.tokens[0] for k in training if len(k.tokens) == 1}
    if len(key.tokens) > 1 and all(t in singles for t in key.tokens):
        return "new combination"
    seen = {t for k in training for t in k.tokens}
    return "seen in combinations" if all(t in seen for t in key.tokens) else "unseen token"


@dataclass
class ValidationPlan:
    """Which training conditions the inner validation holds out.

    ``held_out``: conditions removed from the inner training data, with their kind there;
    ``seen``: conditions that stay, of which a fraction of cells is held out (kind "seen").
    """

    held_out: dict[ConditionKey, str]
    seen: list[ConditionKey]


def plan_validation(
    counts: Mapping[ConditionKey, int],
    rng: np.random.Generator,
    fraction: float = 0.25,
    max_conditions: int = 12,
    n_seen: int = 3,
    min_cells: int = 10,
) -> ValidationPlan:
    """Choose the conditions of the inner validation.

    Every perturbed training condition with at least ``min_cells`` cells is classified by the
    kind it would have if it alone were held out; from each kind about ``fraction`` of its
    conditions are drawn (at least one, two from four conditions on, at most
    ``max_conditions`` in all). Holding out
    several conditions can change one another's kind (holding out the single ``A`` makes the
    pair ``A+B`` an unseen-token condition), so the kinds are recomputed against what stays.
    ``n_seen`` other conditions keep most of their cells and have some held out (kind
    ``"seen"``).

    Parameters
    ----------
    counts
        Cells per training condition (control conditions have no tokens and are ignored).
    rng
        Random generator (the training seed's).
    fraction, max_conditions, n_seen, min_cells
        See above.

    Examples
    --------
    >>> counts = {ConditionKey((), "T"): 50, ConditionKey(("A",), "T"): 30,
    ...           ConditionKey(("B",), "T"): 30, ConditionKey(("C",), "T"): 30,
    ...           ConditionKey(("A", "B"), "T"): 30}
    >>> plan = plan_validation(counts, np.random.default_rng(0), n_seen=0)
    >>> sorted(plan.held_out.values())  # A (seen in the pair A+B) and C (seen nowhere else)
    ['new combination', 'unseen token']
    """
    perturbed = [k for k, n in counts.items() if k.tokens and n >= min_cells]
    perturbed = [perturbed[i] for i in rng.permutation(len(perturbed))]
    everything = set(counts)
    by_kind: dict[str, list[ConditionKey]] = {}
    for key in perturbed:
        by_kind.setdefault(condition_kind(key, everything - {key}), []).append(key)
    # about ``fraction`` of each kind's conditions, at least one, and two from four on
    quota = {
        kind: max(1, min(2, len(keys) // 2), round(fraction * len(keys)))
        for kind, keys in by_kind.items()
    }
    intended: dict[ConditionKey, str] = {}
    # round robin over the kinds, so that a capped total still covers every kind; a condition
    # is skipped if holding it out with the others would change one's kind (holding out the
    # single A and the pair A+B makes A an unseen token and A+B not a combination of singles)
    while len(intended) < max_conditions and any(quota[k] and by_kind[k] for k in quota):
        for kind in sorted(by_kind):
            if not (quota[kind] and by_kind[kind]) or len(intended) >= max_conditions:
                continue
            key = by_kind[kind].pop(0)
            trial = {**intended, key: kind}
            staying = everything - set(trial)
            # at least one perturbed condition stays in the inner training data
            if staying & set(perturbed) and all(
                condition_kind(k, staying) == v for k, v in trial.items()
            ):
                intended = trial
                quota[kind] -= 1
    held = intended
    rest = [k for k in perturbed if k not in held and counts[k] >= 2 * min_cells]
    return ValidationPlan(held, rest[:n_seen])


@dataclass
class Calibration:
    """The inner validation's scores and, per kind, the chosen baseline, model weight and blend.

    ``scores`` has one row per inner condition and scored prediction: the candidates
    (``baseline``, ``weight``, ``blend`` of :data:`BLENDS`: :func:`blend` ``how``) and, for
    reference, each baseline's own prediction (blend :data:`CELL_BLEND` at weight 0), with
    ``kind``, ``e_distance``, ``emd`` and ``de_overlap``; ``choices`` maps every kind of
    :data:`KINDS` to ``(baseline, weight, blend)``; ``validated_on`` says whether a kind's choice
    rests on its own inner conditions (the kind) or, for a kind without any, on all inner
    conditions but the seen ones (``"pooled"``); ``blends`` are the blends it chose among.
    """

    scores: pd.DataFrame
    choices: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    validated_on: dict[str, str] = field(default_factory=dict)
    blends: tuple[str, ...] = BLENDS

    @classmethod
    def fit(
        cls,
        scores: pd.DataFrame,
        blends: tuple[str, ...] = BLENDS,
        *,
        clear_se: float = CLEAR_SE,
        no_worse_se: float = NO_WORSE_SE,
        metrics: tuple[str, ...] = METRICS,
    ) -> Calibration:
        """Per kind, the equal-weight blend of the model and the kind's default baseline,
        unless the inner validation clearly prefers another candidate.

        The starting point is :data:`PRIOR_WEIGHT` (0.5) with the kind's baseline of
        :data:`DEFAULT_BASELINE` and the first of ``blends`` (the model's cells scaled toward the
        blended means, :func:`blend`): averaging two predictors whose errors are partly
        independent is a robust choice, and weights estimated from a few validation conditions
        are noisy (the "forecast combination puzzle": estimated weights rarely beat equal ones).
        Another candidate replaces it only when

        - its loss is lower on average by more than :data:`CLEAR_SE` (two) standard errors
          over the kind's inner conditions (paired, at least :data:`MIN_EVIDENCE` conditions;
          about 60 candidates are tested per kind, so one standard error would let chance move
          many kinds), and
        - it is worse than the default by no more than :data:`NO_WORSE_SE` (one) standard error
          on each metric of :data:`METRICS` alone: no candidate wins by giving one away;

        of the candidates that pass, the one with the lowest mean loss. The loss of a candidate
        on a condition is the sum over the metrics (E-distance, EMD and the share of the real
        top-20 DE genes missed), each divided by its mean over the kind's candidates and
        conditions, so they weigh alike. A kind without inner conditions is decided on the
        pooled conditions of the other kinds (but the seen ones), among blends with its own
        default baseline.

        Parameters
        ----------
        scores
            The inner validation's scores (see the class docstring).
        blends
            The blends a kind may choose (an ablation's: ``("cells",)``).
        clear_se, no_worse_se, metrics
            The rule's margins and the metrics of its loss (the benchmarks compare others).

        Examples
        --------
        >>> rows = [(c, "transfer", "MeanShift", w, "scaled", e, 0.1, 0.5) for c in "abcd"
        ...         for w, e in ((0.0, 1.0), (0.5, 0.8), (1.0, 0.4))]
        >>> scores = pd.DataFrame(rows, columns=["condition", "kind", "baseline", "weight",
        ...                                      "blend", "e_distance", "emd", "de_overlap"])
        >>> Calibration.fit(scores).choices["transfer"]  # the model is clearly better
        ('MeanShift', 1.0, 'scaled')
        >>> Calibration.fit(scores[scores["condition"] == "a"]).choices["transfer"]  # one only
        ('MeanShift', 0.5, 'scaled')
        """
        if "blend" not in scores:
            scores = scores.assign(blend=blends[0])
        blends = tuple(blends)
        candidates = scores[scores["blend"].isin(blends)]
        choices, validated = {}, {}
        pooled = candidates[candidates["kind"] != "seen"]
        pooled = pooled if len(pooled) else candidates
        rule = {"clear_se": clear_se, "no_worse_se": no_worse_se, "metrics": metrics}
        for kind in KINDS:
            own = candidates[candidates["kind"] == kind]
            if len(own):
                choices[kind], validated[kind] = _choose(own, kind, blends, **rule), kind
            elif len(pooled):
                restricted = pooled[pooled["baseline"] == DEFAULT_BASELINE[kind]]
                choices[kind] = _choose(restricted, kind, blends, **rule)
                validated[kind] = "pooled"
        return cls(scores.reset_index(drop=True), choices, validated, blends)

    def choice(self, kind: str) -> tuple[str, float, str]:
        """``(baseline, weight, blend)`` for a kind; the uncalibrated model,
        ``("NoChange", 1.0, "scaled")``, without any inner validation."""
        return self.choices.get(kind, ("NoChange", 1.0, BLENDS[0]))

    def _frame(self, kind: str) -> pd.DataFrame:
        if self.validated_on.get(kind) == kind:
            return self.scores[self.scores["kind"] == kind]
        frame = self.scores[self.scores["kind"] != "seen"]
        return frame if len(frame) else self.scores

    def expected_error(self, kind: str) -> dict:
        """The inner validation's scores of the choice for ``kind``: mean and sd of E-distance,
        EMD and the share of the real top-20 DE genes found over its conditions, with the same
        for no change, and how many conditions (the sd of one condition is unknown, NaN)."""
        frame = self._frame(kind)
        mine = frame[is_candidate(frame, self.choice(kind))]
        none = frame[_reference(frame, "NoChange")]
        out = {
            "validated_on": self.validated_on.get(kind, "none"),
            "n_conditions": int(mine["condition"].nunique()),
        }
        for metric in [m for m in METRICS if m in frame]:
            out[metric] = float(mine[metric].mean()) if len(mine) else float("nan")
            spread = len(mine) > 1 and out["n_conditions"] > 1  # one condition: unknown, not 0
            out[f"{metric}_sd"] = float(mine[metric].std(ddof=0)) if spread else float("nan")
            out[f"{metric}_no_change"] = float(none[metric].mean()) if len(none) else float("nan")
        return out

    def summary(self) -> pd.DataFrame:
        """Per kind: the choice, what it rests on, and the mean inner scores of the model
        alone, of each baseline and of the choice (what ``model.validation`` shows)."""
        rows = []
        for kind, (baseline, weight, how) in self.choices.items():
            frame = self._frame(kind)
            row = {
                "kind": kind,
                "baseline": baseline,
                "weight": weight,
                "blend": how,
                "validated_on": self.validated_on[kind],
                "n_conditions": int(frame["condition"].nunique()),
            }
            for name, sel in _named_candidates(frame, self.choices[kind]).items():
                row[f"E {name}"] = float(frame.loc[sel, "e_distance"].mean())
                row[f"EMD {name}"] = float(frame.loc[sel, "emd"].mean())
                if "de_overlap" in frame:
                    row[f"DE {name}"] = float(frame.loc[sel, "de_overlap"].mean())
            rows.append(row)
        return pd.DataFrame(rows).set_index("kind") if rows else pd.DataFrame()

    def to_dict(self) -> dict:
        """Plain data (saved with the model)."""
        return {
            "scores": self.scores.to_dict(orient="list"),
            "choices": {k: [b, float(w), how] for k, (b, w, how) in self.choices.items()},
            "validated_on": dict(self.validated_on),
            "blends": list(self.blends),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """Inverse of :meth:`to_dict` (a calibration saved without blends was fitted cell by
        cell: its choices and scores get the blend ``"cells"``)."""
        scores = pd.DataFrame(data["scores"])
        if "blend" not in scores:
            scores["blend"] = CELL_BLEND
        choices = {
            k: (str(c[0]), float(c[1]), str(c[2]) if len(c) > 2 else CELL_BLEND)
            for k, c in data["choices"].items()
        }
        blends = tuple(data.get("blends", sorted(set(scores["blend"]))))
        return cls(scores, choices, dict(data.get("validated_on", {})), blends)


def is_candidate(frame: pd.DataFrame, candidate: tuple[str, float, str]) -> pd.Series:
    """Rows of ``frame`` scoring ``(baseline, weight, blend)``."""
    baseline, weight, how = candidate
    return (frame["baseline"] == baseline) & (frame["weight"] == weight) & (frame["blend"] == how)


def _reference(frame: pd.DataFrame, baseline: str) -> pd.Series:
    """Rows of ``frame`` scoring a baseline's own prediction: the cell blend at weight 0 (the
    first blend at weight 0 in a calibration saved before the blends kept zeros, where weight
    0 was the baseline itself)."""
    at_zero = (frame["baseline"] == baseline) & (frame["weight"] == 0.0)
    own = at_zero & (frame["blend"] == CELL_BLEND)
    return own if own.any() else at_zero & (frame["blend"] == frame["blend"].iloc[0])


def _named_candidates(frame: pd.DataFrame, choice: tuple[str, float, str]) -> dict[str, pd.Series]:
    # the model alone once (every baseline's weight-1 row is the same prediction)
    alone = (frame["weight"] == 1.0) & (frame["blend"] == BLENDS[0])
    first = frame.loc[alone, "baseline"].iloc[0] if alone.any() else None
    named = {"model": alone & (frame["baseline"] == first)}
    for name in BASELINES:
        sel = _reference(frame, name)
        if sel.any():
            named[name] = sel
    named["calibrated"] = is_candidate(frame, choice)
    return named


def _default_candidate(frame: pd.DataFrame, kind: str, blends: tuple[str, ...] = BLENDS):
    """The kind's starting point: its baseline at :data:`PRIOR_WEIGHT`, the first blend scored."""
    scored = [b for b in blends if b in set(frame["blend"])] or [blends[0]]
    return DEFAULT_BASELINE[kind], PRIOR_WEIGHT, scored[0]


def _metric_losses(frame: pd.DataFrame, metrics=METRICS) -> dict[str, pd.Series]:
    """Per metric of ``metrics`` that ``frame`` has, the loss it adds per row (lower is
    better): E-distance, EMD and the share of DE genes missed, each over its mean."""
    losses = {}
    for metric in metrics:
        if metric not in frame or frame[metric].isna().all():
            continue
        value = 1.0 - frame[metric] if metric == "de_overlap" else frame[metric]
        losses[metric] = value / max(float(value.mean()), 1e-12)
    return losses


def _loss_table(frame: pd.DataFrame, metric: str | None = None, metrics=METRICS) -> pd.DataFrame:
    """Conditions x candidates ``(baseline, weight, blend)``: the summed loss of the metrics
    (or one ``metric``'s), candidates not scored on every condition dropped."""
    losses = _metric_losses(frame, metrics)
    loss = losses[metric] if metric is not None else sum(losses.values(), 0.0 * frame["emd"])
    return (
        frame.assign(loss=loss.fillna(1.0))
        .pivot_table(index="condition", columns=["baseline", "weight", "blend"], values="loss")
        .dropna(axis=1)
    )


def _paired_gain(table: pd.DataFrame, default) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate column, the mean paired gain over ``default`` and its standard error."""
    gain = table[[default]].to_numpy() - table.to_numpy()
    return gain.mean(axis=0), gain.std(axis=0, ddof=1) / np.sqrt(len(table))


def _choose(
    frame: pd.DataFrame,
    kind: str,
    blends: tuple[str, ...] = BLENDS,
    clear_se: float = CLEAR_SE,
    no_worse_se: float = NO_WORSE_SE,
    metrics: tuple[str, ...] = METRICS,
):
    """The rule of :meth:`Calibration.fit` on one kind's scores."""
    default = _default_candidate(frame, kind, blends)
    if frame.empty:
        return default
    table = _loss_table(frame, metrics=metrics)
    n = len(table)
    if default not in table.columns or n < MIN_EVIDENCE:
        return default
    # clear: a paired gain above clear_se standard errors (a gain within rounding of zero
    # never is, so near-ties stay with the default) ...
    mean, se = _paired_gain(table, default)
    clear = mean.round(9) > clear_se * se
    # ... and no metric given away: on each, at most no_worse_se standard errors worse
    for metric in _metric_losses(frame, metrics):
        one = _loss_table(frame, metric, metrics).reindex(columns=table.columns)
        m_mean, m_se = _paired_gain(one, default)
        clear &= -m_mean.round(9) <= no_worse_se * m_se
    better = [bw for bw, ok in zip(table.columns, clear, strict=True) if ok]
    if not better:
        return default
    # ties (within rounding) go to the smaller weight, then to a measured baseline (a change
    # shrunk to nothing is no change), then to the kind's baseline (for a single perturbation
    # Additive is MeanShift, and the name should say MeanShift)
    best = min(
        better,
        key=lambda bw: (
            round(float(table[bw].mean()), 9),
            bw[1],
            bw[0].endswith(SHRUNK),
            bw[0].removesuffix(SHRUNK) != default[0],
        ),
    )
    return str(best[0]), float(best[1]), str(best[2])


def blend_scale(
    model_mean: np.ndarray,
    baseline_mean: np.ndarray,
    weight: float,
    shape_mean: np.ndarray | None = None,
) -> np.ndarray:
    """Per gene, the factor that brings the cells whose shape a blend keeps (the model's, or
    ``shape_mean``'s: the input cells') toward the blended mean.

    The blended mean of a gene is ``(1 - weight) * baseline_mean + weight * model_mean``. The
    factor is the blended mean over the shape's mean, held to :data:`SCALE_RANGE`: a gene whose
    cells would need more than a two-fold change moves two-fold, and a gene the shape leaves
    silent stays silent (factor 1). The cells are multiplied by it (:func:`blend`), so their
    zeros stay zeros and no value is added to a cell that has none.

    Examples
    --------
    >>> blend_scale(np.array([1.0, 1.0, 0.0]), np.array([2.0, 9.0, 1.0]), 0.5)
    array([1.5, 2. , 1. ])
    >>> blend_scale(np.array([1.0, 1.0]), np.array([2.0, 9.0]), 0.5, shape_mean=np.array([2.0, 4.0]))
    array([0.75, 1.25])
    """
    model_mean = np.asarray(model_mean, dtype=np.float64)
    target = (1.0 - weight) * np.asarray(baseline_mean, dtype=np.float64) + weight * model_mean
    shape = model_mean if shape_mean is None else np.asarray(shape_mean, dtype=np.float64)
    scale = np.ones(shape.shape)
    expressed = shape > MIN_MEAN
    scale[expressed] = target[expressed] / shape[expressed]
    return np.clip(scale, *SCALE_RANGE)


def blend(
    model: np.ndarray,
    baseline: np.ndarray | None,
    weight: float,
    scale: np.ndarray | None = None,
    how: str = "scaled",
    inputs: np.ndarray | None = None,
    baseline_mean: np.ndarray | None = None,
) -> np.ndarray:
    """A condition's calibrated cells from the model's prediction and the baseline's.

    With ``how="scaled"`` (the method) the model's cells are multiplied, gene by gene, by
    :func:`blend_scale`: each gene moves toward the blended mean ``(1 - weight) * baseline +
    weight * model`` by at most two-fold, and keeps the model's zeros and spread (``weight >=
    1`` returns ``model``). With ``how="input"`` the input cells are scaled instead (at weight
    0: the baseline's mean change carried by the input cells, whose zeros stay zeros). Neither
    writes a value into a cell the shape has at zero: a gene silent in every input cell stays
    silent unless the model predicts it detected. ``how="cells"`` (the ablation ``"cell
    blend"``, the first version) averages each cell with its baseline prediction, which fills
    the zeros wherever the baseline moves them (a mean shift adds its change to every cell).

    Parameters
    ----------
    model, baseline
        Predictions of the same input cells (rows), one condition and cell type; ``baseline``
        may be None with ``baseline_mean`` or ``scale`` (only ``"cells"`` reads its cells).
    weight
        The model's weight.
    scale
        :func:`blend_scale` of the condition's means; None computes it from the means of
        ``model``, ``baseline`` (or ``baseline_mean``) and ``inputs``, which must then hold all
        of the condition's cells of the cell type.
    how
        ``"scaled"``, ``"input"`` or ``"cells"``.
    inputs
        The input cells (rows as ``model``); needed by ``how="input"``.
    baseline_mean
        The baseline's mean per gene, instead of ``baseline``.

    Examples
    --------
    >>> model = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> baseline = np.array([[3.0, 5.0], [3.0, 5.0]])
    >>> blend(model, baseline, 0.5)  # means 1 -> 2 (x2); gene 2's 1 -> 3 is held to x2
    array([[4., 0.],
           [0., 4.]])
    >>> blend(model, baseline, 0.5, how="input", inputs=np.array([[1.0, 4.0], [1.0, 0.0]]))
    array([[2., 6.],
           [2., 0.]])
    >>> blend(model, baseline, 0.5, how="cells")  # the ablation: zeros filled
    array([[2.5, 2.5],
           [1.5, 3.5]])
    """
    if how not in (*BLENDS, CELL_BLEND):
        raise ValueError(f"Unknown blend {how!r}; the blends are {(*BLENDS, CELL_BLEND)}.")
    if how == "cells":
        if weight >= 1.0:
            return model
        if baseline is None:
            raise ValueError('blend(how="cells") needs the baseline\'s cells: pass baseline=...')
        return baseline if weight <= 0.0 else (1.0 - weight) * baseline + weight * model
    if how == "input" and inputs is None:
        raise ValueError('blend(how="input") needs the input cells: pass inputs=...')
    if how == "scaled" and weight >= 1.0:
        return model
    shape = inputs if how == "input" else model
    if scale is None:
        if baseline_mean is None:
            if baseline is None:
                raise ValueError(
                    "blend needs the baseline: pass baseline=, baseline_mean= or scale="
                )
            baseline_mean = baseline.mean(axis=0)
        scale = blend_scale(model.mean(axis=0), baseline_mean, weight, shape.mean(axis=0))
    return shape * np.asarray(scale, dtype=shape.dtype)
