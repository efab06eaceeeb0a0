"""The saved file format: its number, what ``load`` checks, and the upgrade of older formats.

Bump :data:`FILE_FORMAT` whenever a save holds something an older scdoloris cannot read (a new
key of ``module_kwargs_``, a keyword argument of ``DolorisModule``): older versions then refuse
the file with a clear message instead of failing inside. ``load`` reads every format up to
this one, converting older saves with :func:`upgrade`.

1. The first format.
2. ``module_kwargs_`` records ``cell_type_dropout`` (an unknown keyword argument of a format-1
   reader's module).
3. The redesign (issue 18): ``DolorisModule`` takes the sub-networks' settings in keyword
   dicts (``denoiser_kwargs``, ``mask_kwargs``, ``graph_kwargs``, ``molecule_kwargs``) and
   the ablations' switches in ``ablation``; the additive prior, the control statistics and the
   graph-attention layers live in sub-modules (``prior.*``, ``control_states.*``,
   ``*.layers.*``).
4. The calibration may choose shrunk baselines (``"MeanShift (shrunk)"``), which a format-3
   reader would take for another baseline; and the baselines keep sums of squares.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import fields

import torch

from .. import __version__
from .._switches import ModuleSwitches
from ..module import DolorisModule
from ..module._doloris import DENOISER_DEFAULTS, GRAPH_DEFAULTS, MASK_DEFAULTS, MOLECULE_DEFAULTS

FILE_FORMAT = 4

# format <= 2: DolorisModule's flat keyword arguments -> (keyword dict, key in it)
_GROUPED = {
    "n_hidden": ("denoiser_kwargs", "n_hidden"),
    "n_layers": ("denoiser_kwargs", "n_layers"),
    "dropout": ("denoiser_kwargs", "dropout"),
    "n_mask_hidden": ("mask_kwargs", "n_hidden"),
    "n_nodes": ("graph_kwargs", "n_nodes"),
    "n_node_features": ("graph_kwargs", "n_node_features"),
    "n_edges": ("graph_kwargs", "n_edges"),
    "n_gene_edges": ("graph_kwargs", "n_gene_edges"),
    "n_graph_hidden": ("graph_kwargs", "n_hidden"),
    "n_molecules": ("molecule_kwargs", "n_molecules"),
    "n_molecule_features": ("molecule_kwargs", "n_features"),
    "n_dose_levels": ("molecule_kwargs", "n_dose_levels"),
}
_SWITCHES = {f.name: f.default for f in fields(ModuleSwitches)}
# format <= 2: state-dict keys -> format 3
_PRIOR = (
    "control_expressed_mean|control_detection_logit|token_expressed_effect|token_detection_effect"
    "|unseen_expressed_effect|unseen_detection_effect|typed_expressed_effect"
    "|typed_detection_effect|level_token|level_dose|level_expressed_effect|level_detection_effect"
)
_RENAMES = (
    (rf"^({_PRIOR})$", r"prior.\1"),
    (r"^control_mean$", "control_states.mean"),
    (r"^control_std$", "control_states.std"),
    (r"^(.*perturbation\.graph|mask_net)\.(gat1|norm1|gat2|norm2)\.", r"\1.layers.\2."),
)
_NESTED = {
    "denoiser_kwargs": set(DENOISER_DEFAULTS),
    "mask_kwargs": set(MASK_DEFAULTS),
    "graph_kwargs": set(GRAPH_DEFAULTS),
    "molecule_kwargs": set(MOLECULE_DEFAULTS),
    "ablation": set(_SWITCHES),
}


def check_saved(attr_dict: dict, dir_path: str) -> int:
    """The file format of a save; errors for files that are no scdoloris model or are newer."""
    version = attr_dict.get("scdoloris_version_")
    file_format = attr_dict.get("file_format_")
    if version is None or file_format is None:
        raise ValueError(
            f"{dir_path!r} does not hold a scdoloris model (no scdoloris version recorded)."
        )
    if not isinstance(file_format, int) or file_format < 1:
        raise ValueError(
            f"{dir_path!r} does not hold a scdoloris model in a known file format (file "
            f"format {file_format!r})."
        )
    if file_format > FILE_FORMAT:
        raise ValueError(
            f"{dir_path!r} was saved by a newer scdoloris ({version}) in file format "
            f"{file_format}; this scdoloris {__version__} reads file formats 1 to "
            f"{FILE_FORMAT}. {_upgrade_hint(version)}"
        )
    return file_format


def check_module_options(module_kwargs: dict, dir_path: str, version: str) -> None:
    """Refuse module options this version does not know (a newer save), naming them."""
    known = set(inspect.signature(DolorisModule).parameters)
    unknown = sorted(set(module_kwargs) - known)
    for name, keys in _NESTED.items():
        unknown += sorted(f"{name}[{k!r}]" for k in set(module_kwargs.get(name) or {}) - keys)
    if unknown:
        raise ValueError(
            f"{dir_path!r} was saved by a newer scdoloris ({version}): its model has options "
            f"this scdoloris {__version__} does not know ({', '.join(map(repr, unknown))}). "
            f"{_upgrade_hint(version)}"
        )


def upgrade(attr_dict: dict, state_dict: dict, file_format: int) -> None:
    """Convert a save of an older format to the current one, in place."""
    if file_format >= 3:  # format 3 -> 4: nothing to convert (no shrunk baselines in 3)
        return
    kwargs = attr_dict["module_kwargs_"]
    if file_format == 1:
        # format 1: models saved before the unknown cell type had none; before the unseen-token
        # and per-cell-type priors, they were off (zeros); before the record of the cell types
        # seen perturbed, every cell type was bridged
        kwargs.setdefault("cell_type_dropout", 0.0)
        for name in ("unseen_expressed_effect", "unseen_detection_effect"):
            state_dict.setdefault(name, torch.zeros(kwargs["n_genes"]))
        for name in ("typed_expressed_effect", "typed_detection_effect"):
            state_dict.setdefault(name, torch.zeros(0, kwargs["n_vocab"], kwargs["n_genes"]))
        attr_dict.setdefault("perturbed_cell_types_", list(attr_dict.get("cell_types_", [])))
    attr_dict["module_kwargs_"] = _grouped(kwargs)
    init = attr_dict.get("init_params_", {})
    user = init.get("kwargs", {}).get("module_kwargs")
    if user is not None:
        public = (
            "n_hidden",
            "n_layers",
            "n_cond",
            "n_graph_hidden",
            "n_mask_hidden",
            "share_trunk",
        )
        for key in public:
            if key in user:
                init["non_kwargs"][key] = user.pop(key)
        init["kwargs"]["module_kwargs"] = _grouped(user)
    for key in list(state_dict):
        new = key
        for pattern, replacement in _RENAMES:
            new = re.sub(pattern, replacement, new)
        if new != key:
            state_dict[new] = state_dict.pop(key)


def _grouped(kwargs: dict) -> dict:
    """Flat module keyword arguments (format <= 2) in the current layout."""
    out = {}
    for key, value in kwargs.items():
        if key in _GROUPED:
            group, name = _GROUPED[key]
            out.setdefault(group, {})[name] = value
        elif key in _SWITCHES:
            if value != _SWITCHES[key]:
                out.setdefault("ablation", {})[key] = value
        else:
            out[key] = value
    return out


def _upgrade_hint(version) -> str:
    return (
        f"Upgrade scdoloris (pip install -U scdoloris), or install scdoloris {version}, to load it."
    )
