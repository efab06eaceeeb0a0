"""The maths of Doloris: schedules, networks and the scvi-tools module."""

from ._denoiser import Denoiser
from ._doloris import DolorisModule
from ._dose import DoseGate, dose_prior_weights, encode_dose
from ._gene_graph import GeneGraphEncoder, PerturbationEncoder, coexpression_edges
from ._mask_network import GeneGraphMaskNetwork, MaskNetwork
from ._mask_sampler import CoherentMaskSampler, MaskBank, build_mask_bank
from ._molecule_encoder import MoleculeEncoder
from ._schedule import DiffusionSchedule

__all__ = [
    "CoherentMaskSampler",
    "Denoiser",
    "DiffusionSchedule",
    "DolorisModule",
    "DoseGate",
    "GeneGraphEncoder",
    "GeneGraphMaskNetwork",
    "MaskBank",
    "MaskNetwork",
    "MoleculeEncoder",
    "PerturbationEncoder",
    "build_mask_bank",
    "coexpression_edges",
    "dose_prior_weights",
    "encode_dose",
]
