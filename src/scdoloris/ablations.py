"""Ablations: the paper's ablations and the alternatives the benchmark did not keep, in one place.

:class:`~scdoloris.DolorisModel` implements one method (``docs/guide/method.md``) and has no
switches for it. The code paths of the paper's ablations ("no mask", "no latent", "no
mu/sigma") and of the alternatives measured on the cross-validated benchmark and not kept
(coherent masks, the Gaussian control state, the graph mask network, ...) stay, for
``benchmarks/`` and the tests; this module is the one door to them.

A *variant* is a set of switches away from the method's defaults, by name
(:data:`ABLATIONS`) or spelled out:

>>> from scdoloris import ablations
>>> ablations.variant("coherent mask").predict
{'mask': 'coherent'}
>>> ablations.variant(prior="none").module
{'prior': 'none'}

and is used as

.. code-block:: python

    no_prior = ablations.variant("no prior")
    model = no_prior.build(adata)             # DolorisModel(adata, ablation={"prior": "none"})
    no_prior.train(model, max_epochs=20)      # model.train with the variant's plan settings
    with ablations.variant("coherent mask").applied(model):
        pred = model.predict(controls, "KLF1")    # predict with the variant's mask sampling

Switches of the module (:class:`ModuleSwitches`) are saved with the model; switches of the
prediction (:class:`PredictionSwitches`) hold inside the ``applied`` block only; the training
plan's settings (``lr_schedule``) go to ``train``'s ``plan_kwargs``. The switches and the values
they take are defined in ``scdoloris/_switches.py``, below the model and the module that read
them, and re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

# the values each switch takes stay importable from here, where they were defined before
from ._switches import (  # noqa: F401
    BASELINE_SETS,
    BLEND_MODES,
    MASK_MODES,
    UNSEEN_PRIORS,
    ModuleSwitches,
    PredictionSwitches,
    check_choice,
)

__all__ = [
    "ABLATIONS",
    "ModuleSwitches",
    "PredictionSwitches",
    "SWITCHES",
    "Variant",
    "variant",
]


#: Settings of the training plan (``train(plan_kwargs=...)``) that are ablations, and their
#: values (the first is the method's).
PLAN_SWITCHES = {"lr_schedule": ("constant", "cosine")}
#: Keyword arguments of :class:`~scdoloris.DolorisModel` (of its module) that are ablations
#: (``cell_type_dropout=0``: no unknown cell type).
MODEL_SWITCHES = frozenset({"cell_type_dropout"})

_MODULE = {f.name for f in fields(ModuleSwitches)}
_PREDICT = {f.name for f in fields(PredictionSwitches)}
#: Every switch, whatever it acts on.
SWITCHES = frozenset(_MODULE | _PREDICT | set(PLAN_SWITCHES) | set(MODEL_SWITCHES))

#: The named variants: the paper's ablations and the alternatives measured and not kept.
#: Numbers: mean E-distance on validation splits carved from the benchmark's training data
#: (the former ``benchmarks/validate.py``), the method first; the cross-validated benchmark's
#: are in ``benchmarks/RESULTS.md``.
ABLATIONS: dict[str, dict[str, Any]] = {
    # the paper's ablations
    "no mask": {"use_mask": False, "mask": "none"},
    "no latent": {"start": "noise"},  # Norman 0.581 vs 0.607, Papalexi 0.328 vs 0.361
    "no mu/sigma": {"use_control_state": False},
    "no prior": {"prior": "none"},
    # Norman pairs: 0.208 vs 0.237
    "gaussian control state": {
        "target_control_state": "gaussian",
        "mask_control_state": "gaussian",
    },
    "coherent mask": {"mask": "coherent"},
    # alternatives of the method, measured and not kept
    "bernoulli mask": {"mask": "bernoulli"},
    # Kang, held-out cell types, seeds 1-2: 1.095 vs 1.166 (helped monocytes, hurt T cells)
    "auto start": {"start": "auto"},
    # Norman / Kang CD4 T / Papalexi, seed 0: 0.497 / 0.584 / 0.365 vs none 0.493 / 0.592 /
    # 0.424 and full 0.582 / 0.580 / 0.352
    "no residual": {"residual": "none"},
    "full residual": {"residual": "full"},
    "half depth": {"depth": 0.5},
    "graph mask network": {"mask_network": "graph"},  # about 3x slower to train on a CPU
    "unseen prior on both": {"unseen_prior": "both"},  # Papalexi: raised E of null knockouts
    "no unseen prior": {"unseen_prior": "none"},  # Papalexi: higher EMD of unseen knockouts
    "similarity cell-type prior": {"cell_type_prior": "similarity"},  # Kang: 1.091 vs 1.194
    "no unknown cell type": {"cell_type_dropout": 0.0},  # Kang: 0.890 vs 0.923
    "cosine lr": {"lr_schedule": "cosine"},  # Norman 0.547 vs 0.576, Papalexi/Kang even
    "no target on controls": {"target_on_controls": False},
    "source on all genes": {"source_on_all_genes": True},
    "no token dropout": {"token_dropout": 0.0},
    # the calibration's blend: the first version (cell by cell) and scaled cells only (neither
    # the cell-by-cell nor the input blend); inner validation in benchmarks/README.md
    "cell blend": {"blend": "cells"},
    "scaled blend": {"blend": "scaled"},
    # the calibration's baselines without the shrunk changes: inner validation of every task
    # kind in benchmarks/README.md ("Shrunk baselines")
    "measured baselines": {"baselines": "measured"},
}


@dataclass(frozen=True)
class Variant:
    """A set of switches away from the method, split by where each acts (see the module)."""

    name: str
    module: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    predict: dict = field(default_factory=dict)

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`~scdoloris.DolorisModel` for the variant."""
        return {**({"ablation": dict(self.module)} if self.module else {}), **self.model}

    def build(self, adata, **kwargs):
        """``DolorisModel(adata, **kwargs)`` with the variant's module switches."""
        from .model import DolorisModel

        return DolorisModel(adata, **kwargs, **self.model_kwargs())

    def train(self, model, **kwargs):
        """``model.train(**kwargs)`` with the variant's training-plan settings."""
        plan = {**(kwargs.pop("plan_kwargs", None) or {}), **self.plan}
        return model.train(**kwargs, plan_kwargs=plan or None)

    @contextmanager
    def applied(self, model) -> Iterator:
        """Within the block, ``model.predict`` uses the variant's prediction switches (the
        method's again afterwards)."""
        previous = getattr(model, "_prediction_switches", None)
        model._prediction_switches = PredictionSwitches(**self.predict)
        try:
            yield model
        finally:
            model._prediction_switches = previous

    def __repr__(self) -> str:
        switches = {**self.module, **self.model, **self.plan, **self.predict}
        return f"Variant({self.name!r}, {switches})"


