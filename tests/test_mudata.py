"""MuData input: expression from one modality, perturbations from a guide modality's obs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scdoloris import DolorisModel

md = pytest.importorskip("mudata")

SMALL = {"n_hidden": 32, "n_layers": 1, "n_cond": 16, "n_mask_hidden": 16, "n_graph_hidden": 8}


def guide_screen(n_per: int = 25, n_genes: int = 15, seed: int = 0):
    """An expression modality (with cell types) and a guide modality (with guide assignments)."""
    rng = np.random.default_rng(seed)
    labels = [lab for lab in ["NT", "g1", "g2", "g1+g2"] for _ in range(n_per)]
    names = [f"cell{i}" for i in range(len(labels))]
    counts = rng.poisson(1.5, size=(len(labels), n_genes)).astype(np.float32)
    X = np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    rna = ad.AnnData(
        X=X,
        obs=pd.DataFrame({"cell_type": ["a", "b"] * (len(labels) // 2)}, index=names),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    guides = ad.AnnData(
        X=rng.poisson(3.0, size=(len(labels), 4)).astype(np.float32),
        obs=pd.DataFrame({"assigned_guide": labels}, index=names),
        var=pd.DataFrame(index=["NT_1", "g1_1", "g2_1", "g2_2"]),
    )
    return md.MuData({"rna": rna, "gdo": guides})


@pytest.fixture(scope="module")
def mudata_model():
    import scvi

    mdata = guide_screen()
    scvi.settings.seed = 0
    DolorisModel.setup_mudata(
        mdata,
        rna_modality="rna",
        perturbation_key="gdo:assigned_guide",
        control_group="NT",
        cell_type_key="cell_type",
    )
    model = DolorisModel(mdata, **SMALL)
    model.train(max_epochs=3, enable_progress_bar=False)
    return model, mdata


def test_setup_mudata_trains_on_the_expression_modality(mudata_model):
    model, mdata = mudata_model
    assert model.adata_var_names == list(mdata.mod["rna"].var_names)
    assert model.vocabulary_ == ["g1", "g2"] and model.cell_types_ == ["a", "b"]
    assert model.is_trained_


def test_predict_from_mudata_or_its_expression_modality(mudata_model):
    model, mdata = mudata_model
    ctrl = mdata[mdata.mod["gdo"].obs["assigned_guide"] == "NT"].copy()
    a = model.predict(ctrl, "g1+g2", n_steps=3, seed=1, progress_bar=False)
    b = model.predict(ctrl.mod["rna"], "g1+g2", n_steps=3, seed=1, progress_bar=False)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.n_obs == ctrl.n_obs and list(a.var_names) == model.adata_var_names
    assert list(a.obs["cell_type"].astype(str)) == list(ctrl.mod["rna"].obs["cell_type"])
    assert model.get_latent(ctrl).shape == (ctrl.n_obs, ctrl.mod["rna"].n_vars)


def test_mudata_model_saves_and_loads(mudata_model, tmp_path):
    model, mdata = mudata_model
    ctrl = mdata.mod["rna"][:10].copy()
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    a = model.predict(ctrl, "g2", n_steps=3, seed=2, progress_bar=False)
    b = loaded.predict(ctrl, "g2", n_steps=3, seed=2, progress_bar=False)
    np.testing.assert_array_equal(a.X, b.X)
    again = DolorisModel.load(tmp_path / "m", adata=mdata)
    assert again.adata is mdata


def test_setup_mudata_finds_columns_in_any_obs_and_names_bad_keys():
    mdata = guide_screen()
    mdata.obs["condition"] = mdata.mod["gdo"].obs["assigned_guide"]  # a global column
    DolorisModel.setup_mudata(mdata, perturbation_key="condition", control_group="NT")
    DolorisModel.setup_mudata(mdata, perturbation_key="assigned_guide", control_group="NT")
    with pytest.raises(KeyError, match="'guide' is not a column of mdata.obs"):
        DolorisModel.setup_mudata(mdata, perturbation_key="guide", control_group="NT")
    with pytest.raises(KeyError, match="rna_modality='prot'"):
        DolorisModel.setup_mudata(mdata, rna_modality="prot", perturbation_key="condition")
    with pytest.raises(ValueError, match="control_group='NT'"):
        DolorisModel.setup_mudata(mdata, perturbation_key="condition", control_group="ctrl")


def test_setup_mudata_refuses_modalities_with_other_cells():
    mdata = guide_screen()
    fewer = md.MuData({"rna": mdata.mod["rna"][:50].copy(), "gdo": mdata.mod["gdo"]})
    with pytest.raises(ValueError, match="Modality 'rna' does not hold the same cells"):
        DolorisModel.setup_mudata(fewer, perturbation_key="gdo:assigned_guide", control_group="NT")
    fewer = md.MuData({"rna": mdata.mod["rna"], "gdo": mdata.mod["gdo"][:50].copy()})
    # depending on mudata's pull_on_update option the column was copied into mdata.obs (then
    # 50 cells lack a guide) or is read from the modality (then the cells differ)
    with pytest.raises(ValueError, match="has 50 missing values|'gdo' does not hold the same"):
        DolorisModel.setup_mudata(fewer, perturbation_key="gdo:assigned_guide", control_group="NT")


def test_prediction_of_a_mudata_needs_a_model_set_up_with_mudata():
    mdata = guide_screen()
    rna = mdata.mod["rna"].copy()
    rna.obs["perturbation"] = mdata.mod["gdo"].obs["assigned_guide"].to_numpy()
    DolorisModel.setup_anndata(rna, perturbation_key="perturbation", control_group="NT")
    model = DolorisModel(rna, **SMALL)
    with pytest.raises(TypeError, match="set up with an AnnData"):
        model.predict(mdata, "g1", progress_bar=False)
