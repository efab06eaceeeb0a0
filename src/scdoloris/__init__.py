"""scdoloris: Doloris (dual conditional diffusion implicit bridges) as an scvi-tools model.

Submodules and :class:`DolorisModel` are imported on first use, so that ``import scdoloris``
(and the command line's ``--help``) does not pay for importing scvi-tools and Lightning.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scdoloris")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from ._perturbation import normalize_perturbation, parse_perturbation  # noqa: E402

_SUBMODULES = {
    "ablations",
    "baselines",
    "datasets",
    "metrics",
    "module",
    "molecules",
    "train",
    "model",
    "plotting",
}

__all__ = [
    "DolorisModel",
    "ablations",
    "baselines",
    "datasets",
    "metrics",
    "module",
    "molecules",
    "normalize_perturbation",
    "parse_perturbation",
    "train",
    "__version__",
]


def __getattr__(name: str):
    if name == "DolorisModel":
        return import_module(".model", __name__).DolorisModel
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'scdoloris' has no attribute {name!r}")
