"""Data-derived statistics: the additive prior's per-token effects, by hand."""

import numpy as np
import pytest

from scdoloris.model._statistics import _logit, compositional_effects


def test_single_token_effect_is_its_measured_change_on_expressed_values():
    # gene 0: controls express 1 and 3 (mean 2) and one zero; token A's cells express 5 and 5
    X = np.array(
        [
            [1.0, 0.0],
            [3.0, 1.0],
            [0.0, 1.0],  # controls
            [5.0, 0.0],
            [5.0, 0.0],  # A
        ]
    )
    tokens = np.array([[-1], [-1], [-1], [0], [0]])
    eff = compositional_effects(X, tokens, np.zeros(5, int), 1, 1, ridge=1e-9)
    np.testing.assert_allclose(eff.control_expressed_mean[0], [2.0, 1.0])
    np.testing.assert_allclose(eff.token_expressed_effect[0, 0], 3.0, rtol=1e-6)
    # gene 1 is never expressed in A: no expressed-value change, a detection change
    assert eff.token_expressed_effect[0, 1] == 0.0
    expected = _logit(np.array([0.0]), 2.0) - _logit(np.array([2.0]), 3.0)
    np.testing.assert_allclose(eff.token_detection_effect[0, 1], expected[0], rtol=1e-6)


def test_tokens_seen_only_in_combinations_get_what_the_combinations_imply():
    rng = np.random.default_rng(0)
    n = 50
    base = rng.uniform(1, 2, size=(n, 3))
    effect = {0: np.array([1.0, 0.0, 0.5]), 1: np.array([0.0, 2.0, 0.5])}
    X = np.vstack([base, base + effect[0], base + effect[0] + effect[1]])
    tokens = np.vstack([np.full((n, 2), -1), np.tile([0, -1], (n, 1)), np.tile([0, 1], (n, 1))])
    eff = compositional_effects(X, tokens, np.zeros(3 * n, int), 1, 2, ridge=1e-6)
    np.testing.assert_allclose(eff.token_expressed_effect[0], effect[0], atol=1e-4)
    np.testing.assert_allclose(eff.token_expressed_effect[1], effect[1], atol=1e-4)


def test_logit_is_smoothed():
    assert np.isfinite(_logit(np.array([0.0, 10.0]), 10.0)).all()
    assert _logit(np.array([5.0]), 10.0)[0] == pytest.approx(0.0)
