"""The unknown cell type of ``cell_type_dropout``: trained on a fraction of the cells, used at
prediction for the cell types without perturbed training cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdoloris import DolorisModel
from scdoloris.module import ConditionEncoder, DolorisModule

HELD_OUT = "type_2"


@pytest.fixture(scope="module")
def held_out_type_model():
    """A tiny model trained on simulated cells without the perturbed cells of ``type_2``."""
    import scanpy as sc
    import scvi

    from scdoloris.datasets import simulate

    adata = simulate(n_cells=400, n_genes=60, n_single=6, n_pairs=0, seed=0)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    keep = ~((adata.obs["cell_type"] == HELD_OUT) & (adata.obs["perturbation"] != "ctrl"))
    train = adata[keep.to_numpy()].copy()
    DolorisModel.setup_anndata(
        train, perturbation_key="perturbation", control_group="ctrl", cell_type_key="cell_type"
    )
    scvi.settings.seed = 0
    model = DolorisModel(
        train,
        n_hidden=16,
        n_layers=1,
        n_cond=8,
        n_graph_hidden=8,
        n_mask_hidden=8,
        cell_type_dropout=0.5,
    )
    model.train(max_steps=20, batch_size=64, enable_progress_bar=False)
    controls = adata[(adata.obs["perturbation"] == "ctrl").to_numpy()].copy()
    single = next(p for p in train.obs["perturbation"].unique() if p != "ctrl")
    return model, controls, single


def test_embedding_is_the_unknown_one_exactly_where_flagged():
    enc = ConditionEncoder(3, 4, perturbation=None, unknown_cell_type=True)
    cell_type = torch.tensor([0, 1, 2, 1])
    unknown = torch.tensor([False, True, False, False])
    emb = enc.cell_type_embedding(cell_type, unknown)
    torch.testing.assert_close(emb[1], enc.unknown_cell_type)
    torch.testing.assert_close(emb[[0, 2, 3]], enc.cell_type.weight[[0, 2, 1]])
    torch.testing.assert_close(enc.cell_type_embedding(cell_type), enc.cell_type.weight[cell_type])


def _module(dropout: float, n_cell_types: int = 3) -> DolorisModule:
    return DolorisModule(
        n_genes=5,
        n_cell_types=n_cell_types,
        n_vocab=2,
        n_cond=4,
        denoiser_kwargs={"n_hidden": 8, "n_layers": 1},
        mask_kwargs={"n_hidden": 4},
        graph_kwargs={"n_nodes": 2, "n_node_features": 4, "n_edges": 2, "n_hidden": 4},
        cell_type_dropout=dropout,
    )


def test_unknown_cells_are_a_random_fraction_in_training_and_the_unperturbed_types_after():
    module = _module(0.25)
    module.perturbed_cell_type.copy_(torch.tensor([True, False, True]))
    cell_type = torch.tensor([0, 1, 2] * 4000)
    module.train()
    torch.manual_seed(0)
    share = module.unknown_cell_types(cell_type).float().mean().item()
    assert abs(share - 0.25) < 0.02, share
    module.eval()
    np.testing.assert_array_equal(
        module.unknown_cell_types(torch.tensor([0, 1, 2, 1])).numpy(), [False, True, False, True]
    )


def test_without_dropout_or_with_one_cell_type_there_is_no_unknown_embedding():
    assert _module(0.0).unknown_cell_types(torch.tensor([0, 1])) is None
    single = _module(0.5, n_cell_types=1)
    assert single.cell_type_dropout == 0.0
    assert not hasattr(single.condition, "unknown_cell_type")
    assert "perturbed_cell_type" not in dict(single.named_buffers())
    with pytest.raises(ValueError, match="cell_type_dropout must be in"):
        _module(1.5)


def test_model_flags_the_types_never_seen_perturbed(held_out_type_model):
    model, *_ = held_out_type_model
    assert HELD_OUT not in model.perturbed_cell_types_
    flags = dict(zip(model.cell_types_, model.module.perturbed_cell_type.tolist(), strict=True))
    assert flags == {c: c != HELD_OUT for c in model.cell_types_}


def test_prediction_uses_the_unknown_type_only_for_the_held_out_type(held_out_type_model):
    model, controls, single = held_out_type_model
    # the networks' own predictions (a calibration may lean on the baseline for a held-out type)
    kw = {"seed": 0, "progress_bar": False, "n_steps": 5, "calibrate": False}

    def both(cell_type):
        cells = controls[(controls.obs["cell_type"] == cell_type).to_numpy()]
        unknown = model.predict(cells, single, cell_type=cell_type, **kw).X
        model.module.cell_type_dropout = 0.0  # the cell type's own embedding
        try:
            own = model.predict(cells, single, cell_type=cell_type, **kw).X
        finally:
            model.module.cell_type_dropout = 0.5
        return unknown, own

    unknown, own = both(HELD_OUT)
    assert not np.allclose(unknown, own)
    unknown, own = both("type_0")
    np.testing.assert_array_equal(unknown, own)


def test_save_load_keeps_the_flags_and_the_unknown_embedding(held_out_type_model, tmp_path):
    model, controls, single = held_out_type_model
    model.save(tmp_path / "m", overwrite=True)
    loaded = DolorisModel.load(tmp_path / "m")
    torch.testing.assert_close(
        loaded.module.perturbed_cell_type, model.module.perturbed_cell_type.cpu()
    )
    torch.testing.assert_close(
        loaded.module.condition.unknown_cell_type, model.module.condition.unknown_cell_type.cpu()
    )
    cells = controls[(controls.obs["cell_type"] == HELD_OUT).to_numpy()]
    kw = {"cell_type": HELD_OUT, "seed": 0, "progress_bar": False, "n_steps": 5}
    np.testing.assert_array_equal(
        loaded.predict(cells, single, **kw).X, model.predict(cells, single, **kw).X
    )


def test_a_model_saved_before_the_unknown_cell_type_loads_without_it(held_out_type_model, tmp_path):
    model, controls, single = held_out_type_model
    model.save(tmp_path / "m", overwrite=True)
    path = tmp_path / "m" / "model.pt"
    saved = torch.load(path, weights_only=False)
    # as written by the earlier version (file format 1): no such argument, parameters or buffer
    saved["attr_dict"]["file_format_"] = 1
    del saved["attr_dict"]["module_kwargs_"]["cell_type_dropout"]
    for key in list(saved["model_state_dict"]):
        if key.endswith("unknown_cell_type") or key == "perturbed_cell_type":
            del saved["model_state_dict"][key]
    torch.save(saved, path)
    loaded = DolorisModel.load(tmp_path / "m")
    assert loaded.module.cell_type_dropout == 0.0
    assert loaded.module.unknown_cell_types(torch.tensor([0, 1, 2])) is None
    cells = controls[(controls.obs["cell_type"] == HELD_OUT).to_numpy()]
    kw = {"cell_type": HELD_OUT, "seed": 0, "progress_bar": False, "n_steps": 5}
    model.module.cell_type_dropout = 0.0  # the trained model with its own embeddings
    try:
        expected = model.predict(cells, single, **kw).X
    finally:
        model.module.cell_type_dropout = 0.5
    np.testing.assert_array_equal(loaded.predict(cells, single, **kw).X, expected)


def test_the_source_network_and_the_latent_never_see_the_unknown_type(held_out_type_model):
    model, controls, _ = held_out_type_model
    cells = controls[(controls.obs["cell_type"] == HELD_OUT).to_numpy()]
    unknown = model.get_latent(cells, cell_type=HELD_OUT, seed=0, n_steps=5)
    model.module.cell_type_dropout = 0.0
    try:
        own = model.get_latent(cells, cell_type=HELD_OUT, seed=0, n_steps=5)
    finally:
        model.module.cell_type_dropout = 0.5
    np.testing.assert_array_equal(unknown, own)
