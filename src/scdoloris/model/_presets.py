"""Named hyperparameter presets of DolorisModel."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # Trains in a few minutes on a laptop CPU for a few thousand cells and ~500-2000 genes.
    "default": {
        "n_hidden": 512,
        "n_layers": 3,
        "n_cond": 128,
        "n_graph_hidden": 64,
        "n_mask_hidden": 256,
    },
    # The paper's widths (hidden and time embedding 1024, gene-wise embedding 512, gene init
    # dimension 256); meant for a GPU.
    "paper": {
        "n_hidden": 1024,
        "n_layers": 4,
        "n_cond": 512,
        "n_graph_hidden": 256,
        "n_mask_hidden": 1024,
    },
}


def module_options(
    preset: str, sizes: dict, share_trunk: bool, shapes: dict, module_kwargs: dict
) -> dict:
    """The keyword arguments of :class:`~scdoloris.module.DolorisModule` (saved with the model).

    The preset's sizes, overridden by the ``sizes`` given (None: the preset's), then by the
    user's ``module_kwargs`` (keyword dicts such as ``denoiser_kwargs`` update the
    sub-network's settings); ``shapes`` are the data's.
    """
    from ..module._doloris import CELL_TYPE_DROPOUT

    size = {**PRESETS[preset], **{k: v for k, v in sizes.items() if v is not None}}
    options = {
        **{k: v for k, v in shapes.items() if not isinstance(v, dict)},
        "n_cond": size["n_cond"],
        "share_trunk": share_trunk,
        # recorded so that a saved model keeps it if the default changes
        "cell_type_dropout": CELL_TYPE_DROPOUT,
        "denoiser_kwargs": {"n_hidden": size["n_hidden"], "n_layers": size["n_layers"]},
        "mask_kwargs": {"n_hidden": size["n_mask_hidden"]},
        "graph_kwargs": {**shapes["graph_kwargs"], "n_hidden": size["n_graph_hidden"]},
    }
    if "molecule_kwargs" in shapes:
        options["molecule_kwargs"] = dict(shapes["molecule_kwargs"])
    for key, value in module_kwargs.items():
        if key.endswith("_kwargs") and key in options and isinstance(value, dict):
            value = {**options[key], **value}
        options[key] = value
    return options
