"""The ablations' one door, ``scdoloris.ablations``: names, switches and where each acts."""

from __future__ import annotations

import numpy as np
import pytest

from scdoloris import DolorisModel, ablations

TINY = {"n_hidden": 16, "n_layers": 1, "n_cond": 8, "n_graph_hidden": 8, "n_mask_hidden": 8}


def test_every_named_variant_is_valid_and_leaves_the_method():
    for name, switches in ablations.ABLATIONS.items():
        variant = ablations.variant(name)
        assert variant.name == name
        split = {**variant.module, **variant.model, **variant.plan, **variant.predict}
        assert split == switches, name
    assert ablations.variant().model_kwargs() == {}
    assert ablations.PredictionSwitches() == ablations.PredictionSwitches(mask="coupled")


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("no such thing",), {}, "Unknown ablation 'no such thing'"),
        ((), {"mask": "maybe"}, "mask must be one of"),
        ((), {"prior": "multiplicative"}, "prior must be one of"),
        ((), {"depth": 1.5}, r"depth must be in \(0, 1\]"),
        ((), {"lr_schedule": "linear"}, "lr_schedule must be one of"),
        ((), {"n_hidden": 4}, r"Unknown switches \['n_hidden'\]"),
    ],
)
def test_unknown_names_switches_and_values_are_refused(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ablations.variant(*args, **kwargs)


def test_switches_split_by_where_they_act():
    variant = ablations.variant({"prior": "none", "mask": "coherent", "lr_schedule": "cosine"})
    assert variant.module == {"prior": "none"}
    assert variant.predict == {"mask": "coherent"}
    assert variant.plan == {"lr_schedule": "cosine"}
    assert variant.model_kwargs() == {"ablation": {"prior": "none"}}
    assert ablations.variant("no unknown cell type").model_kwargs() == {"cell_type_dropout": 0.0}


def test_module_switches_are_saved_and_prediction_switches_hold_in_the_block(
    tiny_simulated_model, tmp_path
):
    adata, _ = tiny_simulated_model(n_cells=150, n_genes=40)
    model = ablations.variant("no prior").build(adata, **TINY)
    assert model.module_kwargs_["ablation"] == {"prior": "none"}
    assert not model.module.prior.enabled
    model.is_trained_ = True
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    assert not loaded.module.prior.enabled
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:10].copy()
    kw = {"n_steps": 2, "progress_bar": False, "seed": 0}
    with ablations.variant("coherent mask", residual="none").applied(loaded):
        pred = loaded.predict(ctrl, "ctrl", **kw)
        assert loaded._switches().mask == "coherent"
    assert pred.uns["scdoloris"]["mask"] == "coherent"
    assert pred.uns["scdoloris"]["residual"] == "none"
    assert loaded._switches() == ablations.PredictionSwitches()  # the method again
    default = loaded.predict(ctrl, "ctrl", **kw)
    assert default.uns["scdoloris"]["mask"] == "coupled"
    np.testing.assert_array_equal(
        default.X, ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else ctrl.X
    )


def test_a_variant_trains_with_its_plan_settings(tiny_simulated_model):
    _, model = tiny_simulated_model(n_cells=150, n_genes=40)
    seen = {}
    original = model._fit

    def fit(verbose, **kwargs):
        seen.update(kwargs["plan_kwargs"])
        return original(verbose, **kwargs)

    model._fit = fit
    ablations.variant("cosine lr").train(
        model, max_steps=1, calibrate=False, enable_progress_bar=False, plan_kwargs={"lr": 2e-3}
    )
    assert seen == {"stage": "all", "lr": 2e-3, "lr_schedule": "cosine"}
