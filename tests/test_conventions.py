"""scvi-tools and scanpy habits: latents, history, setup views, quiet logs, DE-ready output.

A tiny model on simulated cells, trained for one or two epochs: these tests check interfaces,
not accuracy.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi

from scdoloris import DolorisModel

NOISY = ("scvi", "lightning.pytorch", "lightning.fabric")


def _tiny(n_cells: int, n_genes: int):
    """Simulated log-normalised cells set up for Doloris, and a tiny untrained model."""
    from scdoloris.datasets import simulate

    adata = simulate(n_cells=n_cells, n_genes=n_genes, seed=0)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="ctrl")
    model = DolorisModel(
        adata, n_hidden=16, n_layers=1, n_cond=8, n_graph_hidden=8, n_mask_hidden=8
    )
    return adata, model


@pytest.fixture(scope="module")
def trained():
    """``(adata, model, controls)``: a tiny model trained for two epochs."""
    scvi.settings.seed = 0
    adata, model = _tiny(200, 40)
    model.train(max_epochs=2, enable_progress_bar=False)
    controls = adata[adata.obs["perturbation"] == "ctrl"].copy()
    return adata, model, controls


def _pair(adata) -> str:
    return sorted(p for p in adata.obs["perturbation"].astype(str).unique() if "+" in p)[0]


class _Records(logging.Handler):
    """Collects the records that reach the loggers it is attached to."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    """Messages logged by scvi-tools and Lightning at INFO and above during the test."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in NOISY]
    # their children as the libraries leave them (levels unset), whatever earlier code did
    children = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(tuple(f"{n}." for n in NOISY))
    ]
    levels = [lg.level for lg in loggers + children]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)  # their defaults: chatter reaches the user
    for lg in children:
        lg.setLevel(logging.NOTSET)
    yield handler.messages
    for lg in loggers:
        lg.removeHandler(handler)
    for lg, level in zip(loggers + children, levels, strict=True):
        lg.setLevel(level)


# ---------------------------------------------------------------- latents
def test_get_latent_representation_is_get_latent(trained):
    adata, model, controls = trained
    z = model.get_latent_representation(controls, n_steps=5, seed=3)
    np.testing.assert_array_equal(z, model.get_latent(controls, n_steps=5, seed=3))
    assert z.shape == (controls.n_obs, adata.n_vars)
    every = model.get_latent_representation(n_steps=5)  # scvi-tools' default: the model's data
    assert every.shape == (adata.n_obs, adata.n_vars)
    rows = np.flatnonzero(adata.obs["perturbation"] == "ctrl")[:7]
    some = model.get_latent_representation(indices=rows, n_steps=5, seed=3)
    np.testing.assert_array_equal(some, model.get_latent(controls[:7], n_steps=5, seed=3))


def test_get_latent_representation_of_a_model_without_data_asks_for_it(trained, tmp_path):
    _, model, controls = trained
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match=r"loaded without adata.*get_latent_representation\(adata"):
        loaded.get_latent_representation()
    assert loaded.get_latent_representation(controls, n_steps=3).shape[0] == controls.n_obs


# ---------------------------------------------------------------- predicted and control cells
def test_include_controls_appends_the_input_cells(trained):
    adata, model, controls = trained
    pair = _pair(adata)
    alone = model.predict(controls, pair, n_steps=3, seed=1, progress_bar=False)
    both = model.predict(
        controls, pair, n_steps=3, seed=1, progress_bar=False, include_controls=True
    )
    n = controls.n_obs
    assert both.n_obs == 2 * n
    np.testing.assert_array_equal(both.X[:n], alone.X)  # the predictions are unchanged
    np.testing.assert_array_equal(both.X[n:], controls[:, both.var_names].X.toarray())
    assert list(both.obs["perturbation"].astype(str)) == [pair] * n + ["ctrl"] * n
    assert both.obs["predicted"].tolist() == [True] * n + [False] * n
    assert list(both.obs["control_cell"][n:]) == list(controls.obs_names)
    assert both.obs_names.is_unique
    assert both.uns["scdoloris"]["include_controls"] is True


def test_include_controls_is_ready_for_rank_genes_groups(trained):
    adata, model, controls = trained
    pair = _pair(adata)
    both = model.predict(controls, pair, n_steps=3, progress_bar=False, include_controls=True)
    sc.tl.rank_genes_groups(both, "perturbation", reference="ctrl", method="wilcoxon")
    table = sc.get.rank_genes_groups_df(both, group=pair)
    assert len(table) == both.n_vars and table["pvals"].between(0, 1).all()


