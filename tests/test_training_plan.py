"""The training plan's learning-rate schedules (``train(plan_kwargs=...)``; ``"cosine"`` is the
ablation "cosine lr")."""

from __future__ import annotations

import math

import pytest
from lightning.pytorch.callbacks import Callback

from scdoloris.train import DolorisTrainingPlan
from scdoloris.train._plan import cosine_lr_factor


def test_cosine_factor_by_hand():
    assert cosine_lr_factor(0, 8) == 1.0
    # a quarter of the way: floor + (1 - floor) * (1 + cos(pi / 4)) / 2
    assert cosine_lr_factor(2, 8, floor=0.1) == pytest.approx(0.1 + 0.9 * (1 + 0.5**0.5) / 2)
    assert cosine_lr_factor(8, 8, floor=0.1) == pytest.approx(0.1)
    assert cosine_lr_factor(20, 8, floor=0.1) == pytest.approx(0.1)  # held after the end
    assert cosine_lr_factor(4, 8, floor=0.0) == pytest.approx(0.5)


class _LearningRates(Callback):
    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append([g["lr"] for g in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rates_seen_by_the_optimiser(tiny_simulated_model, schedule):
    _, model = tiny_simulated_model(200, 60)
    seen = _LearningRates()
    model.train(
        max_steps=10,
        batch_size=64,
        plan_kwargs={"lr": 1e-3, "mask_lr": 2e-3, "lr_schedule": schedule},
        enable_progress_bar=False,
        callbacks=[seen],
    )
    assert len(seen.rates) == 10
    first, last = seen.rates[0], seen.rates[-1]
    assert first == pytest.approx([1e-3, 2e-3])
    if schedule == "constant":
        assert last == pytest.approx(first)
    else:  # step 9 of 10
        factor = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.9))
        assert last == pytest.approx([1e-3 * factor, 2e-3 * factor])


def test_unknown_schedule_is_refused(tiny_simulated_model):
    _, model = tiny_simulated_model(100, 60)
    with pytest.raises(ValueError, match="lr_schedule must be"):
        DolorisTrainingPlan(model.module, lr_schedule="linear")
