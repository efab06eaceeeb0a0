"""The calibration on the model's side: run by ``train``, applied by ``predict``.

``train(calibrate=True)`` fits the baselines on the training data and runs the inner
validation (:mod:`._inner_validation`), whose :class:`~._calibration.Calibration` chooses, per
kind of condition, a baseline and the weight of the model's prediction; ``predict`` blends
each predicted cell with the baseline's prediction of the same input cell
(:func:`~._calibration.blend`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from .._perturbation import format_tokens
from ._calibration import Calibration, ConditionKey, condition_kind
from ._data import BACKED_CELLS_PER_CONDITION, _per_condition_sample


class CalibrationMixin:
    """The calibration of :class:`~scdoloris.DolorisModel` (see the module docstring)."""

    def _calibrate(self, train_kwargs: dict) -> None:
        """Fit the baselines on the training data and run the inner validation (see train)."""
        import scvi

        if not hasattr(self, "_init_arguments"):
            warnings.warn(
                "This model was loaded from disk: it keeps the calibration it was saved with "
                "(the inner validation needs the settings it was created with).",
                UserWarning,
                stacklevel=3,
            )
            return
        table = self._condition_table()
        self.training_conditions_ = [list(k) for k in dict.fromkeys(table["key"])]
        rows = np.arange(len(table))
        if self.adata.isbacked:  # the baselines' means from a sample of each condition
            rows = _per_condition_sample(table["key_id"].to_numpy(), BACKED_CELLS_PER_CONDITION)
        self.baselines_ = self._fit_baselines(self._labelled_anndata(rows, table))
        seed = scvi.settings.seed
        calibration = self._run_inner_validation(train_kwargs, 0 if seed is None else int(seed))
        self.calibration_ = None if calibration is None else calibration.to_dict()

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
        """Per predicted condition: its label, and per cell type its kind, baseline and weight
        (None without a calibration)."""
        calibration = self.calibration
        if calibration is None or getattr(self, "baselines_", None) is None:
            return None
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        molecules = set(getattr(self, "molecule_names_", []) or [])
        plans = []
        for tokens, d in zip(parsed, doses, strict=True):
            dosed = d is not None and any(t in molecules for t in tokens) and d > 0
            dose_label = f" @ {d:g}" if dosed else ""
            label = format_tokens(tokens, control, delimiter) + dose_label
            per_type = {}
            for ct in dict.fromkeys(ct_names):
                kind = self._condition_kind(tokens, str(ct), dose_label) if tokens else "control"
                baseline, weight = ("NoChange", 1.0) if not tokens else calibration.choice(kind)
                per_type[str(ct)] = (kind, baseline, weight)
            plans.append({"label": label, "per_type": per_type})
        return plans

    def _calibrated(self, x_hat: np.ndarray, x: np.ndarray, ct_names, plan: dict) -> np.ndarray:
        """Blend one batch's predicted cells with the baseline prediction of the same cells."""
        from ._calibration import blend

        x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float32)
        out = x_hat
        for ct, (_, baseline, weight) in plan["per_type"].items():
            if weight >= 1.0:
                continue
            rows = np.asarray(ct_names) == ct
            base = self.baselines_.predict(
                baseline, x[rows], plan["label"], np.full(rows.sum(), ct)
            )
            out[rows] = blend(x_hat[rows], base, weight)
        return out

    def _blend_report(self, names: list[str], plans: list[dict]) -> dict:
        """For uns: per perturbation and cell type, the kind, the blend and the expected error."""
        calibration = self.calibration
        report = {}
        for name, plan in zip(names, plans, strict=True):
            entry = {}
            for ct, (kind, baseline, weight) in plan["per_type"].items():
                expected = calibration.expected_error(kind) if kind != "control" else {}
                entry[ct] = {"kind": kind, "baseline": baseline, "weight": weight, **expected}
            report[name] = entry
        return report
