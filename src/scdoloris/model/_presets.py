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
