"""The inner validation of ``DolorisModel.train``: an inner model scored on held-out training
conditions, from which the calibration (:mod:`._calibration`) is chosen."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._anndata_utils import dense
from .._constants import REGISTRY_KEYS
from .._downstream import _SortedReference, de_overlap, top_de_by_wilcoxon
from .._perturbation import format_tokens
from ..baselines import Additive, MeanShift
from ..metrics import e_distance, emd
from ._calibration import (
    BASELINES,
    BLENDS,
    CELL_BLEND,
    MEASURED,
    SHRUNK,
    WEIGHTS,
    Calibration,
    ConditionKey,
    blend,
    plan_validation,
)
from ._data import _read_rows
from ._warm_start import INNER_FRACTION, phase

logger = logging.getLogger(__name__)

MAX_CELLS = 300  # cells per condition (inputs and real cells) scored by the inner validation
MAX_TRAIN_CELLS = 1000  # cells per condition in the inner model's training data
SEEN_FRACTION = 0.5  # of a "seen" validation condition's cells, held out
DE_GENES = 20  # the top DE genes whose overlap the inner validation scores
# a label delimiter that never occurs: the dose-aware baselines treat each condition as a whole
_WHOLE = "\x00"


class BaselineShifts:
    """The baselines' changes, fitted once on the training data and kept with the model.

    ``MeanShift`` for every condition (the exact condition if seen in the cell type, else its
    change in other cell types, else the change of all perturbed cells) and ``Additive`` (the
    sum of single-token changes) where every token was seen alone; without doses only.

    Parameters
    ----------
    adata
        Training cells with the columns ``condition`` (the perturbation, with `` @ <dose>``
        for a model with doses) and ``cell_type`` (absent: one cell type).
    control_group, delimiter
        Of the labels.
    """

    def __init__(self, adata: ad.AnnData, control_group: str, delimiter: str):
        key = "cell_type" if "cell_type" in adata.obs else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.mean_shift = MeanShift().fit(
                adata, "condition", control_group, key, combination_delimiter=delimiter
            )
        self.additive = None
        if delimiter != _WHOLE:
            self.additive = Additive()
            self.additive.training_ = self.mean_shift.training_

    def delta(self, baseline: str, label: str, cell_type: str) -> np.ndarray | None:
        """The change ``baseline`` adds to control cells of ``cell_type`` (None: none).

        ``"Additive"`` falls back to ``"MeanShift"`` where a token was never seen alone. A name
        ending in ``" (shrunk)"``: each measured change shrunk toward no change by its sampling
        noise (:func:`scdoloris.baselines.shrink_change`).
        """
        if baseline not in BASELINES:
            raise ValueError(f"Unknown baseline {baseline!r}; the baselines are {BASELINES}.")
        shrink = baseline.endswith(SHRUNK)
        baseline = baseline.removesuffix(SHRUNK)
        if baseline == "NoChange":
            return None
        if baseline == "Additive" and self.additive is not None:
            try:
                self.additive._check_perturbation(label)
                return self.additive._delta(label, cell_type, shrink=shrink)
            except ValueError:
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.mean_shift._delta(label, cell_type, shrink=shrink)

    def predict(self, baseline: str, X: np.ndarray, label: str, cell_types: np.ndarray):
        """The baseline's prediction of ``label`` from input cells ``X`` (dense)."""
        out = X.copy()
        for ct in np.unique(cell_types):
            delta = self.delta(baseline, label, str(ct))
            if delta is not None:
                rows = cell_types == ct
                out[rows] = np.maximum(X[rows] + delta, 0.0)
        return out


@dataclass
class InnerCondition:
    """A held-out condition of the inner validation: what to predict and its real cells."""

    label: str  # the baselines' label (with " @ <dose>" for a model with doses)
    perturbation: str
    dose: float | None
    cell_type: str
    kind: str
    controls: ad.AnnData
    real: np.ndarray


@dataclass
class InnerSplit:
    """The inner model's training cells, the held-out conditions and the model's cell count."""

    adata: ad.AnnData
    conditions: list[InnerCondition]
    n_cells: int


