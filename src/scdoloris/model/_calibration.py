"""Calibration: how much of the diffusion model's predicted change to trust, learned per kind.

A prediction is ``(1 - w) * baseline + w * model``, cell by cell: each input cell's
baseline prediction (the cell itself, or the cell moved by the training mean change) moved a
fraction ``w`` of the way to the diffusion model's prediction from the same cell. The
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
inner validation sees it and leans on the baseline. Why cell by cell: the blend of two
predictions of the same input cell keeps that cell's identity, and ``w = 0`` or ``w = 1``
return exactly the baseline or the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

KINDS = ("seen", "transfer", "new combination", "seen in combinations", "unseen token")
BASELINES = ("NoChange", "MeanShift", "Additive")
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MODEL = "Doloris (uncalibrated)"


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
    """The inner validation's scores and, per kind, the chosen baseline and model weight.

    ``scores`` has one row per inner condition and candidate (``method``: a baseline, the
    uncalibrated model, or ``"<baseline> + w"`` for a blend) with ``kind``, ``e_distance``
    and ``emd``; ``choices`` maps a kind (and ``"pooled"``) to ``(baseline, weight)``.
    """

    scores: pd.DataFrame
    choices: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def fit(cls, scores: pd.DataFrame) -> Calibration:
        """Choose per kind the candidate with the lowest normalised E-distance + EMD.

        Each metric is divided by its mean over the kind's candidates and conditions, so the two
        weigh alike; the loss of a candidate is the sum of its two normalised means over the
        kind's conditions. Ties go to the smaller model weight. ``"pooled"`` is chosen over the
        conditions of every kind but ``"seen"`` and serves kinds without inner conditions.

        Examples
        --------
        >>> scores = pd.DataFrame({"condition": ["c"] * 3, "kind": ["transfer"] * 3,
        ...     "baseline": ["NoChange", "NoChange", "NoChange"], "weight": [0.0, 0.5, 1.0],
        ...     "e_distance": [1.0, 0.5, 0.8], "emd": [0.1, 0.05, 0.06]})
        >>> Calibration.fit(scores).choices["transfer"]
        ('NoChange', 0.5)
        """
        choices = {}
        groups = {kind: scores[scores["kind"] == kind] for kind in scores["kind"].unique()}
        unseen = scores[scores["kind"] != "seen"]
        groups["pooled"] = unseen if len(unseen) else scores
        for kind, frame in groups.items():
            if len(frame):
                choices[kind] = _best_candidate(frame)
        return cls(scores.reset_index(drop=True), choices)

    def choice(self, kind: str) -> tuple[str, float]:
        """``(baseline, weight)`` for a kind (the pooled choice if the kind was not validated;
        the uncalibrated model, ``("NoChange", 1.0)``, without any inner validation)."""
        if kind in self.choices:
            return self.choices[kind]
        return self.choices.get("pooled", ("NoChange", 1.0))

    def expected_error(self, kind: str) -> dict:
        """The inner validation's scores of the choice for ``kind``: mean and sd of E-distance
        and EMD over its conditions, with the same for no change, and how many conditions."""
        baseline, weight = self.choice(kind)
        frame = self.scores
        source = kind if kind in self.choices else "pooled"
        if source != "pooled":
            frame = frame[frame["kind"] == kind]
        elif (frame["kind"] != "seen").any():
            frame = frame[frame["kind"] != "seen"]
        mine = frame[(frame["baseline"] == baseline) & (frame["weight"] == weight)]
        none = frame[(frame["baseline"] == "NoChange") & (frame["weight"] == 0.0)]
        out = {"validated_on": source, "n_conditions": int(mine["condition"].nunique())}
        for metric in ("e_distance", "emd"):
            out[metric] = float(mine[metric].mean()) if len(mine) else float("nan")
            out[f"{metric}_sd"] = float(mine[metric].std(ddof=0)) if len(mine) else float("nan")
            out[f"{metric}_no_change"] = float(none[metric].mean()) if len(none) else float("nan")
        return out

    def summary(self) -> pd.DataFrame:
        """Per kind: the choice, and the mean inner scores of the model alone, each baseline and
        the choice (what ``model.validation_`` shows)."""
        rows = []
        for kind in [k for k in (*KINDS, "pooled") if k in self.choices]:
            frame = self.scores if kind == "pooled" else self.scores[self.scores["kind"] == kind]
            if kind == "pooled" and (frame["kind"] != "seen").any():
                frame = frame[frame["kind"] != "seen"]
            baseline, weight = self.choices[kind]
            row = {
                "kind": kind,
                "baseline": baseline,
                "weight": weight,
                "n_conditions": int(frame["condition"].nunique()),
            }
            for name, sel in _named_candidates(frame, baseline, weight).items():
                row[f"E {name}"] = float(frame.loc[sel, "e_distance"].mean())
                row[f"EMD {name}"] = float(frame.loc[sel, "emd"].mean())
            rows.append(row)
        return pd.DataFrame(rows).set_index("kind") if rows else pd.DataFrame()

    def to_dict(self) -> dict:
        """Plain data (saved with the model)."""
        return {
            "scores": self.scores.to_dict(orient="list"),
            "choices": {k: [b, float(w)] for k, (b, w) in self.choices.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(
            pd.DataFrame(data["scores"]),
            {k: (str(b), float(w)) for k, (b, w) in data["choices"].items()},
        )


def _named_candidates(frame: pd.DataFrame, baseline: str, weight: float) -> dict[str, pd.Series]:
    named = {"model": frame["weight"] == 1.0}
    for name in BASELINES:
        sel = (frame["baseline"] == name) & (frame["weight"] == 0.0)
        if sel.any():
            named[name] = sel
    named["calibrated"] = (frame["baseline"] == baseline) & (frame["weight"] == weight)
    return named


def _best_candidate(frame: pd.DataFrame) -> tuple[str, float]:
    scale_e = max(float(frame["e_distance"].mean()), 1e-12)
    scale_emd = max(float(frame["emd"].mean()), 1e-12)
    means = frame.groupby(["baseline", "weight"])[["e_distance", "emd"]].mean()
    loss = means["e_distance"] / scale_e + means["emd"] / scale_emd
    # ties (within rounding) go to the smaller weight, then to the simpler baseline
    order = sorted(
        loss.index,
        key=lambda bw: (round(float(loss[bw]), 9), bw[1], BASELINES.index(bw[0])),
    )
    baseline, weight = order[0]
    return str(baseline), float(weight)


def blend(model: np.ndarray, baseline: np.ndarray, weight: float) -> np.ndarray:
    """Each cell ``(1 - weight) * baseline + weight * model`` (both predictions of one input cell).

    Examples
    --------
    >>> blend(np.array([[2.0, 0.0]]), np.array([[1.0, 1.0]]), 0.25)
    array([[1.25, 0.75]])
    """
    if weight >= 1.0:
        return model
    if weight <= 0.0:
        return baseline
    return (1.0 - weight) * baseline + weight * model
