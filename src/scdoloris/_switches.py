"""The switches of the method's ablations: which module and prediction settings may change.

:class:`ModuleSwitches` (saved with the model, read by :class:`~scdoloris.module.DolorisModule`)
and :class:`PredictionSwitches` (read by :meth:`~scdoloris.DolorisModel.predict`), and the values
each switch takes. They are the building blocks of :mod:`scdoloris.ablations`, which is the
public door to them; they live here, below the model and the module, so that those import
them without importing :mod:`scdoloris.ablations` (which builds models) back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BASELINE_SETS",
    "BLEND_MODES",
    "MASK_MODES",
    "UNSEEN_PRIORS",
    "ModuleSwitches",
    "PredictionSwitches",
    "check_choice",
]


def check_choice(name: str, value, allowed: tuple) -> None:
    """Raise a ValueError unless ``value`` is one of ``allowed`` (``name``: the switch).

    Parameters
    ----------
    name
        The switch, for the message.
    value
        Its value.
    allowed
        The values it takes.
    """
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
        check_choice("prior", self.prior, ("additive", "none"))
        check_choice("unseen_prior", self.unseen_prior, UNSEEN_PRIORS)
        check_choice("cell_type_prior", self.cell_type_prior, ("similarity", "pooled"))
        check_choice("mask_network", self.mask_network, ("graph", "mlp"))
        check_choice("target_control_state", self.target_control_state, ("cells", "gaussian"))
        check_choice("mask_control_state", self.mask_control_state, ("cells", "gaussian"))


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
        check_choice("mask", self.mask, MASK_MODES)
        check_choice("blend", self.blend, BLEND_MODES)
        check_choice("baselines", self.baselines, BASELINE_SETS)
        check_choice("start", self.start, ("latent", "noise", "auto"))
        check_choice("residual", self.residual, ("values", "full", "none"))
        if not 0.0 < self.depth <= 1.0:
            raise ValueError(f"depth must be in (0, 1], got {self.depth}.")
