"""The diffusion maths pinned to values computed by hand."""

import math

import pytest
import torch

from scdoloris.module._bridge import (
    DiffusionSchedule,
    alphas_cumprod,
    ddim_decode,
    ddim_encode,
    ddim_step,
    ddim_timesteps,
    linear_betas,
    predicted_noise,
    q_sample,
)
from scdoloris.module._losses import expressed_mask, mask_bce, masked_mse


def test_linear_betas_and_alpha_bar_by_hand():
    betas = linear_betas(5, 0.1, 0.5)
    assert torch.allclose(betas, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64))
    ab = alphas_cumprod(betas)
    expected = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6, 0.9 * 0.8 * 0.7 * 0.6 * 0.5]
    assert torch.allclose(ab, torch.tensor(expected, dtype=torch.float64))


def test_paper_schedule_endpoints():
    s = DiffusionSchedule(500)
    assert s.alpha_bar.shape == (500,)
    assert float(s.alpha_bar[0]) == pytest.approx(1 - 1e-4)
    # prod(1 - beta) over the linear schedule 1e-4..0.02, T = 500
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 499) for i in range(500))
    assert float(s.alpha_bar[-1]) == pytest.approx(expected, rel=1e-3)


def test_q_sample_and_predicted_noise_by_hand():
    x0, noise, ab = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.25])
    x_t = q_sample(x0, ab, noise)
    assert float(x_t) == pytest.approx(0.5 * 2.0 + math.sqrt(0.75) * 1.0)
    assert float(predicted_noise(x_t, x0, ab)) == pytest.approx(1.0)


def test_one_ddim_step_each_way_by_hand():
    x, x0_hat = torch.tensor([1.0]), torch.tensor([0.5])
    # decoding: from alpha_bar 0.36 (noisier) to 0.64
    eps = (1.0 - 0.6 * 0.5) / 0.8
    down = ddim_step(x, x0_hat, torch.tensor(0.36), torch.tensor(0.64))
    assert float(down) == pytest.approx(0.8 * 0.5 + 0.6 * eps)
    # encoding: from alpha_bar 0.64 to 0.36
    eps = (1.0 - 0.8 * 0.5) / 0.6
    up = ddim_step(x, x0_hat, torch.tensor(0.64), torch.tensor(0.36))
    assert float(up) == pytest.approx(0.6 * 0.5 + 0.8 * eps)


def test_ddim_timesteps():
    ts = ddim_timesteps(500, 50)
    assert ts[0] == 0 and ts[-1] == 499 and len(ts) == 51
    assert bool((ts[1:] > ts[:-1]).all())
    with pytest.raises(ValueError, match="n_steps"):
        ddim_timesteps(500, 0)


def test_encode_then_decode_with_the_true_x0_returns_the_input():
    torch.manual_seed(0)
    ab = DiffusionSchedule(500).alpha_bar
    x0 = torch.rand(16, 30)
    ts = ddim_timesteps(500, 50)
    z = ddim_encode(x0, lambda x, t: x0, ab, ts)
    assert not torch.allclose(z, x0)
    back = ddim_decode(z, lambda x, t: x0, ab, ts)
    assert torch.allclose(back, x0, atol=1e-4)


def test_masked_mse_ignores_zero_genes():
    x0 = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 2.0]])
    x0_hat = torch.tensor([[0.0, 5.0, 1.0], [9.0, 9.0, 2.5]])
    loss = masked_mse(x0, x0_hat, expressed_mask(x0))
    assert torch.allclose(loss, torch.tensor([(1.0 + 4.0) / 2, 0.25]))
    # a cell with no expressed gene contributes 0, not NaN
    assert float(masked_mse(torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3))[0]) == 0.0


def test_mask_bce_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    x0 = torch.tensor([[0.0, 1.5]])
    # -log(1 - 0.5) and -log(0.75)
    expected = (math.log(2.0) - math.log(0.75)) / 2
    assert float(mask_bce(logits, x0)[0]) == pytest.approx(expected)
