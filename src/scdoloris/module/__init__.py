"""The maths of Doloris: schedules, networks and the scvi-tools module."""

from ._denoiser import Denoiser
from ._doloris import DolorisModule
from ._gene_graph import GeneGraphEncoder, PerturbationEncoder, coexpression_edges
from ._mask_network import GeneGraphMaskNetwork, MaskNetwork
from ._mask_sampler import CoherentMaskSampler, MaskBank, build_mask_bank
from ._schedule import DiffusionSchedule

__all__ = [
    "CoherentMaskSampler",
    "Denoiser",
    "DiffusionSchedule",
    "DolorisModule",
    "GeneGraphEncoder",
    "GeneGraphMaskNetwork",
    "MaskBank",
    "MaskNetwork",
    "PerturbationEncoder",
    "build_mask_bank",
    "coexpression_edges",
]
