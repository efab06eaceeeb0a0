"""DolorisModel end to end on the shared Norman subset, and its input checks on small data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scdoloris import DolorisModel, ablations
from scdoloris.metrics import e_distance


def _controls(adata):
    return adata[adata.obs["perturbation"] == "control"].copy()


def _snapshot(adata):
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X)
    return X, adata.obs.copy(), adata.var.copy()


def _assert_unchanged(adata, snap):
    X, obs, var = snap
    now = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    np.testing.assert_array_equal(now, X)
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)


# ---------------------------------------------------------------- end to end (real data)
def test_history_has_the_named_losses(norman_model):
    history = norman_model.history
    for key in ("train_loss", "source_loss_train", "target_loss_train", "mask_loss_train"):
        assert key in history, key
    loss = history["train_loss"].iloc[:, 0].to_numpy()
    assert loss[-1] < loss[0]


def test_encoded_control_latent_is_standard_scale(norman_model, norman):
    z = norman_model.get_latent(_controls(norman))
    sd = z.std(0)
    assert np.all(np.isfinite(z))
    assert 0.5 < np.median(sd) < 2.0
    assert np.mean((sd > 0.5) & (sd < 2.0)) > 0.9


def test_seen_single_is_closer_to_real_cells_than_controls(norman_model, norman):
    ctrl = _controls(norman)
    real = norman[norman.obs["perturbation"] == "KLF1"].X.toarray()
    pred = norman_model.predict(ctrl, "KLF1", progress_bar=False)
    e_model = e_distance(pred.X, real)
    e_control = e_distance(ctrl.X.toarray(), real)
    assert e_model < e_control, (e_model, e_control)


def test_pair_order_does_not_matter(norman_model, norman):
    ctrl = _controls(norman)[:40]
    a = norman_model.predict(ctrl, "KLF1+MAP2K6", seed=3, progress_bar=False)
    b = norman_model.predict(ctrl, "MAP2K6+KLF1", seed=3, progress_bar=False)
    np.testing.assert_array_equal(a.X, b.X)
    assert set(b.obs["perturbation"]) == {"KLF1+MAP2K6"}


def test_prediction_layout_and_input_untouched(norman_model, norman):
    ctrl = _controls(norman)[:30]
    snap = _snapshot(ctrl)
    pred = norman_model.predict(ctrl, ["KLF1", "KLF1+MAP2K6"], n_steps=10, progress_bar=False)
    _assert_unchanged(ctrl, snap)
    assert pred.n_obs == 60
    assert list(pred.var_names) == list(norman.var_names)
    assert list(pred.obs.columns) == ["perturbation", "cell_type", "control_cell", "predicted"]
    assert list(pred.obs["perturbation"].astype(str)) == ["KLF1"] * 30 + ["KLF1+MAP2K6"] * 30
    assert list(pred.obs["control_cell"]) == list(ctrl.obs_names) * 2
    assert pred.obs["predicted"].all()
    assert pred.uns["scdoloris"]["n_steps"] == 10
    assert {"seed", "version", "mask"} <= set(pred.uns["scdoloris"])
    assert np.all(pred.X >= 0) and np.all(np.isfinite(pred.X))
    assert 0.5 < (pred.X == 0).mean() < 1.0  # the mask keeps predictions sparse


def test_genes_matched_by_name(norman_model, norman):
    ctrl = _controls(norman)[:20]
    shuffled = ctrl[:, np.random.default_rng(0).permutation(ctrl.n_vars)].copy()
    extra = ad.AnnData(
        X=np.hstack([shuffled.X.toarray(), np.ones((shuffled.n_obs, 2), np.float32)]),
        obs=shuffled.obs,
        var=pd.DataFrame(index=list(shuffled.var_names) + ["EXTRA1", "EXTRA2"]),
    )
    a = norman_model.predict(ctrl, "KLF1", seed=1, n_steps=10, progress_bar=False)
    b = norman_model.predict(extra, "KLF1", seed=1, n_steps=10, progress_bar=False)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-5)


def test_same_seed_same_prediction_and_different_seed_differs(norman_model, norman):
    ctrl = _controls(norman)[:20]
    a = norman_model.predict(ctrl, "KLF1", seed=5, n_steps=10, progress_bar=False)
    b = norman_model.predict(ctrl, "KLF1", seed=5, n_steps=10, progress_bar=False)
    c = norman_model.predict(ctrl, "KLF1", seed=6, n_steps=10, progress_bar=False)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)


def test_ablation_options_run(norman_model, norman):
    ctrl = _controls(norman)[:10]
    with ablations.variant(mask="none").applied(norman_model):
        dense = norman_model.predict(ctrl, "KLF1", n_steps=5, progress_bar=False)
    assert (dense.X == 0).mean() < 0.5  # without a mask the output is dense
    with ablations.variant("no latent").applied(norman_model):
        noise = norman_model.predict(ctrl, "KLF1", n_steps=5, progress_bar=False)
    assert noise.shape == dense.shape
    probs = norman_model.predict(
        ctrl, "KLF1", n_steps=5, return_probabilities=True, progress_bar=False
    )
    p = probs.layers["expression_probability"]
    assert p.shape == probs.shape and p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"perturbation": "KLF2"}, ValueError, "Unknown perturbation token 'KLF2'.*KLF1"),
        ({"perturbation": "KLF1", "cell_type": "HeLa"}, ValueError, "Unknown cell type 'HeLa'"),
        ({"perturbation": "KLF1+"}, ValueError, "empty part"),
        ({"perturbation": []}, ValueError, "at least one perturbation"),
    ],
)
def test_predict_errors(norman_model, norman, kwargs, error, match):
    with pytest.raises(error, match=match):
        norman_model.predict(_controls(norman)[:5], progress_bar=False, **kwargs)


def test_unknown_ablation_switch_values_are_refused():
    with pytest.raises(ValueError, match="mask must be"):
        ablations.variant(mask="maybe")


def test_predict_input_errors(norman_model, norman):
    ctrl = _controls(norman)
    with pytest.raises(ValueError, match="lacks 3 of the model's 500 genes"):
        norman_model.predict(ctrl[:5, 3:], "KLF1", progress_bar=False)
    with pytest.raises(ValueError, match="no cells"):
        norman_model.predict(ctrl[:0], "KLF1", progress_bar=False)
    raw = ad.AnnData(X=np.full((3, ctrl.n_vars), 40.0, np.float32), var=ctrl.var)
    with pytest.raises(ValueError, match="raw counts"):
        norman_model.predict(raw, "KLF1", progress_bar=False)


def test_save_load_round_trip(norman_model, norman, tmp_path):
    ctrl = _controls(norman)[:25]
    path = tmp_path / "model"
    norman_model.save(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        norman_model.save(path)
    loaded = DolorisModel.load(path)
    assert loaded.adata is None
    a = norman_model.predict(ctrl, "KLF1+MAP2K6", seed=7, n_steps=10, progress_bar=False)
    b = loaded.predict(ctrl, "KLF1+MAP2K6", seed=7, n_steps=10, progress_bar=False)
    np.testing.assert_array_equal(a.X, b.X)
    assert loaded.vocabulary_ == norman_model.vocabulary_


def test_load_refuses_a_foreign_file_format(norman_model, tmp_path):
    import torch

    path = tmp_path / "model"
    norman_model.save(path)
    saved = torch.load(path / "model.pt", weights_only=False)
    saved["attr_dict"]["file_format_"] = 999
    torch.save(saved, path / "model.pt")
    with pytest.raises(ValueError, match="file format 999"):
        DolorisModel.load(path)


# ---------------------------------------------------------------- setup checks (small data)
def _toy(n_per=30, n_genes=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = ["ctrl"] * n_per + ["A"] * n_per + ["B"] * n_per + ["A+B"] * n_per
    counts = rng.poisson(1.0, size=(len(labels), n_genes)).astype(np.float32)
    X = np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": labels, "cell_type": (["t1", "t2"] * (len(labels) // 2))},
        index=[f"c{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


def test_setup_refuses_raw_counts():
    adata = _toy()
    adata.X = np.round(np.expm1(adata.X))
    with pytest.raises(ValueError, match="normalize_total.*log1p"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.X.__setitem__((0, 0), np.nan), ValueError, "non-finite"),
        (lambda a: a.X.__setitem__((0, 0), -1.0), ValueError, "negative"),
    ],
)
def test_setup_refuses_bad_values(change, error, match):
    adata = _toy()
    change(adata)
    with pytest.raises(error, match=match):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


def test_setup_names_missing_keys_and_control_group():
    adata = _toy()
    with pytest.raises(KeyError, match="perturbaton.*Did you mean.*perturbation"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbaton")
    with pytest.raises(ValueError, match="control_group='ctrl'"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="Ctrl")


def test_setup_lists_cell_types_without_controls():
    adata = _toy()
    adata.obs.loc[adata.obs["perturbation"] == "ctrl", "cell_type"] = "t1"
    with pytest.raises(ValueError, match=r"without control cells: \['t2'\]"):
        DolorisModel.setup_anndata(
            adata, perturbation_key="perturbation", cell_type_key="cell_type"
        )


def test_setup_refuses_missing_perturbation_labels():
    adata = _toy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(object)
    adata.obs.iloc[3, 0] = None
    with pytest.raises(ValueError, match="missing values"):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation")


def test_setup_keeps_user_data_and_tokens_are_genes():
    adata = _toy()
    adata.X = sparse.csr_matrix(adata.X)
    snap = _snapshot(adata)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", cell_type_key="cell_type")
    X, obs, var = snap
    np.testing.assert_array_equal(adata.X.toarray(), X)
    pd.testing.assert_frame_equal(adata.obs[obs.columns], obs)
    pd.testing.assert_frame_equal(adata.var, var)
    model = DolorisModel(adata, n_hidden=32, n_layers=1, n_cond=16, n_mask_hidden=16)
    assert model.vocabulary_ == ["A", "B"]  # pairs are made of gene tokens, not categories
    assert model.cell_types_ == ["t1", "t2"]


@pytest.mark.parametrize("single", ["KLF1", "MAP2K6", "TGFBR2"])
def test_coherent_masks_match_detection_of_seen_singles(norman_model, norman, single):
    real = norman[norman.obs["perturbation"] == single].X.toarray()
    with ablations.variant("coherent mask").applied(norman_model):
        pred = norman_model.predict(  # the mask mechanism itself: the uncalibrated model
            _controls(norman), single, n_steps=10, progress_bar=False, calibrate=False
        )
    assert abs((pred.X == 0).mean() - (real == 0).mean()) < 0.05
    r = np.corrcoef((pred.X != 0).mean(0), (real != 0).mean(0))[0, 1]
    assert r > 0.9, r


def test_coupled_masks_keep_each_cells_pattern(norman_model, norman):
    ctrl = _controls(norman)
    with ablations.variant(mask="coupled").applied(norman_model):  # the method's mask
        pred = norman_model.predict(  # the mask mechanism itself: the uncalibrated model
            ctrl, "KLF1", n_steps=10, progress_bar=False, calibrate=False
        )
    same = ((pred.X != 0) == (ctrl.X.toarray() != 0)).mean()
    assert same > 0.9  # most genes keep the control cell's on/off state
    real = norman[norman.obs["perturbation"] == "KLF1"].X.toarray()
    assert abs((pred.X == 0).mean() - (real == 0).mean()) < 0.05


def test_residual_prediction_of_control_returns_the_input(norman_model, norman):
    ctrl = norman[norman.obs["perturbation"] == "control"][:40]
    with ablations.variant("full residual").applied(norman_model):
        same = norman_model.predict(ctrl, "control", progress_bar=False)
    np.testing.assert_allclose(same.X, ctrl.X.toarray(), atol=1e-5)
    moved = norman_model.predict(ctrl, "KLF1", progress_bar=False)
    assert np.abs(moved.X - ctrl.X.toarray()).mean() > 1e-3
    assert moved.uns["scdoloris"]["residual"] == "values"


def test_residual_expression_moves_expressed_genes_only():
    from scdoloris.module._residual import residual_expression

    control = torch.tensor([[2.0, 0.0, 1.0]])
    decoded = torch.tensor([[2.5, 0.4, 0.2]])
    reference = torch.tensor([[2.0, 0.1, 0.3]])
    out = residual_expression(control, decoded, reference)
    torch.testing.assert_close(out, torch.tensor([[2.5, 0.4, 0.9]]))


def test_a_pairs_cells_do_not_depend_on_the_other_perturbations_of_the_call(norman_model, norman):
    ctrl = _controls(norman)
    both = norman_model.predict(ctrl, ["KLF1", "MAP2K6+KLF1"], seed=0, progress_bar=False)
    alone = norman_model.predict(ctrl, "KLF1+MAP2K6", seed=0, progress_bar=False)
    pair = both[both.obs["perturbation"] == "KLF1+MAP2K6"]
    np.testing.assert_array_equal(pair.X, alone.X)
    assert list(pair.obs["control_cell"]) == list(alone.obs["control_cell"])


def test_default_length_is_whole_epochs_of_at_most_the_default_steps(
    tiny_simulated_model, monkeypatch
):
    from scdoloris.model import _doloris

    adata, model = tiny_simulated_model(200, 60)
    monkeypatch.setattr(_doloris, "DEFAULT_TRAIN_STEPS", 10)  # 200 cells / 64 = 4 steps an epoch
    model.train(batch_size=64, calibrate=False, enable_progress_bar=False)
    assert len(model.history["train_loss"]) == 2  # 8 steps: whole epochs, never more than 10
