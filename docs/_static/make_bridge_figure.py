"""Draw ``bridge.png``: the two deterministic ODE runs of Doloris through the shared latent.

A one-gene toy, computed exactly: the control and perturbed expression distributions are
Gaussian mixtures, for which the best possible x0-predicting denoiser E[x0 | x_t] has a closed
form. Control cells are encoded by running the DDIM ODE of the *source* (control) model
forwards in diffusion time to t = T (the shared Gaussian latent), then decoded by running the
DDIM ODE of the *target* (perturbed) model back to t = 0. The schedule is the package's (linear
betas, T = 500). No network is trained; nothing here is a measured result.

Run once from the repository root (a second or two of CPU)::

    .venv/bin/python docs/_static/make_bridge_figure.py

and commit the PNG it writes next to this script.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

T = 500
N_STEPS = 50
OUT = Path(__file__).with_name("bridge.png")

# one gene, log-normalised scale: (weight, mean, sd) of each mixture component
SOURCE = [(0.55, 0.6, 0.18), (0.45, 1.6, 0.22)]  # control cells: two states
TARGET = [(0.40, 1.3, 0.15), (0.60, 2.6, 0.25)]  # perturbed cells: both states shifted

COLOR_SOURCE = "#3b75af"
COLOR_TARGET = "#e1812c"
COLOR_LATENT = "#7f7f7f"


def alpha_bar(n_timesteps: int = T) -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, n_timesteps)
    return np.cumprod(1.0 - betas)


def x0_hat(x: np.ndarray, a: float, mixture) -> np.ndarray:
    """E[x0 | x_t = x] for a Gaussian-mixture x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    logw, means = [], []
    for w, mu, sd in mixture:
        var_t = a * sd**2 + (1.0 - a)
        logw.append(np.log(w) - 0.5 * np.log(var_t) - 0.5 * (x - np.sqrt(a) * mu) ** 2 / var_t)
        means.append(mu + sd**2 * np.sqrt(a) / var_t * (x - np.sqrt(a) * mu))
    logw = np.array(logw)
    r = np.exp(logw - logw.max(0))
    r /= r.sum(0)
    return (r * np.array(means)).sum(0)


def ddim_step(x, x0, a_from, a_to):
    eps = (x - np.sqrt(a_from) * x0) / np.sqrt(1.0 - a_from)
    return np.sqrt(a_to) * x0 + np.sqrt(1.0 - a_to) * eps


def run(x, mixture, ts, ab):
    """DDIM along ``ts``; returns the path (len(ts) x cells)."""
    path = [x]
    for t_from, t_to in zip(ts[:-1], ts[1:], strict=True):
        x = ddim_step(x, x0_hat(x, ab[t_from], mixture), ab[t_from], ab[t_to])
        path.append(x)
    return np.array(path)


def density(grid, mixture, a=1.0):
    out = np.zeros_like(grid)
    for w, mu, sd in mixture:
        var = a * sd**2 + (1.0 - a)
        out += w * np.exp(-0.5 * (grid - np.sqrt(a) * mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
    return out


def quantiles(mixture, q):
    grid = np.linspace(-1.0, 4.0, 20001)
    cdf = np.cumsum(density(grid, mixture))
    cdf /= cdf[-1]
    return np.interp(q, cdf, grid)


def main() -> None:
    ab = alpha_bar()
    # like the package: start from a lightly noised cell (t_start), run to t = T - 1
    t_start = 2
    ts = np.floor(np.linspace(t_start, T - 1, N_STEPS + 1)).astype(int)
    cells = quantiles(SOURCE, np.linspace(0.03, 0.97, 24))
    encode = run(cells, SOURCE, ts, ab)  # source model, t: 0 -> T
    decode = run(encode[-1], TARGET, ts[::-1], ab)  # target model, t: T -> 0

    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=150)
    x_enc = (ts - ts[0]) / (ts[-1] - ts[0])  # 0 .. 1
    x_dec = 1.0 + (1.0 - x_enc[::-1])  # 1 .. 2
    colors = plt.cm.viridis(np.linspace(0.05, 0.95, len(cells)))
    for i, c in enumerate(colors):
        ax.plot(x_enc, encode[:, i], color=c, lw=1.1, alpha=0.9)
        ax.plot(x_dec, decode[:, i], color=c, lw=1.1, alpha=0.9)

    grid = np.linspace(-3.2, 3.6, 600)
    width = 0.22
    for x_at, dens, color, label in (
        (0.0, density(grid, SOURCE), COLOR_SOURCE, "control cells"),
        (1.0, density(grid, SOURCE, ab[-1]), COLOR_LATENT, "shared latent\n(about N(0, 1))"),
        (2.0, density(grid, TARGET), COLOR_TARGET, "predicted\nperturbed cells"),
    ):
        d = dens / dens.max() * width
        side = -1 if x_at == 0.0 else 1
        ax.fill_betweenx(grid, x_at, x_at + side * d, color=color, alpha=0.35, lw=0)
        ax.plot(x_at + side * d, grid, color=color, lw=1.5)
        ax.axvline(x_at, color=color, lw=1.0, ls=":")
        ax.text(
            x_at + side * 0.02,
            3.75,
            label,
            ha="right" if side < 0 else "left",
            va="bottom",
            fontsize=9,
            color=color,
        )

    ax.annotate(
        "",
        xy=(0.93, -2.75),
        xytext=(0.07, -2.75),
        arrowprops={"arrowstyle": "->", "color": COLOR_SOURCE, "lw": 1.6},
    )
    ax.text(
        0.5,
        -3.05,
        "encode: source model (control cells; cell type)\nDDIM backwards, t: 0 → T",
        ha="center",
        va="top",
        fontsize=9,
        color=COLOR_SOURCE,
    )
    ax.annotate(
        "",
        xy=(1.93, -2.75),
        xytext=(1.07, -2.75),
        arrowprops={"arrowstyle": "->", "color": COLOR_TARGET, "lw": 1.6},
    )
    ax.text(
        1.5,
        -3.05,
        "decode: target model (perturbation, cell type,\ncontrol cell); DDIM forwards, t: T → 0",
        ha="center",
        va="top",
        fontsize=9,
        color=COLOR_TARGET,
    )

    ax.set_xlim(-0.3, 2.3)
    ax.set_ylim(-4.1, 4.4)
    ax.set_xticks([0, 1, 2], ["t = 0\n(data)", "t = T\n(latent)", "t = 0\n(data)"])
    ax.set_ylabel("expression of one gene (toy)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        "The Doloris bridge: each control cell is carried through the shared Gaussian latent",
        fontsize=11,
    )
    fig.text(
        0.01,
        0.01,
        "Toy one-gene example with exact denoisers (not a trained model); "
        "the line colour follows each cell from start to end.",
        fontsize=7.5,
        color="0.4",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(OUT, metadata={"Software": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
