"""Coherent activation mask sampling on small hand-made banks."""

import numpy as np
import pytest

from scdoloris.module._mask_sampler import (
    CoherentMaskSampler,
    MaskBank,
    build_mask_bank,
    nearest_condition,
)


@pytest.fixture
def bank():
    expressed = np.array(
        [
            [1, 1, 0, 0, 0],  # condition "a": genes 0-1
            [1, 0, 0, 0, 1],
            [0, 0, 1, 1, 0],  # condition "b": genes 2-3
            [0, 0, 1, 1, 1],
        ]
    )
    return build_mask_bank(expressed, np.array(["a", "a", "b", "b"]))


def test_bank_means_and_packing(bank):
    assert bank.conditions == ["a", "b"]
    np.testing.assert_allclose(bank.mean_activation, [[1, 0.5, 0, 0, 0.5], [0, 0, 1, 1, 0.5]])
    assert bank.packed.dtype == np.uint8 and bank.packed.shape == (4, 1)
    np.testing.assert_array_equal(bank.masks(1), [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])
    again = MaskBank.from_dict(bank.to_dict())
    np.testing.assert_array_equal(again.masks(0), bank.masks(0))


def test_bank_keeps_at_most_n_cells_per_condition():
    expressed = np.random.default_rng(0).random((50, 12)) > 0.5
    bank = build_mask_bank(expressed, np.array(["x"] * 40 + ["y"] * 10), max_cells_per_condition=7)
    assert bank.offsets.tolist() == [0, 7, 14]
    # mean activation still uses every cell of the condition
    np.testing.assert_allclose(bank.mean_activation[0], expressed[:40].mean(0), rtol=1e-6)


def test_nearest_condition_compares_the_top_genes_only():
    means = np.array([[0.9, 0.9, 0.0, 0.0], [0.9, 0.0, 0.9, 0.9]])
    p = np.array([0.95, 0.85, 0.05, 0.6])
    assert nearest_condition(means, p, top_genes=2) == 0  # genes 0 and 1 decide
    assert nearest_condition(means, np.array([0.1, 0.0, 0.9, 0.9]), top_genes=2) == 1


def test_sampler_picks_the_nearest_condition_and_one_mask_per_cell(bank):
    sampler = CoherentMaskSampler(bank, top_genes=2, thresholds=(0.0, 1.0))
    probs = np.tile([0.1, 0.0, 0.8, 0.9, 0.3], (6, 1))
    masks, label = sampler.sample(probs, np.random.default_rng(0))
    assert label == "b"
    assert masks.shape == (6, 5)
    for row in masks:  # every mask is one of condition b's real masks
        assert any(np.array_equal(row, real) for real in bank.masks(1))


def test_thresholds_are_enforced(bank):
    sampler = CoherentMaskSampler(bank, top_genes=5, thresholds=(0.2, 0.7))
    probs = np.tile([0.9, 0.1, 0.0, 0.0, 0.75], (10, 1))
    masks, label = sampler.sample(probs, np.random.default_rng(1))
    assert label == "a"
    assert masks[:, 0].all() and masks[:, 4].all()  # p >= 0.7 switched on
    assert not masks[:, 1:4].any()  # p <= 0.2 switched off


def test_repeatable_with_a_seed(bank):
    sampler = CoherentMaskSampler(bank, top_genes=3)
    probs = np.tile([0.6, 0.4, 0.1, 0.1, 0.5], (20, 1))
    a, _ = sampler.sample(probs, np.random.default_rng(5))
    b, _ = sampler.sample(probs, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("top", "thr"), [(0, (0.01, 0.99)), (5, (0.5, 0.4)), (5, (-0.1, 0.9))])
def test_bad_settings_are_refused(bank, top, thr):
    with pytest.raises(ValueError, match="mask_t"):
        CoherentMaskSampler(bank, top_genes=top, thresholds=thr)
