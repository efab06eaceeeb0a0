"""The bridge: the diffusion schedule, the deterministic DDIM step and the two ODE runs.

A prediction encodes a control cell with the source model (:func:`encode`, the DDIM ODE from
the data up to the Gaussian latent) and decodes the latent with the target model
(:func:`decode`, down again). The DDIM arithmetic is small pure functions of tensors, so that
unit tests can pin it to values computed by hand; the networks come in as ``x0_fn(x_t, t)``.
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


def bridge_end(n_timesteps: int, depth: float = 1.0) -> int:
    """The last timestep of a bridge through the fraction ``depth`` of the diffusion time.

    Examples
    --------
    >>> bridge_end(500, 1.0), bridge_end(500, 0.5)
    (499, 250)
    """
    if not 0.0 < depth <= 1.0:
        raise ValueError(f"depth must be in (0, 1], got {depth}.")
    return max(1, round(depth * (n_timesteps - 1)))


def encode(
    x0: torch.Tensor,
    x0_fn,
    schedule: DiffusionSchedule,
    sigma_data: float,
    n_steps: int = 50,
    depth: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM run backwards through the source model: clean cells to the Gaussian latent.

    ``depth`` is the fraction of the diffusion time the bridge goes through: 1 (the paper)
    reaches the Gaussian latent at t = T - 1; less stops at an intermediate noise level, where
    more of the cell survives (decode with the same ``depth``).

    The run starts from the cell noised to the data's own scale (noise-to-signal ratio
    ``sigma_data``, t ~ 20 of 500 on the Norman data; the noise drawn from ``generator``) and
    is deterministic from there. This dequantises the zeros: a gene that is zero in most cells
    is a point mass, which a deterministic inversion maps to one latent value (per-gene latent
    std ~0.1 measured on the Norman controls), while the light noise gives it a standard-normal
    latent (std ~0.8) and keeps the cell's identity (decoding back through the source correlates
    0.92 with the input on expressed entries).

    Parameters
    ----------
    x0
        Clean cells (cells x genes) on the model's scale, minus the prior's centre.
    x0_fn
        ``x0_fn(x_t, t)`` with ``t`` an integer timestep: the source model's prediction.
    schedule
        The diffusion schedule.
    sigma_data
        The standard deviation of the data (on the model's scale).
    n_steps
        DDIM steps.
    depth
        Fraction of the diffusion time, in (0, 1].
    generator
        Random generator of the light noise (CPU).
    """
    alpha_bar = schedule.alpha_bar
    t_start = noise_level_timestep(alpha_bar, float(sigma_data))
    ts = ddim_timesteps(
        schedule.n_timesteps, n_steps, t_start, bridge_end(schedule.n_timesteps, depth)
    )
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_start = q_sample(x0, alpha_bar[ts[0]], noise)
    return ddim_encode(x_start, x0_fn, alpha_bar, ts)


def decode(
    latent: torch.Tensor,
    x0_fn,
    schedule: DiffusionSchedule,
    n_steps: int = 50,
    depth: float = 1.0,
) -> torch.Tensor:
    """DDIM run forwards through the target model: latents down to clean cells (see
    :func:`encode`; ``x0_fn`` is the target model's prediction)."""
    ts = ddim_timesteps(schedule.n_timesteps, n_steps, 0, bridge_end(schedule.n_timesteps, depth))
    return ddim_decode(latent, x0_fn, schedule.alpha_bar, ts)
