"""The maths of Doloris: the bridge, the networks, the prior and the scvi-tools module.

One file per idea of the method (``docs/guide/method.md`` has the map): ``_bridge.py`` (the
schedule, DDIM and the two ODE runs), ``_denoiser.py`` (the source and target networks),
``_control_state.py`` (the heterogeneity condition), ``_perturbation_encoder.py``,
``_gene_graph.py``, ``_molecule_encoder.py`` and ``_dose.py`` (the condition), ``_prior.py``
(the additive prior), ``_mask_network.py`` and ``_mask_sampler.py`` (the masks),
``_residual.py``, ``_losses.py`` and ``_doloris.py`` (the module that holds them together).
"""

from ._bridge import DiffusionSchedule
from ._control_state import ControlStates
from ._denoiser import Denoiser
from ._doloris import DolorisModule, ModuleData
from ._dose import DoseGate, dose_prior_weights, encode_dose
from ._gene_graph import GATLayers, GeneGraphEncoder, coexpression_edges
from ._mask_network import GeneGraphMaskNetwork, MaskNetwork
from ._mask_sampler import (
    BernoulliMaskSampler,
    CoherentMaskSampler,
    CoupledMaskSampler,
    MaskBank,
    MaskSampler,
    build_mask_bank,
)
from ._molecule_encoder import MoleculeEncoder
from ._perturbation_encoder import ConditionEncoder, PerturbationEncoder
from ._prior import AdditivePrior

__all__ = [
    "AdditivePrior",
    "BernoulliMaskSampler",
    "CoherentMaskSampler",
    "ConditionEncoder",
    "ControlStates",
    "CoupledMaskSampler",
    "Denoiser",
    "DiffusionSchedule",
    "DolorisModule",
    "DoseGate",
    "GATLayers",
    "GeneGraphEncoder",
    "GeneGraphMaskNetwork",
    "MaskBank",
    "MaskNetwork",
    "MaskSampler",
    "ModuleData",
    "MoleculeEncoder",
    "PerturbationEncoder",
    "build_mask_bank",
    "coexpression_edges",
    "dose_prior_weights",
    "encode_dose",
]