class InnerValidationMixin:
    """What :meth:`DolorisModel.train` needs for its inner validation and calibration."""

    def _condition_table(self) -> pd.DataFrame:
        """Per registered cell: condition label, cell type name, dose and condition key."""
        manager = self.adata_manager
        tokens = self._registered_tokens()
        codes = np.asarray(manager.get_from_registry(REGISTRY_KEYS.CELL_TYPE_KEY)).ravel()
        dose = self._registered_doses()
        dose_labels = self._dose_labels(tokens, dose)
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        names = np.asarray(self.cell_types_, dtype=object)[codes.astype(int)]
        rows = {}
        perturbations = []
        keys = []
        for r, d, ct in zip(tokens, dose_labels, names, strict=True):
            toks = tuple(sorted(self._row_tokens(r, self.vocabulary_)))
            key = ConditionKey(toks, str(ct), str(d))
            if key not in rows:
                rows[key] = format_tokens(toks, control, delimiter)
            perturbations.append(rows[key])
            keys.append(key)
        table = pd.DataFrame({"perturbation": perturbations, "cell_type": names.astype(str)})
        table["label"] = table["perturbation"] + dose_labels
        table["dose"] = dose if dose is not None else np.nan
        table["key"] = pd.Series(keys, index=table.index, dtype=object)
        index = {k: i for i, k in enumerate(rows)}
        table["key_id"] = [index[k] for k in keys]
        return table

    def _labelled_anndata(self, rows: np.ndarray, table: pd.DataFrame) -> ad.AnnData:
        """An in-memory AnnData of registered cells ``rows`` with the columns of
        :class:`BaselineShifts` and of the inner model's setup."""
        X = _read_rows(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY), rows)
        X = X.tocsr() if sparse.issparse(X) else np.asarray(X)
        obs = pd.DataFrame(
            {
                "perturbation": table["perturbation"].to_numpy()[rows],
                "condition": table["label"].to_numpy()[rows],
            },
            index=[f"cell{i}" for i in rows],
        )
        if self.setup_args.get("cell_type_key") is not None:
            obs["cell_type"] = table["cell_type"].to_numpy()[rows]
        if self.has_doses:
            obs["dose"] = table["dose"].to_numpy()[rows]
        return ad.AnnData(
            X.astype(np.float32), obs=obs, var=pd.DataFrame(index=self.adata_var_names)
        )

    def _baseline_delimiter(self) -> str:
        return _WHOLE if self.has_doses else self.setup_args["combination_delimiter"]

    def _fit_baselines(self, adata: ad.AnnData) -> BaselineShifts:
        return BaselineShifts(adata, self.setup_args["control_group"], self._baseline_delimiter())

    def _inner_model(self, adata: ad.AnnData):
        """A model of the same class and settings, set up on ``adata``."""
        setup = {
            "perturbation_key": "perturbation",
            "control_group": self.setup_args["control_group"],
            "cell_type_key": "cell_type" if "cell_type" in adata.obs else None,
            "combination_delimiter": self.setup_args["combination_delimiter"],
            "dose_key": "dose" if "dose" in adata.obs else None,
            "molecule_features": self.setup_args.get("molecule_features"),
        }
        cls = type(self)
        cls.setup_anndata(adata, **setup)
        init = dict(self._init_arguments)
        module_kwargs = init.pop("module_kwargs", {})
        return cls(adata, **init, **module_kwargs)

    def _run_inner_validation(self, train_kwargs: dict, seed: int):
        """Hold out training conditions, train an inner model on the rest, score the candidates.

        Returns ``(calibration, inner model)``, or ``(None, None)`` when the data have too few
        perturbed conditions to hold one out.
        """
        split = self._inner_split(seed)
        if split is None:
            return None, None
        logger.info(
            "Inner validation: %d conditions held out (%s); training an inner model.",
            len(split.conditions),
            ", ".join(f"{c.label} in {c.cell_type}: {c.kind}" for c in split.conditions),
        )
        phase(
            f"Inner validation (1/2): an inner model on the training data without "
            f"{len(split.conditions)} held-out condition(s), then scored on them",
            train_kwargs,
        )
        inner = self._train_inner_model(split, train_kwargs)
        scores = self._score_inner(inner, split, seed)
        if scores.empty:
            return None, inner
        return Calibration.fit(scores, self._candidate_blends(inner)), inner

    def _inner_split(self, seed: int) -> InnerSplit | None:
        """The inner validation's data: the inner model's training cells and, per held-out
        condition, its kind, input control cells and real cells (None: nothing to hold out)."""
        rng = np.random.default_rng(seed)
        table = self._condition_table()
        ids = table["key_id"].to_numpy()
        by_id = dict(zip(ids, table["key"], strict=True))
        counts = {
            by_id[i]: int(n) for i, n in zip(*np.unique(ids, return_counts=True), strict=True)
        }
        plan = plan_validation(counts, rng)
        if not plan.held_out and not plan.seen:
            return None
        id_of = {k: i for i, k in by_id.items()}
        real_rows: dict[ConditionKey, np.ndarray] = {}
        train_mask = np.ones(len(table), dtype=bool)
        for key in plan.held_out:
            rows = np.flatnonzero(ids == id_of[key])
            train_mask[rows] = False
            real_rows[key] = rows
        for key in plan.seen:
            rows = rng.permutation(np.flatnonzero(ids == id_of[key]))
            held = np.sort(rows[: max(1, int(round(SEEN_FRACTION * len(rows))))])
            train_mask[held] = False
            real_rows[key] = held
        kinds = {**plan.held_out, **{k: "seen" for k in plan.seen}}
        train_rows = _cap_rows(np.flatnonzero(train_mask), ids, MAX_TRAIN_CELLS, rng)
        inner_adata = self._labelled_anndata(train_rows, table)
        is_ctrl = np.array([len(k.tokens) == 0 for k in table["key"]])
        # the input cells: one draw of control cells per cell type, shared by its conditions
        # (they are then predicted in one call, encoded once)
        controls: dict[str, tuple[np.ndarray, ad.AnnData]] = {}
        conditions = []
        for key, kind in kinds.items():
            if key.cell_type not in controls:
                rows = is_ctrl & (table["cell_type"].to_numpy() == key.cell_type)
                rows = np.intersect1d(np.flatnonzero(rows), train_rows)
                rows = np.sort(rng.permutation(rows)[:MAX_CELLS])
                controls[key.cell_type] = (rows, self._labelled_anndata(rows, table))
            ctrl, ctrl_adata = controls[key.cell_type]
            real = np.sort(rng.permutation(real_rows[key])[:MAX_CELLS])
            if len(ctrl) < 2 or len(real) < 2:
                continue
            dose = table["dose"].to_numpy()[real[0]]
            conditions.append(
                InnerCondition(
                    label=str(table["label"].to_numpy()[real[0]]),
                    perturbation=str(table["perturbation"].to_numpy()[real[0]]),
                    dose=None if np.isnan(dose) else float(dose),
                    cell_type=key.cell_type,
                    kind=kind,
                    controls=ctrl_adata,
                    real=dense(self._labelled_anndata(real, table).X, np.float32),
                )
            )
        return InnerSplit(inner_adata, conditions, len(table)) if conditions else None

    def _train_inner_model(
        self, split: InnerSplit, train_kwargs: dict, fraction: float = INNER_FRACTION
    ):
        """The inner model, trained for ``fraction`` of the optimisation steps of a model
        trained from scratch (:data:`~._warm_start.INNER_FRACTION`: the model then starts from
        it)."""
        inner = self._inner_model(split.adata)
        batch = int(train_kwargs.get("batch_size", 128))
        steps = fraction * int(train_kwargs["max_epochs"]) * int(np.ceil(split.n_cells / batch))
        epochs = max(1, int(round(steps / np.ceil(split.adata.n_obs / batch))))
        inner.train(**{**train_kwargs, "max_epochs": epochs}, calibrate=False)
        return inner

    def _score_inner(self, inner, split: InnerSplit, seed: int, **predict_kwargs) -> pd.DataFrame:
        """E-distance, EMD and top-20 DE overlap of every candidate (baseline x model weight x
        blend) and, for reference, of each baseline's own prediction, on every condition."""
        shifts = self._fit_baselines(split.adata)
        has_types = "cell_type" in split.adata.obs
        blends = self._candidate_blends(inner)
        # the baselines scored: measured and shrunk changes, or measured only (an ablation of
        # this model, or of the inner model in benchmarks/experiments/defaults.py)
        measured = "measured" in (self._switches().baselines, inner._switches().baselines)
        baselines = MEASURED if measured else BASELINES
        predicted = _predict_conditions(inner, split.conditions, has_types, seed, predict_kwargs)
        rows = []
        for cond, P in zip(split.conditions, predicted, strict=True):
            X = dense(cond.controls.X, np.float32)
            cts = np.full(X.shape[0], cond.cell_type)
            score = _Scorer(cond.real, X)
            # the model alone (weight 1) is the same prediction for every baseline: scored once
            alone = {}
            for baseline in baselines:
                B = shifts.predict(baseline, X, cond.label, cts)
                scored = [(0.0, CELL_BLEND, B)]  # the baseline's own prediction, for reference
                for w in WEIGHTS if baseline in MEASURED else WEIGHTS[:-1]:
                    for how in blends:
                        if w >= 1 and how in alone:
                            scored.append((w, how, None))
                            continue
                        Q = blend(P, B, w, how=how, inputs=X)
                        scored.append((w, how, Q))
                for w, how, Q in scored:
                    if Q is None:
                        values = alone[how]
                    else:
                        values = score(Q)
                        if w >= 1:
                            alone[how] = values
                    rows.append(
                        {
                            "condition": f"{cond.label} | {cond.cell_type}",
                            "kind": cond.kind,
                            "baseline": baseline,
                            "weight": w,
                            "blend": how,
                            **values,
                        }
                    )
        return pd.DataFrame(rows)

    def _candidate_blends(self, inner=None) -> tuple[str, ...]:
        """The blends the calibration chooses among: :data:`BLENDS`, or an ablation's one
        (inside :meth:`scdoloris.ablations.Variant.applied`, of this model or the inner one)."""
        for model in (inner, self):
            how = None if model is None else model._switches().blend
            if how not in (None, "calibrated"):
                return (how,)
        return BLENDS


