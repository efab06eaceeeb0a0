"""Train once: with the calibration, the model starts from the inner model's weights and trains
half of the steps (``model/_warm_start.py``), so train() costs about one training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdoloris.model._warm_start import FINAL_FRACTION, INNER_FRACTION, warm_start


class _Encoder(torch.nn.Module):
    def __init__(self, n_vocab: int):
        super().__init__()
        self.learned = torch.nn.Embedding(n_vocab, 3)
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("prior", torch.full((n_vocab,), float(n_vocab)))


def test_warm_start_copies_parameters_and_token_rows_by_name():
    torch.manual_seed(0)
    inner, final = _Encoder(2), _Encoder(3)
    before = final.learned.weight.detach().clone()
    counts = warm_start(final, inner, ["A", "C", "B"], ["B", "A"])
    assert counts == {"copied": 2, "token_rows": 2, "kept": 0}
    assert torch.equal(final.linear.weight, inner.linear.weight)
    # rows by token name: A and B come from the inner model, C (never seen there) is kept
    assert torch.equal(final.learned.weight[0], inner.learned.weight[1])
    assert torch.equal(final.learned.weight[2], inner.learned.weight[0])
    assert torch.equal(final.learned.weight[1], before[1])
    # buffers (what each model derives from its own data) are its own
    assert final.prior.tolist() == [3.0, 3.0, 3.0]


def _model(seed: int = 0):
    import scanpy as sc
    import scvi

    from scdoloris import DolorisModel
    from scdoloris.datasets import simulate

    scvi.settings.seed = seed
    adata = simulate(n_cells=1200, n_genes=60, seed=0)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", cell_type_key="cell_type")
    return DolorisModel(
        adata, n_hidden=32, n_layers=1, n_cond=16, n_graph_hidden=8, n_mask_hidden=16
    )


def test_train_starts_the_model_from_the_inner_model(tmp_path, capsys):
    from scdoloris import DolorisModel

    model = _model()
    model.train(max_epochs=8)
    err = capsys.readouterr().err
    assert "Inner validation (1/2)" in err and "Final model (2/2)" in err
    # half of the epochs of a model trained from scratch, from the inner model's weights
    assert len(model.history["train_loss"]) == round(FINAL_FRACTION * 8)
    # the inner model: half the steps of a model trained from scratch (on its fewer cells)
    inner = model.inner_history["train_loss"]
    assert INNER_FRACTION == 0.5 and 1 <= len(inner) < 8
    # the inner history is saved with the model
    model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    assert len(loaded.inner_history["train_loss"]) == len(inner)


def test_a_trained_model_trains_on_from_its_own_weights(capsys):
    model = _model()
    model.train(max_epochs=4, calibrate=False)
    weights = {k: v.detach().clone() for k, v in model.module.named_parameters()}
    model.train(max_epochs=2, enable_progress_bar=False)
    err = capsys.readouterr().err
    assert "Final model (2/2)" not in err and "Inner validation" not in err  # no bars: quiet
    # all of max_epochs, continued from its weights (a warm start would reset them)
    assert len(model.history["train_loss"]) >= 2
    moved = [(v - weights[k]).abs().max().item() for k, v in model.module.named_parameters()]
    assert 0 < np.median(moved) < 1.0


@pytest.mark.parametrize("calibrate", [True, False])
def test_train_runs_end_to_end(calibrate):
    model = _model()
    model.train(max_epochs=4, enable_progress_bar=False, calibrate=calibrate)
    assert model.is_trained_
    assert bool(model.inner_history) == calibrate


def test_the_inner_conditions_are_predicted_together_as_one_by_one():
    from scdoloris.model._inner_validation import _predict_conditions

    model = _model()
    model.train(max_epochs=2, calibrate=False, enable_progress_bar=False)
    split = model._inner_split(0)
    together = _predict_conditions(model, split.conditions, True, 0, {"n_steps": 5})
    for cond, P in zip(split.conditions, together, strict=True):
        alone = model.predict(
            cond.controls,
            cond.perturbation,
            cell_type=cond.cell_type,
            dose=cond.dose,
            calibrate=False,
            progress_bar=False,
            seed=0,
            allow_unknown=True,
            n_steps=5,
        ).X
        np.testing.assert_allclose(P, alone, rtol=1e-5, atol=1e-5)
    # the conditions of a cell type share one draw of input cells
    by_type = {}
    for cond in split.conditions:
        by_type.setdefault(cond.cell_type, set()).add(id(cond.controls))
    assert all(len(ids) == 1 for ids in by_type.values())
