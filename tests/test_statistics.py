"""The additive prior: its per-token effects by hand, and what it adds for a cell."""

import numpy as np
import pytest

from scdoloris.module._prior import _logit, compositional_effects


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


def test_unseen_token_effect_is_the_leave_one_out_scaled_mean():
    from scdoloris.module._prior import shrunk_mean_effect

    # effects 2, 1, 3 on one gene: leave-one-out means 2, 2.5, 1.5;
    # alpha = (2*2 + 1*2.5 + 3*1.5) / (4 + 6.25 + 2.25) = 11 / 12.5 = 0.88; mean 2
    effect, alpha = shrunk_mean_effect(np.array([[2.0], [1.0], [3.0]]))
    assert alpha == pytest.approx(0.88)
    np.testing.assert_allclose(effect, [0.88 * 2.0], rtol=1e-6)
    # opposite effects cancel: nothing to expect of a new token
    effect, alpha = shrunk_mean_effect(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert alpha == 0.0 and not effect.any()
    # one token: no leave-one-out estimate, no effect
    assert shrunk_mean_effect(np.array([[5.0, 5.0]]))[1] == 0.0


def test_center_adds_the_unseen_effect_once_per_unseen_gene_token():
    import torch

    from scdoloris.module import AdditivePrior

    prior = AdditivePrior(n_cell_types=1, n_vocab=2, n_genes=3)
    prior.unseen = "both"
    prior.token_expressed_effect.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    prior.unseen_expressed_effect.copy_(torch.tensor([0.0, 0.0, 0.5]))
    prior.unseen_detection_effect.copy_(torch.tensor([0.0, 0.0, 2.0]))
    cell_type = torch.zeros(3, dtype=torch.long)
    vocab = torch.tensor([[0, -1], [-1, -1], [0, -1]])
    # cell 0: seen token 0 only; cell 1: one unseen gene (node 3); cell 2: seen 0 + unseen node 2
    nodes = torch.tensor([[0, -1], [3, -1], [0, 2]])
    center = prior.expressed(cell_type, vocab, nodes)
    np.testing.assert_allclose(center.numpy(), [[1, 0, 0], [0, 0, 0.5], [1, 0, 0.5]])
    offset = prior.detection(cell_type, vocab, nodes)
    np.testing.assert_allclose(offset.numpy(), [[0, 0, 0], [0, 0, 2], [0, 0, 2]])
    # without node indices (training, encoding) unseen tokens cannot occur: nothing added
    np.testing.assert_allclose(prior.expressed(cell_type, vocab).numpy()[1], [0, 0, 0])
    # the default: detection logits only
    prior.unseen = "detection"
    np.testing.assert_allclose(prior.expressed(cell_type, vocab, nodes).numpy()[1], 0.0)
    np.testing.assert_allclose(prior.detection(cell_type, vocab, nodes).numpy()[1], [0, 0, 2])
    # the option off: the effects are kept but not added
    prior.unseen = "none"
    np.testing.assert_allclose(prior.expressed(cell_type, vocab, nodes).numpy()[1], 0.0)
    np.testing.assert_allclose(prior.detection(cell_type, vocab, nodes).numpy()[1], 0.0)


def test_cell_type_effects_transfer_from_the_most_alike_cell_types():
    from scdoloris.module._prior import cell_type_effects

    # three cell types on 2 genes: controls of types 0 and 1 alike, type 2 far away.
    # token 0 raises gene 0 by 1 in types 0 and 1 and lowers it by 1 in type 2.
    # Held out: token 0 in type 1 would be measured; here it is NOT, so its effect there is
    # transferred; leave-one-out on types 0 and 2 cannot tell temperatures apart (one source
    # each), so a second token measured in all three types makes "alike" informative.
    base = {0: [2.0, 2.0], 1: [2.1, 2.0], 2: [6.0, 6.0]}
    shift = {0: 1.0, 1: 1.0, 2: -1.0}
    X, tokens, cell_type = [], [], []
    for c in range(3):
        for _ in range(4):
            X.append(base[c])
            tokens.append([-1])
            cell_type.append(c)
            X.append([base[c][0], base[c][1] + shift[c]])  # token 1: gene 1, all types
            tokens.append([1])
            cell_type.append(c)
            if c != 1:
                X.append([base[c][0] + shift[c], base[c][1]])  # token 0: gene 0
                tokens.append([0])
                cell_type.append(c)
    expressed, detection, temperature = cell_type_effects(
        np.array(X), np.array(tokens), np.array(cell_type), 3, 2, ridge=1e-9
    )
    assert np.isfinite(temperature) and temperature <= 0.5
    # measured effects are each cell type's own
    np.testing.assert_allclose(expressed[0, 0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(expressed[2, 0], [-1.0, 0.0], atol=1e-6)
    # transferred: mostly from type 0, the alike one (the pooled average would be 0)
    assert expressed[1, 0, 0] > 0.8
    assert detection.shape == (3, 2, 2)
