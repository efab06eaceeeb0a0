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
plan's settings (``lr_schedule``) go to ``train``'s ``plan_kwargs``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "ABLATIONS",
    "ModuleSwitches",
    "PredictionSwitches",
    "SWITCHES",
    "Variant",
    "variant",
]


def _check(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


@dataclass(frozen=True)
class ModuleSwitches:
    """Switches of :class:`~scdoloris.module.DolorisModule` (its ``ablation`` argument).

    The defaults are the method. ``use_mask=False``: no mask network, the diffusion loss
    covers all genes (the paper's "no mask"; predict with ``mask="none"``).
    ``use_control_state=False``: no control-state input to the target model (the paper's
    "no mu/sigma"). ``target_on_controls=False``: the target model never sees control cells
    under the control token. ``source_on_all_genes``: the source model's loss covers all
    genes. ``token_dropout``: the rate at which the learned part of a featured token is dropped
    in training (:class:`~scdoloris.module.PerturbationEncoder`). ``prior="none"``: no additive
    prior (the paper's model). ``unseen_prior``: what the prior adds for a gene token never
    perturbed in training, ``"detection"`` (the mask's logits), ``"both"`` (also expressed
    values) or ``"none"``. ``cell_type_prior="similarity"``: per-cell-type token effects,
    transferred to cell types where a token was never measured by control-profile similarity.
    ``mask_network="graph"``: the graph-attention mask network
    (:class:`~scdoloris.module.GeneGraphMaskNetwork`). ``target_control_state`` and
    ``mask_control_state``: ``"gaussian"`` draws the heterogeneity condition of training
    around the control mean (the paper) instead of taking real control cells.
    """

    use_mask: bool = True
    use_control_state: bool = True
    target_on_controls: bool = True
    source_on_all_genes: bool = False
    token_dropout: float = 0.3
    prior: str = "additive"
    unseen_prior: str = "detection"
    cell_type_prior: str = "pooled"
    mask_network: str = "mlp"
    target_control_state: str = "cells"
    mask_control_state: str = "cells"

    def __post_init__(self):
        _check("prior", self.prior, ("additive", "none"))
        _check("unseen_prior", self.unseen_prior, UNSEEN_PRIORS)
        _check("cell_type_prior", self.cell_type_prior, ("similarity", "pooled"))
        _check("mask_network", self.mask_network, ("graph", "mlp"))
        _check("target_control_state", self.target_control_state, ("cells", "gaussian"))
        _check("mask_control_state", self.mask_control_state, ("cells", "gaussian"))


UNSEEN_PRIORS = ("detection", "both", "none")
MASK_MODES = ("coherent", "coupled", "bernoulli", "none")
BLEND_MODES = ("calibrated", "scaled", "cells")
BASELINE_SETS = ("both", "measured")


@dataclass(frozen=True)
class PredictionSwitches:
    """Switches of :meth:`~scdoloris.DolorisModel.predict` (inside :meth:`Variant.applied`).

    ``mask``: how the mask network's probabilities become the expressed genes,
    ``"coupled"`` (the method: each control cell keeps its own pattern, changed as little as
    the predicted detection rates need), ``"coherent"`` (the paper's subset matching: real
    training masks of the nearest training condition, comparing ``mask_top_genes`` genes and
    switching genes with probability at most / at least ``mask_thresholds`` off / on),
    ``"bernoulli"`` (independent draws) or ``"none"`` (the raw diffusion output). ``start``:
    ``"latent"`` (the bridge), ``"noise"`` (decode from N(0, I): the paper's "no latent") or
    ``"auto"`` (noise for cell types never seen perturbed in training). ``residual``:
    ``"values"`` (the method: the input cells moved by the predicted change of expressed
    values), ``"full"`` (the coupled mask's detection rates move by the mask network's
    predicted change too) or ``"none"`` (the decoded cells, the paper). ``depth``: the
    fraction of the diffusion time the bridge goes through, in (0, 1]. ``blend``: how the
    calibration blends the model with a baseline, ``"calibrated"`` (the method: as the inner
    validation chose per kind, the model's cells scaled per gene to the blended means unless
    averaging each cell with the baseline's prediction of it, or scaling the input cells, did
    clearly better), ``"cells"`` or ``"scaled"`` (always that one; in the inner validation's
    scores too). ``baselines``:
    the baselines the inner validation scores, ``"both"`` (the method: each measured change
    and the same change shrunk by its sampling noise) or ``"measured"`` (the measured changes
    only, the previous method).
    """

    mask: str = "coupled"
    start: str = "latent"
    residual: str = "values"
    depth: float = 1.0
    mask_top_genes: int = 300
    mask_thresholds: tuple[float, float] = (0.01, 0.99)
    blend: str = "calibrated"
    baselines: str = "both"

    def __post_init__(self):
        _check("mask", self.mask, MASK_MODES)
        _check("blend", self.blend, BLEND_MODES)
        _check("baselines", self.baselines, BASELINE_SETS)
        _check("start", self.start, ("latent", "noise", "auto"))
        _check("residual", self.residual, ("values", "full", "none"))
        if not 0.0 < self.depth <= 1.0:
            raise ValueError(f"depth must be in (0, 1], got {self.depth}.")


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
        _check(key, value, PLAN_SWITCHES[key])
    return out
