"""The calibration on the model's side: run by ``train``, applied by ``predict``.

``train(calibrate=True)`` fits the baselines on the training data and runs the inner
validation (:mod:`._inner_validation`), whose :class:`~._calibration.Calibration` chooses, per
kind of condition, a baseline, the weight of the model's prediction and the blend; ``predict``
blends each condition's predicted cells with the baseline's prediction of the same input
cells (:func:`~._calibration.blend`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .._perturbation import format_tokens
from ._calibration import (
    CELL_BLEND,
    SHRUNK,
    Calibration,
    ConditionKey,
    blend,
    blend_scale,
    condition_kind,
)
from ._data import BACKED_CELLS_PER_CONDITION, _per_condition_sample
from ._prediction import batches


class CalibrationMixin:
    """The calibration of :class:`~scdoloris.DolorisModel` (see the module docstring)."""

    def _calibrate(self, train_kwargs: dict):
        """Fit the baselines on the training data and run the inner validation (see train);
        returns the inner model (None: none was trained)."""
        import scvi

        if not hasattr(self, "_init_arguments"):
            warnings.warn(
                "This model was loaded from disk: it keeps the calibration it was saved with "
                "(the inner validation needs the settings it was created with).",
                UserWarning,
                stacklevel=3,
            )
            return None
        table = self._condition_table()
        self.training_conditions_ = [list(k) for k in dict.fromkeys(table["key"])]
        rows = np.arange(len(table))
        if self.adata.isbacked:  # the baselines' means from a sample of each condition
            rows = _per_condition_sample(table["key_id"].to_numpy(), BACKED_CELLS_PER_CONDITION)
        self.baselines_ = self._fit_baselines(self._labelled_anndata(rows, table))
        seed = scvi.settings.seed
        seed = 0 if seed is None else int(seed)
        calibration, inner = self._run_inner_validation(train_kwargs, seed)
        self.calibration_ = None if calibration is None else calibration.to_dict()
        return inner

    @property
    def calibration(self) -> Calibration | None:
        """The inner validation's calibration (None: not calibrated)."""
        data = getattr(self, "calibration_", None)
        return None if data is None else Calibration.from_dict(data)

    @property
    def validation(self) -> pd.DataFrame:
        """The inner validation of :meth:`train`, per kind of condition: the chosen baseline and
        model weight, how many conditions were held out, and the mean E-distance and EMD of the
        model alone, of each baseline and of the calibrated prediction on them.

        Examples
        --------
        >>> model.validation  # doctest: +SKIP
        """
        calibration = self.calibration
        return pd.DataFrame() if calibration is None else calibration.summary()

    def _condition_kind(self, tokens: tuple[str, ...], cell_type: str, dose_label: str) -> str:
        """The kind of a predicted condition against the training conditions."""
        training = [ConditionKey(tuple(t), c, d) for t, c, d in self.training_conditions_]
        return condition_kind(ConditionKey(tuple(sorted(tokens)), cell_type, dose_label), training)

    def _blend_plan(self, parsed, doses, ct_names) -> list[dict] | None:
        """Per predicted condition: its label, and per cell type its kind, baseline, weight and
        blend (None without a calibration)."""
        calibration = self.calibration
        if calibration is None or getattr(self, "baselines_", None) is None:
            return None
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        molecules = set(getattr(self, "molecule_names_", []) or [])
        forced = self._switches().blend  # an ablation's blend, or "calibrated"
        measured = self._switches().baselines == "measured"  # an ablation: no shrunk baselines
        plans = []
        for tokens, d in zip(parsed, doses, strict=True):
            dosed = d is not None and any(t in molecules for t in tokens) and d > 0
            dose_label = f" @ {d:g}" if dosed else ""
            label = format_tokens(tokens, control, delimiter) + dose_label
            per_type = {}
            for ct in dict.fromkeys(ct_names):
                kind = self._condition_kind(tokens, str(ct), dose_label) if tokens else "control"
                choice = calibration.choice(kind) if tokens else ("NoChange", 1.0, "scaled")
                baseline, weight, how = choice
                if measured:
                    baseline = baseline.removesuffix(SHRUNK)
                per_type[str(ct)] = (
                    kind,
                    baseline,
                    weight,
                    how if forced == "calibrated" else forced,
                )
            plans.append({"label": label, "per_type": per_type})
        return plans

    def _calibrated(
        self, block: np.ndarray, X, ct_names: np.ndarray, plan: dict, batch_size: int
    ) -> None:
        """Blend one condition's predicted cells ``block`` (in place, rows as the input cells
        ``X``, whose slices are dense: ``AlignedRows``) with the baseline's prediction of the
        same cells, per cell type.

        :func:`~._calibration.blend` needs the condition's means per gene, so the input is read
        twice, batch by batch: once for the means, once to blend.
        """
        todo = {
            ct: choice
            for ct, (_, *choice) in plan["per_type"].items()
            if choice[1] < 1.0 or choice[2] == "input"
        }
        if not todo:
            return
        ct_names = np.asarray(ct_names)
        scales = self._blend_scales(block, X, ct_names, plan["label"], todo, batch_size)
        for sl in batches(block.shape[0], batch_size):
            x, names = X[sl], ct_names[sl]
            for ct, (baseline, weight, how) in todo.items():
                rows = np.flatnonzero(names == ct)
                if len(rows):
                    base = None  # only the cell-by-cell blend (an ablation) reads its cells
                    if how == CELL_BLEND:
                        base = self.baselines_.predict(
                            baseline, x[rows], plan["label"], names[rows]
                        )
                    at = sl.start + rows
                    block[at] = blend(block[at], base, weight, scales.get(ct), how, x[rows])

    def _blend_scales(self, block, X, ct_names, label, todo, batch_size) -> dict:
        """Per cell type blended with ``"scaled"`` or ``"input"``,
        :func:`~._calibration.blend_scale` of the condition's means."""
        todo = {ct: choice for ct, choice in todo.items() if choice[2] != CELL_BLEND}
        if not todo:
            return {}
        sums = {ct: np.zeros((3, block.shape[1])) for ct in todo}  # model, baseline, input
        for sl in batches(block.shape[0], batch_size):
            x, names = X[sl], ct_names[sl]
            for ct, (baseline, *_) in todo.items():
                rows = names == ct
                if rows.any():
                    base = self.baselines_.predict(baseline, x[rows], label, names[rows])
                    sums[ct] += (block[sl][rows].sum(axis=0), base.sum(axis=0), x[rows].sum(axis=0))
        scales = {}
        for ct, (_, weight, how) in todo.items():
            model_mean, baseline_mean, input_mean = sums[ct] / max(int((ct_names == ct).sum()), 1)
            shape = input_mean if how == "input" else None
            scales[ct] = blend_scale(model_mean, baseline_mean, weight, shape_mean=shape)
        return scales

    def _blend_report(self, names: list[str], plans: list[dict]) -> dict:
        """For uns: per perturbation and cell type, the kind, the blend and the expected error."""
        calibration = self.calibration
        report = {}
        for name, plan in zip(names, plans, strict=True):
            entry = {}
            for ct, (kind, baseline, weight, how) in plan["per_type"].items():
                expected = calibration.expected_error(kind) if kind != "control" else {}
                entry[ct] = {
                    "kind": kind,
                    "baseline": baseline,
                    "weight": weight,
                    "blend": how,
                    **expected,
                }
            report[name] = entry
        return report
