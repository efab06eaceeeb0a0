"""Messy inputs users really pass: each gets a clear error or a documented handling."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

from scdoloris import DolorisModel, ablations

SMALL = {"n_hidden": 32, "n_layers": 1, "n_cond": 16, "n_mask_hidden": 16, "n_graph_hidden": 8}


def toy(n_per: int = 20, n_genes: int = 15, seed: int = 0, labels=None) -> ad.AnnData:
    """Log-normalised toy screen: controls, two genes and their pair, two cell types."""
    rng = np.random.default_rng(seed)
    labels = labels or ["ctrl", "g1", "g2", "g1+g2"]
    obs_labels = [lab for lab in labels for _ in range(n_per)]
    counts = rng.poisson(1.5, size=(len(obs_labels), n_genes)).astype(np.float32)
    X = np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": obs_labels, "cell_type": ["a", "b"] * (len(obs_labels) // 2)},
        index=[f"cell{i}" for i in range(len(obs_labels))],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


def trained(adata: ad.AnnData, **setup) -> DolorisModel:
    scvi.settings.seed = 0
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", **setup)
    model = DolorisModel(adata, **SMALL)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


def unchanged(adata: ad.AnnData):
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X)
    return X, adata.obs.copy(), adata.var.copy()


@pytest.mark.parametrize("kind", ["dense32", "dense64", "csr", "csc"])
def test_dense_sparse_and_float64_inputs_train_and_predict(kind):
    adata = toy()
    if kind == "dense64":
        adata.X = adata.X.astype(np.float64)
    elif kind in ("csr", "csc"):
        adata.X = getattr(sparse, f"{kind}_matrix")(adata.X)
    model = trained(adata)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    before = unchanged(ctrl)
    pred = model.predict(ctrl, "g1+g2", n_steps=3, progress_bar=False)
    assert pred.shape == (ctrl.n_obs, adata.n_vars) and pred.X.dtype == np.float32
    np.testing.assert_array_equal(unchanged(ctrl)[0], before[0])
    pd.testing.assert_frame_equal(ctrl.obs, before[1])


def test_integer_dtype_raw_counts_are_refused_with_the_fix():
    adata = toy()
    adata.X = np.rint(np.expm1(adata.X)).astype(np.int64)
    with pytest.raises(ValueError, match=r"raw counts.*sc.pp.normalize_total"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_are_refused(bad):
    adata = toy()
    adata.X[2, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


def test_numbers_as_perturbation_labels_are_read_as_strings():
    adata = toy(labels=["0", "11", "12"])
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(int)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="0")
    assert DolorisModel(adata, **SMALL).vocabulary_ == ["11", "12"]


@pytest.mark.parametrize("spelling", ["Ctrl", "control", "non-targeting"])
def test_control_group_spelled_differently_suggests_the_right_one(spelling):
    adata = toy()
    with pytest.raises(ValueError, match="control_group='ctrl'"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group=spelling)


def test_duplicate_var_names_are_refused():
    adata = toy()
    adata.var_names = ["g0"] * 2 + list(adata.var_names[2:])
    with pytest.raises(ValueError, match="var_names_make_unique"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


@pytest.mark.parametrize("label", ["g1+", "+g1", "g1++g2"])
def test_malformed_labels_in_training_data_are_refused(label):
    adata = toy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(object)
    adata.obs.iloc[25, 0] = label
    with pytest.raises(ValueError, match="empty part"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


def test_spaces_and_repeats_in_training_labels_mean_the_same_condition():
    adata = toy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(object)
    adata.obs.iloc[60, 0] = " g2 + g1 "
    adata.obs.iloc[21, 0] = "g1+g1"
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation")
    assert DolorisModel(adata, **SMALL).vocabulary_ == ["g1", "g2"]


def test_zero_cells_and_a_single_cell():
    adata = toy()
    with pytest.raises(ValueError, match="no cells"):
        DolorisModel.setup_anndata(adata[:0].copy(), perturbation_key="perturbation")
    model = trained(adata)
    one = adata[:1].copy()
    pred = model.predict(one, "g1", n_steps=3, progress_bar=False)
    assert pred.n_obs == 1


def test_backed_anndata_predicts_like_in_memory(tmp_path):
    adata = toy()
    model = trained(adata)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    ctrl.X = sparse.csr_matrix(ctrl.X)
    ctrl.write_h5ad(tmp_path / "ctrl.h5ad")
    backed = ad.read_h5ad(tmp_path / "ctrl.h5ad", backed="r")
    a = model.predict(ctrl, "g1", n_steps=3, seed=2, progress_bar=False)
    b = model.predict(backed, "g1", n_steps=3, seed=2, progress_bar=False)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-6, atol=1e-6)


def test_backed_anndata_trains(tmp_path):
    adata = toy()
    adata.X = sparse.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "t.h5ad")
    backed = ad.read_h5ad(tmp_path / "t.h5ad", backed="r")
    DolorisModel.setup_anndata(backed, perturbation_key="perturbation")
    model = DolorisModel(backed, n_hidden=16, n_layers=1, n_cond=8, n_mask_hidden=8)
    model.train(max_epochs=1, max_steps=2, batch_size=16, enable_progress_bar=False)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    pred = model.predict(ctrl, "g1", n_steps=2, progress_bar=False)
    assert np.isfinite(pred.X).all()
    # with every condition under the subsampling cap the statistics are those of memory
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation")
    ref = DolorisModel(adata, n_hidden=16, n_layers=1, n_cond=8, n_mask_hidden=8)
    from operator import attrgetter

    names = ("x_max", "control_states.mean", "control_states.std", "prior.token_expressed_effect")
    for name in names:
        np.testing.assert_allclose(
            attrgetter(name)(model.module), attrgetter(name)(ref.module), rtol=1e-5, atol=1e-6
        )


def test_backed_anndata_statistics_from_a_per_condition_sample(tmp_path, monkeypatch):
    import scdoloris.model._data as model_data

    monkeypatch.setattr(model_data, "BACKED_CELLS_PER_CONDITION", 3)
    adata = toy()
    adata.write_h5ad(tmp_path / "t.h5ad")
    backed = ad.read_h5ad(tmp_path / "t.h5ad", backed="r")
    DolorisModel.setup_anndata(backed, perturbation_key="perturbation")
    model = DolorisModel(backed, n_hidden=16, n_layers=1, n_cond=8, n_mask_hidden=8)
    assert float(model.module.x_max) == pytest.approx(float(np.asarray(adata.X).max()))
    model.train(max_epochs=1, max_steps=1, batch_size=16, enable_progress_bar=False)


def test_unknown_gene_and_cell_type_are_named():
    model = trained(toy(), cell_type_key="cell_type")
    ctrl = toy()[:10].copy()
    with pytest.raises(ValueError, match="'XYZ1'"):
        model.predict(ctrl, "XYZ1+g1", progress_bar=False)
    # an unseen but measured gene is embedded through the gene graph
    assert model.predict(ctrl, "g9", cell_type="a", n_steps=2, progress_bar=False).n_obs == 10
    ctrl.obs["cell_type"] = "z"
    with pytest.raises(ValueError, match=r"not trained on: \['z'\]"):
        model.predict(ctrl, "g1", progress_bar=False)


def test_a_model_trained_on_another_gene_set_names_the_missing_genes():
    model = trained(toy())
    other = toy()
    other.var_names = [f"h{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="lacks 15 of the model's 15 genes"):
        model.predict(other, "g1", progress_bar=False)


def test_keyboard_interrupt_keeps_a_usable_model():
    from lightning.pytorch.callbacks import Callback

    class Interrupt(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    adata = toy()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation")
    model = DolorisModel(adata, **SMALL)
    with pytest.warns(UserWarning, match="interrupted after"):
        model.train(max_epochs=50, enable_progress_bar=False, callbacks=[Interrupt()])
    assert 1 <= len(model.history["train_loss"]) <= 2  # the epochs done so far are kept
    assert model.is_trained
    ctrl = adata[adata.obs["perturbation"] == "ctrl"]
    assert model.predict(ctrl, "g1", n_steps=3, progress_bar=False).n_obs == ctrl.n_obs


def test_load_in_a_fresh_process_gives_identical_predictions(tmp_path):
    adata = toy()
    model = trained(adata)
    model.save(tmp_path / "m")
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    ctrl.write_h5ad(tmp_path / "ctrl.h5ad")
    here = model.predict(ctrl, "g1+g2", n_steps=4, seed=11, progress_bar=False)
    code = (
        "import anndata as ad, numpy as np, scdoloris;"
        f"m = scdoloris.DolorisModel.load({str(tmp_path / 'm')!r});"
        f"c = ad.read_h5ad({str(tmp_path / 'ctrl.h5ad')!r});"
        "p = m.predict(c, 'g1+g2', n_steps=4, seed=11, progress_bar=False);"
        f"np.save({str(tmp_path / 'p.npy')!r}, p.X)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), here.X)
    assert here.uns["scdoloris"]["version"]


def test_graph_mask_network_and_coherent_masks_on_toy_data():
    adata = toy()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation")
    model = ablations.variant("graph mask network").build(adata, **SMALL)
    model.train(max_epochs=2, enable_progress_bar=False, stage="all")
    model.train(max_epochs=1, enable_progress_bar=False, stage="mask")
    assert "mask_loss_train" in model.history
    ctrl = adata[adata.obs["perturbation"] == "ctrl"]
    with ablations.variant("coherent mask").applied(model):
        pred = model.predict(ctrl, ["g1", "g1+g2"], n_steps=3, progress_bar=False)
    matched = pred.uns["scdoloris"]["mask_matched_conditions"]
    assert set(matched) == {"g1", "g1+g2"}


def test_setup_with_a_single_cell_is_refused_or_handled():
    adata = toy()[:1].copy()  # one control cell, nothing perturbed
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation")
    model = DolorisModel(adata, **SMALL)
    assert model.vocabulary_ == []


def test_a_model_saved_before_the_unseen_and_cell_type_priors_loads_with_them_off(
    tmp_path, tiny_simulated_model
):
    import torch

    from scdoloris import DolorisModel

    adata, model = tiny_simulated_model(n_cells=150, n_genes=40)
    model.module.prior.unseen_detection_effect.fill_(1.0)
    model.is_trained_ = True  # saving needs no training
    model.save(str(tmp_path / "m"))
    path = tmp_path / "m" / "model.pt"
    saved = torch.load(path, weights_only=False)
    saved["attr_dict"]["file_format_"] = 1  # as written by the earlier version (format 1)
    for key in ("unseen_expressed_effect", "unseen_detection_effect"):
        del saved["model_state_dict"][f"prior.{key}"]
    torch.save(saved, path)
    loaded = DolorisModel.load(str(tmp_path / "m"))
    assert not loaded.module.prior.unseen_detection_effect.any()  # off, as that version behaved
    with pytest.raises(ValueError, match="unseen_prior must be one of"):
        loaded.module.prior.unseen = "nonee"


@pytest.mark.parametrize(
    ("mask", "start"),
    [("coupled", "latent"), ("coherent", "latent"), ("bernoulli", "noise")],
)
def test_a_conditions_cells_do_not_depend_on_the_other_conditions_of_the_call(mask, start):
    adata = toy(n_per=30)
    model = trained(adata)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    settings = {"seed": 0, "n_steps": 3, "progress_bar": False}
    settings["batch_size"] = 7  # several batches: the streams run across them
    with ablations.variant(mask=mask, start=start).applied(model):
        many = model.predict(ctrl, ["g1", "g2+g1", "g2"], **settings)
        alone = model.predict(ctrl, "g1+g2", **settings)
        first = model.predict(ctrl, ["g2", "g1"], **settings)
    np.testing.assert_array_equal(many[many.obs["perturbation"] == "g1+g2"].X, alone.X)
    np.testing.assert_array_equal(
        first[first.obs["perturbation"] == "g1"].X, many[many.obs["perturbation"] == "g1"].X
    )


SIGTERM_SCRIPT = """
import os, signal
import scanpy as sc, scvi
from lightning.pytorch.callbacks import Callback
from scdoloris import DolorisModel
from scdoloris.datasets import simulate

