"""Covariate transfer on real data: stimulated cells of a cell type never seen stimulated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scdoloris import DolorisModel, ablations
from scdoloris.metrics import e_distance, top_de_genes

HELD_OUT = "CD14+ Monocytes"
TRAIN_STEPS = 300


@pytest.fixture(scope="module")
def kang_transfer(kang):
    """A small model trained without the stimulated CD14+ monocytes (their controls stay in)."""
    import scvi

    group = kang.obs["group_id"].astype(str).to_numpy()
    cell_type = kang.obs["cluster_id"].astype(str).to_numpy()
    held_out = (group == "stim") & (cell_type == HELD_OUT)
    train = kang[~held_out].copy()
    scvi.settings.seed = 0
    DolorisModel.setup_anndata(
        train, perturbation_key="group_id", control_group="ctrl", cell_type_key="cluster_id"
    )
    model = DolorisModel(train, n_hidden=128, n_layers=2)
    model.train(max_steps=TRAIN_STEPS, batch_size=128, enable_progress_bar=False)
    controls = kang[(group == "ctrl") & (cell_type == HELD_OUT)].copy()
    real = kang[held_out].X.toarray()
    pred = model.predict(controls, "stim", cell_type=HELD_OUT, seed=0, progress_bar=False)
    return model, controls, real, pred


def test_held_out_type_had_controls_but_no_stimulated_cells(kang_transfer):
    model, *_ = kang_transfer
    assert HELD_OUT in model.cell_types_ and model.vocabulary_ == ["stim"]


def test_predicted_shift_has_the_real_sign_on_the_top_de_genes(kang_transfer):
    _, controls, real, pred = kang_transfer
    C = controls.X.toarray()
    de = top_de_genes(real, C, 20)
    predicted = np.sign(pred.X[:, de].mean(0) - C[:, de].mean(0))
    observed = np.sign(real[:, de].mean(0) - C[:, de].mean(0))
    assert np.mean(predicted == observed) >= 0.9


def test_prediction_is_closer_to_stimulated_cells_than_the_controls(kang_transfer):
    _, controls, real, pred = kang_transfer
    e_model, e_control = e_distance(pred.X, real), e_distance(controls.X.toarray(), real)
    assert e_model < e_control, (e_model, e_control)


def test_table_of_conditions_matches_the_single_form(kang_transfer):
    model, controls, _, pred = kang_transfer
    table = pd.DataFrame({"perturbation": ["stim", "ctrl"], "cell_type": [HELD_OUT, "B cells"]})
    both = model.predict(controls, table, seed=0, progress_bar=False)
    n = controls.n_obs
    np.testing.assert_array_equal(both.X[:n], pred.X)
    assert list(both.obs["cell_type"].astype(str).unique()) == [HELD_OUT, "B cells"]
    assert both.obs["dose"].isna().all()


def test_auto_start_uses_noise_only_for_cell_types_never_seen_perturbed(kang_transfer):
    model, controls, _, pred = kang_transfer
    assert HELD_OUT not in model.perturbed_cell_types_
    assert set(model.perturbed_cell_types_) == set(model.cell_types_) - {HELD_OUT}
    codes = np.array([model.cell_types_.index(HELD_OUT), model.cell_types_.index("B cells")])
    np.testing.assert_array_equal(model._starts_from_noise("auto", codes), [True, False])
    assert pred.uns["scdoloris"]["start"] == "latent"  # the default
    # for the held-out type "auto" is "noise" (same draws), not the bridge
    kw = {"cell_type": HELD_OUT, "seed": 0, "progress_bar": False, "n_steps": 10}
    with ablations.variant("auto start").applied(model):
        auto = model.predict(controls[:20], "stim", **kw)
    with ablations.variant("no latent").applied(model):
        noise = model.predict(controls[:20], "stim", **kw)
    bridge = model.predict(controls[:20], "stim", **kw)  # the method: the bridge
    np.testing.assert_array_equal(auto.X, noise.X)
    assert not np.array_equal(auto.X, bridge.X)
