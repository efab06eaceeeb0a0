"""The diffusion schedule and the deterministic DDIM step (x0-parametrisation).

Everything here is a small pure function of tensors so that unit tests can pin it to values
computed by hand.
"""

from __future__ import annotations

import torch
from torch import nn


def linear_betas(n_timesteps: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Linear beta schedule of DDPM: ``n_timesteps`` values from ``beta_start`` to ``beta_end``.

    Examples
    --------
    >>> linear_betas(3, 0.1, 0.3)
    tensor([0.1000, 0.2000, 0.3000], dtype=torch.float64)
    """
    return torch.linspace(beta_start, beta_end, n_timesteps, dtype=torch.float64)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """The cumulative product ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``.

    Examples
    --------
    >>> alphas_cumprod(torch.tensor([0.5, 0.5], dtype=torch.float64))
    tensor([0.5000, 0.2500], dtype=torch.float64)
    """
    return torch.cumprod(1.0 - betas, dim=0)


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise``.

    ``alpha_bar`` broadcasts against ``x0`` (pass shape ``(batch, 1)`` for one value per cell).

    Examples
    --------
    >>> q_sample(torch.tensor([2.0]), torch.tensor([0.25]), torch.tensor([1.0]))
    tensor([1.8660])
    """
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


def predicted_noise(x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_bar: torch.Tensor):
    """The noise implied by ``x_t`` and a prediction of the clean sample ``x0_hat``.

    Examples
    --------
    >>> predicted_noise(torch.tensor([1.8660254]), torch.tensor([2.0]), torch.tensor([0.25]))
    tensor([1.0000])
    """
    return (x_t - alpha_bar.sqrt() * x0_hat) / (1.0 - alpha_bar).sqrt()


def ddim_step(
    x: torch.Tensor, x0_hat: torch.Tensor, alpha_bar_from: torch.Tensor, alpha_bar_to: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from noise level ``alpha_bar_from`` to ``alpha_bar_to``.

    The same formula runs the ODE both ways: towards the data (decoding, ``alpha_bar_to`` larger)
    and towards the Gaussian latent (encoding, ``alpha_bar_to`` smaller)::

        eps_hat = (x - sqrt(a_from) x0_hat) / sqrt(1 - a_from)
        x_next  = sqrt(a_to) x0_hat + sqrt(1 - a_to) eps_hat

    Examples
    --------
    >>> x = torch.tensor([1.0]); x0 = torch.tensor([0.5])
    >>> ddim_step(x, x0, torch.tensor(0.64), torch.tensor(0.36))
    tensor([1.1000])
    """
    eps_hat = predicted_noise(x, x0_hat, alpha_bar_from)
    return alpha_bar_to.sqrt() * x0_hat + (1.0 - alpha_bar_to).sqrt() * eps_hat


def preconditioning(alpha_bar: torch.Tensor, sigma_data: float | torch.Tensor):
    """EDM preconditioning coefficients (Karras et al. 2022) for a VP noise level.

    With ``y = x_t / sqrt(alpha_bar) = x0 + s * eps`` and ``s^2 = (1 - alpha_bar) / alpha_bar``
    the clean sample is predicted as ``x0_hat = c_skip * y + c_out * F(c_in * y)``::

        c_skip = sd^2 / (s^2 + sd^2),  c_out = s * sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2)

    At low noise ``x0_hat`` tends to ``y`` whatever the network says, so the noise implied by it
    stays bounded; without this, DDIM inversion divides the network's error on x0 by
    ``sqrt(1 - alpha_bar)`` (0.01 at t = 0) and the latent of a control cell explodes.

    Returns
    -------
    ``(c_in, c_skip, c_out)``, shaped like ``alpha_bar``.

    Examples
    --------
    >>> c_in, c_skip, c_out = preconditioning(torch.tensor([0.5]), 1.0)
    >>> [round(float(c), 4) for c in (c_in, c_skip, c_out)]
    [0.7071, 0.5, 0.7071]
    """
    s2 = (1.0 - alpha_bar) / alpha_bar
    denom = s2 + sigma_data**2
    return denom.rsqrt(), sigma_data**2 / denom, s2.sqrt() * sigma_data * denom.rsqrt()


def ddim_timesteps(
    n_timesteps: int, n_steps: int, t_start: int = 0, t_end: int | None = None
) -> torch.Tensor:
    """The ``n_steps + 1`` increasing timesteps of a DDIM run, from ``t_start`` to ``t_end``.

    ``t_end`` defaults to the last timestep ``T - 1``.

    Encoding walks them upwards (a clean cell is taken as the sample at ``t_start``), decoding
    downwards; each run has ``n_steps`` steps.

    Examples
    --------
    >>> ddim_timesteps(500, 4)
    tensor([  0, 124, 249, 374, 499])
    >>> ddim_timesteps(500, 2, t_start=99)
    tensor([ 99, 299, 499])
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
    t_end = n_timesteps - 1 if t_end is None else t_end
    n_steps = max(1, min(n_steps, t_end - t_start))
    grid = torch.linspace(t_start, t_end, n_steps + 1, dtype=torch.float64)
    return grid.floor().long()


def noise_level_timestep(alpha_bar: torch.Tensor, sigma: float) -> int:
    """The first timestep whose noise-to-signal ratio ``sqrt((1 - a) / a)`` reaches ``sigma``.

    Examples
    --------
    >>> noise_level_timestep(torch.tensor([0.99, 0.9, 0.5]), 0.3)
    1
    """
    ratio = ((1.0 - alpha_bar) / alpha_bar).sqrt()
    return int(
        torch.searchsorted(ratio.contiguous(), torch.tensor(float(sigma))).clamp_max(len(ratio) - 1)
    )


class DiffusionSchedule(nn.Module):
    """Linear-beta DDPM schedule holding ``alpha_bar`` as a buffer (so it moves with the module).

    Parameters
    ----------
    n_timesteps
        Number of training diffusion steps T (the paper: 500).
    beta_start, beta_end
        The first and last beta of the linear schedule.

    Examples
    --------
    >>> schedule = DiffusionSchedule(500)
    >>> round(float(schedule.alpha_bar[-1]), 5)  # T = 500 leaves a little signal at the end
    0.00635
    """

    def __init__(self, n_timesteps: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        self.n_timesteps = n_timesteps
        betas = linear_betas(n_timesteps, beta_start, beta_end)
        self.register_buffer("alpha_bar", alphas_cumprod(betas).float(), persistent=False)

    def sample_timesteps(self, n: int, device=None) -> torch.Tensor:
        """Uniform training timesteps in ``[0, T)``."""
        return torch.randint(0, self.n_timesteps, (n,), device=device)

    def noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``q_sample`` at integer timesteps ``t`` (one per row of ``x0``)."""
        return q_sample(x0, self.alpha_bar[t].unsqueeze(-1), noise)


def ddim_encode(x0: torch.Tensor, x0_fn, alpha_bar: torch.Tensor, timesteps: torch.Tensor):
    """Run the DDIM ODE from a clean sample (taken at ``timesteps[0]``) up to ``timesteps[-1]``.

    Parameters
    ----------
    x0
        Clean samples, cells x genes.
    x0_fn
        ``x0_fn(x, t) -> x0_hat`` with ``t`` a scalar timestep; the denoiser.
    alpha_bar
        The schedule's cumulative products.
    timesteps
        Increasing timesteps, e.g. :func:`ddim_timesteps`.

    Examples
    --------
    >>> ab = alphas_cumprod(linear_betas(10)).float()
    >>> x0 = torch.tensor([[1.0, 2.0]])
    >>> z = ddim_encode(x0, lambda x, t: x0, ab, ddim_timesteps(10, 3))
    >>> torch.allclose(ddim_decode(z, lambda x, t: x0, ab, ddim_timesteps(10, 3)), x0)
    True
    """
    x = x0
    for t_from, t_to in zip(timesteps[:-1].tolist(), timesteps[1:].tolist(), strict=True):
        x = ddim_step(x, x0_fn(x, t_from), alpha_bar[t_from], alpha_bar[t_to])
    return x


def ddim_decode(x_latent: torch.Tensor, x0_fn, alpha_bar: torch.Tensor, timesteps: torch.Tensor):
    """Run the DDIM ODE from the latent at ``timesteps[-1]`` down to ``timesteps[0]``.

    The inverse of :func:`ddim_encode` when ``x0_fn`` is the same deterministic function.
    """
    x = x_latent
    ts = timesteps.tolist()
    for t_from, t_to in zip(ts[:0:-1], ts[-2::-1], strict=True):
        x = ddim_step(x, x0_fn(x, t_from), alpha_bar[t_from], alpha_bar[t_to])
    return x