class Terminate(Callback):  # the cluster scheduler stops the job during the second epoch
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

scvi.settings.seed = 0
adata = simulate(n_cells=120, n_genes=40, seed=0)
sc.pp.normalize_total(adata)
sc.pp.log1p(adata)
DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="ctrl")
model = DolorisModel(adata, n_hidden=16, n_layers=1, n_cond=8, n_graph_hidden=8, n_mask_hidden=8)
try:
    model.train(max_epochs=50, enable_progress_bar=False, callbacks=[Terminate()])
    print("the script went on after train()")
except SystemExit as stop:
    ctrl = adata[adata.obs["perturbation"] == "ctrl"]
    pred = model.predict(ctrl, "ctrl", n_steps=2, progress_bar=False)
    print("kept", len(model.history["train_loss"]), "epochs, trained:", model.is_trained,
          "predicted:", pred.n_obs, flush=True)
    raise
"""


def test_sigterm_keeps_the_epochs_and_exits_non_zero(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 143, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "went on after train()" not in proc.stdout
    assert "kept 2 epochs, trained: True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "Training stopped by SIGTERM after 2 epoch(s)" in proc.stderr


# ---------------------------------------------------------------- the saved file format
# DolorisModule's keyword arguments in the current FILE_FORMAT. A save records module_kwargs_,
# which an older scdoloris passes to its own DolorisModule: when this list changes, bump
# FILE_FORMAT in src/scdoloris/model/_file_format.py (older versions then refuse the new files with
# a clear message) and update the list here.
MODULE_KWARGS = {
    4: {
        "ablation", "cell_type_dropout", "data", "denoiser_kwargs", "graph_kwargs", "mask_kwargs",
        "molecule_kwargs", "n_cell_types", "n_cond", "n_genes", "n_timesteps", "n_vocab",
        "share_trunk",
    },
    3: {
        "ablation", "cell_type_dropout", "data", "denoiser_kwargs", "graph_kwargs", "mask_kwargs",
        "molecule_kwargs", "n_cell_types", "n_cond", "n_genes", "n_timesteps", "n_vocab",
        "share_trunk",
    },
    2: {
        "cell_type_dropout", "cell_type_prior", "dropout", "mask_control_state", "mask_network",
        "n_cell_types", "n_cond", "n_dose_levels", "n_edges", "n_gene_edges", "n_genes",
        "n_graph_hidden", "n_hidden", "n_layers", "n_mask_hidden", "n_molecule_features",
        "n_molecules", "n_node_features", "n_nodes", "n_timesteps", "n_vocab", "prior",
        "share_trunk", "source_on_all_genes", "target_control_state", "target_on_controls",
        "token_dropout", "unseen_prior", "use_control_state", "use_mask",
    },
}  # fmt: skip


def test_file_format_is_bumped_when_the_module_kwargs_change():
    import inspect

    from scdoloris.model._doloris import FILE_FORMAT
    from scdoloris.module import DolorisModule

    now = set(inspect.signature(DolorisModule).parameters)
    assert FILE_FORMAT in MODULE_KWARGS, f"list DolorisModule's arguments of format {FILE_FORMAT}"
    assert now == MODULE_KWARGS[FILE_FORMAT], (
        f"DolorisModule's arguments changed ({sorted(now ^ MODULE_KWARGS[FILE_FORMAT])}): bump "
        "FILE_FORMAT and list the new ones in MODULE_KWARGS"
    )


def _saved(tmp_path, tiny_simulated_model):
    """A saved tiny model and its model.pt, loaded for editing."""
    import torch

    _, model = tiny_simulated_model(n_cells=150, n_genes=40)
    model.is_trained_ = True
    model.save(str(tmp_path / "m"))
    path = tmp_path / "m" / "model.pt"
    return path, torch.load(path, weights_only=False)


def test_a_save_of_a_newer_format_is_refused_with_the_fix(tmp_path, tiny_simulated_model):
    import torch

    from scdoloris.model._doloris import FILE_FORMAT

    path, saved = _saved(tmp_path, tiny_simulated_model)
    assert saved["attr_dict"]["file_format_"] == FILE_FORMAT
    saved["attr_dict"]["file_format_"] = FILE_FORMAT + 1
    saved["attr_dict"]["scdoloris_version_"] = "9.0.0"
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"newer scdoloris \(9.0.0\).*pip install -U scdoloris"):
        DolorisModel.load(str(tmp_path / "m"))
    saved["attr_dict"]["file_format_"] = 0  # not a format any version wrote
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"not hold a scdoloris model in a known file format"):
        DolorisModel.load(str(tmp_path / "m"))


def test_unknown_module_options_are_a_newer_save_not_a_type_error(tmp_path, tiny_simulated_model):
    import torch

    path, saved = _saved(tmp_path, tiny_simulated_model)
    saved["attr_dict"]["module_kwargs_"]["n_future_heads"] = 4  # an option of a later version
    saved["attr_dict"]["scdoloris_version_"] = "0.3.0"
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"newer scdoloris \(0.3.0\).*'n_future_heads'"):
        DolorisModel.load(str(tmp_path / "m"))


def test_a_format_1_save_loads_and_is_saved_again_in_the_current_format(
    tmp_path, tiny_simulated_model
):
    import torch

    from scdoloris.model._doloris import FILE_FORMAT

    path, saved = _saved(tmp_path, tiny_simulated_model)
    saved["attr_dict"]["file_format_"] = 1
    del saved["attr_dict"]["module_kwargs_"]["cell_type_dropout"]  # as format 1 wrote it
    torch.save(saved, path)
    loaded = DolorisModel.load(str(tmp_path / "m"))
    assert loaded.module.cell_type_dropout == 0.0
    loaded.save(str(tmp_path / "again"))
    again = torch.load(tmp_path / "again" / "model.pt", weights_only=False)
    assert again["attr_dict"]["file_format_"] == FILE_FORMAT
