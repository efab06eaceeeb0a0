"""The maths of Doloris: schedules, networks and the scvi-tools module."""

from ._denoiser import Denoiser
from ._doloris import DolorisModule
from ._gene_graph import GeneGraphEncoder, PerturbationEncoder, coexpression_edges
from ._mask_network import MaskNetwork
from ._schedule import DiffusionSchedule

__all__ = [
    "Denoiser",
    "DiffusionSchedule",
    "DolorisModule",
    "GeneGraphEncoder",
    "MaskNetwork",
    "PerturbationEncoder",
    "coexpression_edges",
]
