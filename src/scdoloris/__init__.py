"""scdoloris: Doloris (dual conditional diffusion implicit bridges) as an scvi-tools model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scdoloris")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from . import baselines, datasets, metrics, module, train  # noqa: E402
from ._perturbation import normalize_perturbation, parse_perturbation  # noqa: E402
from .model import DolorisModel  # noqa: E402

__all__ = [
    "DolorisModel",
    "baselines",
    "datasets",
    "metrics",
    "module",
    "normalize_perturbation",
    "parse_perturbation",
    "train",
    "__version__",
]