class _Scorer:
    """The inner validation's metrics of predictions of one condition against its real cells:
    E-distance, EMD and the share of the real top-20 DE genes (Wilcoxon against the input
    cells) that the prediction's own top 20 find."""

    def __init__(self, real: np.ndarray, inputs: np.ndarray):
        self.real = real
        self.inputs = _SortedReference(inputs.astype(np.float64))  # sorted once, ranked against
        self.real_top = top_de_by_wilcoxon(real, self.inputs, DE_GENES)

    def __call__(self, Q: np.ndarray) -> dict[str, float]:
        return {
            "e_distance": e_distance(Q, self.real),
            "emd": emd(Q, self.real),
            "de_overlap": de_overlap(Q, None, self.inputs, real_top=self.real_top),
        }


def _predict_conditions(
    inner, conditions: list[InnerCondition], has_types: bool, seed: int, predict_kwargs: dict
) -> list[np.ndarray]:
    """Each condition's predicted cells (the model alone), in one ``predict`` call per set of
    input cells: the cells are encoded once and decoded under each of their conditions (each
    condition's random draws depend on the seed and the condition only, so the cells are those
    of a call per condition)."""
    groups: dict[int, list[int]] = {}
    for i, cond in enumerate(conditions):
        groups.setdefault(id(cond.controls), []).append(i)
    out: list[np.ndarray | None] = [None] * len(conditions)
    for members in groups.values():
        first = conditions[members[0]]
        doses = [conditions[i].dose for i in members]
        with warnings.catch_warnings():  # held-out tokens may be unknown to the inner model
            warnings.simplefilter("ignore", UserWarning)
            X = inner.predict(
                first.controls,
                [conditions[i].perturbation for i in members],
                cell_type=first.cell_type if has_types else None,
                dose=None if all(d is None for d in doses) else doses,
                calibrate=False,
                progress_bar=False,
                seed=seed,
                allow_unknown=True,
                **predict_kwargs,
            ).X
        n = first.controls.n_obs
        for j, i in enumerate(members):
            out[i] = np.asarray(X[j * n : (j + 1) * n])
    return out


def _cap_rows(rows: np.ndarray, ids: np.ndarray, max_cells: int, rng) -> np.ndarray:
    """At most ``max_cells`` of ``rows`` per condition id (drawn at random), sorted."""
    out = []
    sub = ids[rows]
    for key in np.unique(sub):
        mine = rows[sub == key]
        if len(mine) > max_cells:
            mine = rng.choice(mine, max_cells, replace=False)
        out.append(mine)
    return np.sort(np.concatenate(out))