def test_include_controls_with_a_table_of_conditions_and_probabilities(trained):
    adata, model, controls = trained
    table = pd.DataFrame({"perturbation": [_pair(adata), "ctrl"]})
    both = model.predict(
        controls,
        table,
        n_steps=3,
        progress_bar=False,
        include_controls=True,
        return_probabilities=True,
    )
    n = controls.n_obs
    assert both.n_obs == 3 * n
    assert both.obs["predicted"].sum() == 2 * n
    assert np.isnan(both.obs["dose"]).all()
    probabilities = both.layers["expression_probability"]
    assert np.isfinite(probabilities[: 2 * n]).all() and np.isnan(probabilities[2 * n :]).all()


# ---------------------------------------------------------------- predicting from other cells
def test_predicting_from_perturbed_cells_warns_with_their_number(trained):
    adata, model, controls = trained
    n_other = int((adata.obs["perturbation"] != "ctrl").sum())
    with pytest.warns(UserWarning, match=rf"^{n_other} of the {adata.n_obs} input cells are not"):
        model.predict(adata, _pair(adata), n_steps=2, progress_bar=False)


def test_predicting_from_controls_does_not_warn(trained):
    _, model, controls = trained
    without_column = controls.copy()
    del without_column.obs["perturbation"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(controls, "ctrl", n_steps=2, progress_bar=False)
        model.predict(without_column, "ctrl", n_steps=2, progress_bar=False)


# ---------------------------------------------------------------- history
def test_history_holds_the_named_losses_only(tiny_simulated_model):
    scvi.settings.seed = 0
    _, model = tiny_simulated_model(150, 40)
    model.train(max_epochs=3, enable_progress_bar=False)
    history = model.history
    assert set(history) == {
        "train_loss",
        "source_loss_train",
        "target_loss_train",
        "mask_loss_train",
    }
    for key in history:
        assert len(history[key]) == 3, key
    total = history["train_loss"].iloc[:, 0].to_numpy(float)
    parts = [
        history[f"{k}_loss_train"].iloc[:, 0].to_numpy(float) for k in ("source", "target", "mask")
    ]
    np.testing.assert_allclose(total, np.sum(parts, axis=0), rtol=1e-5)


def test_history_of_a_validated_run_and_early_stopping(tiny_simulated_model):
    scvi.settings.seed = 0
    _, model = tiny_simulated_model(150, 40)
    model.train(
        max_epochs=3,
        train_size=0.8,
        early_stopping=True,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
    )
    assert {"validation_loss", "mask_loss_validation"} <= set(model.history)
    assert not any(k.startswith(("elbo", "kl_", "reconstruction")) for k in model.history)


# ---------------------------------------------------------------- setup views and summary
def test_view_anndata_setup_with_data_and_after_load(trained, tmp_path, capsys):
    _, model, _ = trained
    model.view_anndata_setup()
    shown = capsys.readouterr().out
    assert "perturbation_key" in shown and "n_perturbation_tokens" in shown
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    loaded.view_anndata_setup()
    shown = capsys.readouterr().out
    assert "perturbation_key" in shown and "Data Registry" in shown and "no data" in shown


def test_summary_survives_save_and_load(trained, tmp_path):
    _, model, _ = trained
    assert model.summary_string.startswith("DolorisModel: 40 genes")
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    assert loaded.summary_string == model.summary_string


# ---------------------------------------------------------------- quiet by default
def test_training_and_loading_are_quiet_by_default(tmp_path, records, tiny_simulated_model):
    filters, levels = list(warnings.filters), [logging.getLogger(n).level for n in NOISY]
    _, model = tiny_simulated_model(150, 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=1, enable_progress_bar=False)
        model.save(tmp_path / "m")
        DolorisModel.load(tmp_path / "m")
    assert records == [], records
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], caught
    # the user's warning filters and logging levels are as they were
    assert list(warnings.filters) == filters
    assert [logging.getLogger(n).level for n in NOISY] == levels


def test_verbose_shows_the_libraries_messages(tmp_path, records, tiny_simulated_model):
    _, model = tiny_simulated_model(150, 40)
    model.train(max_epochs=1, enable_progress_bar=False, verbose=True)
    assert any("GPU available" in m for m in records), records
    model.save(tmp_path / "m")
    del records[:]
    DolorisModel.load(tmp_path / "m", verbose=True)
    assert any("already downloaded" in m for m in records), records


def test_scvi_debug_verbosity_shows_them_too(tmp_path, records, tiny_simulated_model):
    _, model = tiny_simulated_model(150, 40)
    model.is_trained_ = True
    model.save(tmp_path / "m")
    before = scvi.settings.verbosity
    scvi.settings.verbosity = logging.DEBUG
    try:
        DolorisModel.load(tmp_path / "m")
    finally:
        scvi.settings.verbosity = before
    assert any("already downloaded" in m for m in records), records