def variant(name: str | Mapping[str, Any] | None = None, /, **switches) -> Variant:
    """A variant by name (:data:`ABLATIONS`), from a mapping of switches, or from keywords.

    Unknown names and switches, and values a switch does not take, raise a ValueError.

    Examples
    --------
    >>> variant("no mask").module, variant("no mask").predict
    ({'use_mask': False}, {'mask': 'none'})
    >>> variant("no latent", depth=0.5).predict
    {'start': 'noise', 'depth': 0.5}
    """
    label = "method"
    settings: dict[str, Any] = {}
    if isinstance(name, str):
        if name not in ABLATIONS:
            raise ValueError(f"Unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}.")
        label, settings = name, dict(ABLATIONS[name])
    elif name is not None:
        settings = dict(name)
        label = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    settings.update(switches)
    unknown = sorted(set(settings) - SWITCHES)
    if unknown:
        raise ValueError(f"Unknown switches {unknown}; the switches are {sorted(SWITCHES)}.")
    out = Variant(
        label,
        module={k: v for k, v in settings.items() if k in _MODULE},
        model={k: v for k, v in settings.items() if k in MODEL_SWITCHES},
        plan={k: v for k, v in settings.items() if k in PLAN_SWITCHES},
        predict={k: v for k, v in settings.items() if k in _PREDICT},
    )
    ModuleSwitches(**out.module)  # validate now, not when the model is built
    PredictionSwitches(**out.predict)
    for key, value in out.plan.items():
        check_choice(key, value, PLAN_SWITCHES[key])
    return out
