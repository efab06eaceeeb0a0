"""The built-in demo: simulate a screen, hold out gene pairs, train Doloris, compare to baselines.

:func:`run_demo` does everything and writes ``pred.h5ad``, ``metrics.csv`` and ``pairs.png``; the
command line ``scdoloris demo`` calls it and prints its summary. Steps:

1. :func:`scdoloris.datasets.simulate` one cell type with single-gene knockouts and gene pairs
   of known interaction types, then ``normalize_total`` and ``log1p``;
2. hold out a few pairs (one per interaction type where possible) whose single genes stay in
   training;
3. train :class:`~scdoloris.DolorisModel` on the rest and predict the held-out pairs from the
   control cells; fit the :class:`~scdoloris.baselines.Additive` and
   :class:`~scdoloris.baselines.NoChange` baselines on the same cells;
4. score all three against the real held-out cells with :func:`scdoloris.metrics.evaluate`;
5. write the predictions and the metrics, and draw each held-out pair's control, real and
   predicted cells with the metrics on the figure (:func:`draw_pairs`).

The run time depends on the machine; ``scdoloris demo`` prints it, step by step, at the end.
Measured with ``make demo`` on an idle 2-core CPU (torch at one thread, the model's default):
59-63 s wall time in two runs, about 50 s of it training (with the calibration's inner
model); ``benchmarks/PERF.md`` has the latest measurement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from ._anndata_utils import dense

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DemoConfig", "DemoResult", "DEFAULT", "FAST", "draw_pairs", "run_demo", "summarize"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo's simulated screen and of its model.

    Parameters
    ----------
    n_cells, n_genes, n_single, n_pairs
        Passed to :func:`scdoloris.datasets.simulate` (one cell type).
    n_held_out
        Gene pairs held out of training and predicted.
    max_epochs
        Training epochs; ``None``: the model's default (at most 600 optimisation steps).
    n_steps
        DDIM steps of prediction.
    model_kwargs
        Passed to :class:`~scdoloris.DolorisModel` (e.g. smaller widths).
    """

    n_cells: int
    n_genes: int
    n_single: int
    n_pairs: int
    n_held_out: int
    max_epochs: int | None
    n_steps: int = 20
    model_kwargs: dict = field(default_factory=dict)


#: About 3000 cells x 400 genes, the default model trained for its default length (at most 600
#: optimisation steps) and predicted with the default 20 + 20 DDIM steps.
DEFAULT = DemoConfig(
    n_cells=3000, n_genes=400, n_single=10, n_pairs=8, n_held_out=4, max_epochs=None
)
#: Tiny data, a small model and a few epochs: seconds (for CI and a first look).
FAST = DemoConfig(
    n_cells=400,
    n_genes=60,
    n_single=5,
    n_pairs=4,
    n_held_out=2,
    max_epochs=4,
    n_steps=10,
    model_kwargs={"n_hidden": 64, "n_layers": 1, "n_cond": 16, "n_mask_hidden": 32},
)

METHODS = ("Doloris", "Additive", "NoChange")
#: Colours of the figure's groups of cells (NoChange's prediction is the control cells).
GROUP_COLORS = {
    "control": "#c8c8c8",
    "real": "#222222",
    "Doloris": "#1f77b4",
    "Additive": "#ff7f0e",
}
SUMMARY_METRICS = {"e_distance": "E-distance", "emd": "EMD", "rmse": "RMSE"}
CAPTION = (
    "What to look for. Each panel is one held-out gene pair, never seen in training; its axes "
    "are the first two principal components of the pair's real and control cells, and the "
    "predicted cells are projected onto them. Grey: control cells (also NoChange's "
    "prediction); black: the real cells of the pair; blue: Doloris; orange: Additive; "
    "crosses: each group's mean. A good prediction sits on the black cloud and is as spread "
    "as it: a cloud beside the black one missed the shift, a tighter or wider one the "
    "variability. The numbers are those of the printed tables and metrics.csv (all genes; "
    "lower is better)."
)


@dataclass
class DemoResult:
    """What :func:`run_demo` returns.

    Attributes
    ----------
    out_dir
        The output folder.
    files
        Written files by kind: ``"pred"``, ``"metrics"``, ``"figure"``.
    held_out
        The held-out pairs and their interaction types (``pair -> type``).
    metrics
        The tidy metrics of every method (:func:`scdoloris.metrics.evaluate`'s columns plus
        ``method`` and ``interaction``).
    summary
        :func:`summarize` of ``metrics``: methods x mean metric over the held-out pairs.
    timings
        Seconds per step.
    n_train_cells, n_genes
        Size of the training data.
    figure
        The figure saved in ``files["figure"]`` (:func:`draw_pairs`).
    """

    out_dir: Path
    files: dict[str, Path]
    held_out: dict[str, str]
    metrics: pd.DataFrame
    summary: pd.DataFrame
    timings: dict[str, float]
    n_train_cells: int
    n_genes: int
    figure: Figure | None = None


def summarize(
    metrics: pd.DataFrame, gene_set: str = "all", metrics_shown: dict[str, str] | None = None
) -> pd.DataFrame:
    """Mean of each metric over conditions, one row per method.

    Parameters
    ----------
    metrics
        A tidy table as returned by :func:`scdoloris.metrics.evaluate` with a ``method`` column.
    gene_set
        The gene set to summarise (``"all"``, ``"DE20"``, ...).
    metrics_shown
        Metric -> column title; default: E-distance, EMD and RMSE.

    Returns
    -------
    Methods (in order of appearance) x metrics.

    Examples
    --------
    >>> table = pd.DataFrame({"method": ["A", "A", "B"], "condition": ["x", "y", "x"],
    ...                       "gene_set": "all", "metric": "rmse", "value": [1.0, 3.0, 0.5]})
    >>> summarize(table, metrics_shown={"rmse": "RMSE"})["RMSE"].to_dict()
    {'A': 2.0, 'B': 0.5}
    """
    shown = SUMMARY_METRICS if metrics_shown is None else metrics_shown
    rows = metrics[(metrics["gene_set"] == gene_set) & metrics["metric"].isin(list(shown))]
    if rows.empty:
        raise ValueError(f"No rows with gene_set={gene_set!r} and metrics {list(shown)}.")
    order = list(dict.fromkeys(rows["method"]))
    table = rows.pivot_table(index="method", columns="metric", values="value", aggfunc="mean")
    table = table.reindex(index=order, columns=[m for m in shown if m in table.columns])
    table.columns.name = None
    return table.rename(columns=shown)


def _choose_held_out(truth: dict, n: int) -> list[str]:
    """Up to ``n`` pairs, one per interaction type first (in the simulator's type order)."""
    interactions = {str(k): str(v) for k, v in truth["interactions"].items()}
    pairs = [str(p) for p in truth["pairs"]]
    chosen: list[str] = []
    for kind in ("additive", "synergistic", "buffering", "epistatic"):
        first = next((p for p in pairs if interactions[p] == kind and p not in chosen), None)
        if first is not None and len(chosen) < n:
            chosen.append(first)
    chosen += [p for p in pairs if p not in chosen][: n - len(chosen)]
    return chosen


def _balanced(pred: ad.AnnData, n_per: dict[str, int], seed: int) -> ad.AnnData:
    """At most ``n_per[perturbation]`` random cells of each predicted perturbation."""
    rng = np.random.default_rng(seed)
    labels = pred.obs["perturbation"].astype(str).to_numpy()
    keep = []
    for p, n in n_per.items():
        rows = np.flatnonzero(labels == p)
        keep.append(np.sort(rng.choice(rows, size=min(n, rows.size), replace=False)))
    return pred[np.concatenate(keep)]


def _fmt(value: float) -> str:
    """A metric as the command line prints it."""
    return "nan" if value != value else f"{value:.3f}"


def draw_pairs(
    controls: ad.AnnData,
    real: ad.AnnData,
    preds: dict[str, ad.AnnData],
    metrics: pd.DataFrame,
    held_out: dict[str, str],
    path: str | Path | None = None,
    seed: int = 0,
    dpi: int = 110,
) -> Figure:
    """Draw, per held-out pair, its control, real and predicted cells with the metrics.

    One panel per pair: the first two principal components of the pair's real and control
    cells (fitted on those only, so the predictions do not shape the axes), the predicted cells
    projected onto them (as many per method as there are real cells, drawn at random), and a
    cross at each group's mean. Each panel shows the pair's E-distance for every method of
    ``metrics``; below the panels, the mean metrics of :func:`summarize` and a caption saying
    what to look for (:data:`CAPTION`). Uses matplotlib's Agg backend, no pyplot state.

    Parameters
    ----------
    controls
        The control cells the predictions started from.
    real
        The real cells of the held-out pairs (``obs["perturbation"]``).
    preds
        Predicted cells by method (e.g. ``"Doloris"``, ``"Additive"``), each with
        ``obs["perturbation"]``; coloured by :data:`GROUP_COLORS`.
    metrics
        A tidy table with ``method``, ``condition``, ``gene_set``, ``metric`` and ``value``
        (as :func:`run_demo` builds it).
    held_out
        Pair -> interaction type, in the order of the panels.
    path
        Where to save the figure; ``None`` only returns it.
    seed
        Seed of the subsampling of predicted cells.
    dpi
        Resolution of the saved image.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.

    Examples
    --------
    >>> result = run_demo("demo_output", fast=True)  # doctest: +SKIP
    >>> result.figure  # doctest: +SKIP
    """
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pairs = list(held_out)
    if not pairs:
        raise ValueError("No held-out pair to draw.")
    genes = list(controls.var_names)
    rng = np.random.default_rng(seed)
    scores = metrics[(metrics["gene_set"] == "all") & (metrics["metric"] == "e_distance")]
    e_dist = scores.pivot_table(index="condition", columns="method", values="value")
    methods = list(dict.fromkeys(metrics["method"]))
    x_ctrl = dense(controls.X, np.float64)
    real_labels = real.obs["perturbation"].astype(str).to_numpy()
    x_real_all = dense(real[:, genes].X, np.float64)

    n_cols = min(len(pairs), 4)
    n_rows = -(-len(pairs) // n_cols)
    panel, top = 3.6, 0.65  # inches: a panel, the title above the panels
    width = panel * n_cols + 0.4
    summary = summarize(metrics)
    means = "; ".join(
        f"{method}: " + ", ".join(f"{col} {_fmt(float(v))}" for col, v in row.items())
        for method, row in summary.iterrows()
    )
    chars = int(width * 15)  # characters per line of 8-point text
    text = textwrap.fill(
        f"Mean over the {len(pairs)} held-out pairs, all genes (lower is better): {means}.",
        chars,
    )
    text += "\n\n" + textwrap.fill(CAPTION, chars)
    # below the panels: their axis labels, the legend, then the text (0.15 inch per line)
    legend_at, text_at = 0.35, 0.75
    bottom = text_at + 0.15 * len(text.splitlines()) + 0.15
    height = panel * n_rows + top + bottom
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=0.2 / width, right=1 - 0.2 / width, top=1 - top / height,
        bottom=bottom / height, wspace=0.08, hspace=0.3,
    )  # fmt: skip
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    for ax, pair in zip(axes, pairs, strict=False):
        x_real = x_real_all[real_labels == pair]
        both = np.vstack([x_ctrl, x_real])
        center = both.mean(0)
        _, _, vt = np.linalg.svd(both - center, full_matrices=False)
        components = vt[:2].T

        def project(x, components=components, center=center):
            return (x - center) @ components

        groups = {"control": project(x_ctrl)}
        for method, pred in preds.items():
            cells = pred[(pred.obs["perturbation"].astype(str) == pair).to_numpy()]
            rows = rng.choice(cells.n_obs, size=min(len(x_real), cells.n_obs), replace=False)
            groups[method] = project(dense(cells[np.sort(rows)][:, genes].X, np.float64))
        groups["real"] = project(x_real)  # drawn last: the reference stays visible
        for group, z in groups.items():
            color = GROUP_COLORS.get(group, "#7f7f7f")
            size = 6 if group == "control" else 9
            ax.scatter(z[:, 0], z[:, 1], s=size, c=color, alpha=0.6, linewidths=0)
        for group, z in groups.items():
            mean = z.mean(0)
            ax.scatter(
                mean[0], mean[1], s=90, marker="X", c=GROUP_COLORS.get(group, "#7f7f7f"),
                edgecolors="white", linewidths=1.0, zorder=3,
            )  # fmt: skip
        ax.set_title(f"{pair} ({held_out[pair]})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("PC1", fontsize=8)
        ax.set_ylabel("PC2", fontsize=8)
        lines = ["E-distance"] + [
            f"{m}: {_fmt(float(e_dist.loc[pair, m]))}"
            for m in methods
            if pair in e_dist.index and m in e_dist.columns
        ]
        ax.text(
            0.02, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", ha="left",
            fontsize=8, family="monospace",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
        )  # fmt: skip

    handles = [
        Line2D([], [], ls="", marker="o", color=GROUP_COLORS.get(g, "#7f7f7f"), label=label)
        for g, label in [
            ("control", "control cells (= NoChange)"),
            ("real", "real cells"),
            *[(m, f"{m} prediction") for m in preds],
        ]
    ]
    fig.legend(
        handles=handles, loc="upper center", ncol=len(handles), frameon=False, fontsize=9,
        bbox_to_anchor=(0.5, (bottom - legend_at) / height), bbox_transform=fig.transFigure,
    )  # fmt: skip
    fig.text(0.5 / width, (bottom - text_at) / height, text, va="top", ha="left", fontsize=8)
    fig.suptitle(
        "Held-out gene pairs: control, real and predicted cells",
        fontsize=11, y=1 - 0.15 / height, va="top",
    )  # fmt: skip
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


def run_demo(
    out_dir: str | Path = "demo_output",
    fast: bool = False,
    seed: int = 0,
    max_epochs: int | None = None,
    config: DemoConfig | None = None,
    progress_bar: bool = True,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """Run the demo end to end and write ``pred.h5ad``, ``metrics.csv`` and ``pairs.png``.

    Parameters
    ----------
    out_dir
        Folder for the outputs (created; existing files of the same names are replaced).
    fast
        Use :data:`FAST` (tiny data, few epochs, seconds) instead of :data:`DEFAULT`.
    seed
        Seed of the simulation, of training (``scvi.settings.seed``) and of prediction.
    max_epochs
        Override the configuration's training epochs.
    config
        A custom :class:`DemoConfig` (overrides ``fast``).
    progress_bar
        Show the training and prediction progress bars.
    echo
        Called with a line of text at each step; ``None`` for silence.

    Returns
    -------
    A :class:`DemoResult` with the metrics, their summary and the written files.

    Examples
    --------
    >>> result = run_demo("demo_output", fast=True)  # doctest: +SKIP
    >>> result.summary  # doctest: +SKIP
    """
    import scanpy as sc
    import scvi

    from .baselines import Additive, NoChange
    from .datasets import simulate
    from .metrics import evaluate
    from .model import DolorisModel

    cfg = config if config is not None else (FAST if fast else DEFAULT)
    epochs = cfg.max_epochs if max_epochs is None else max_epochs
    say = echo if echo is not None else (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = now - clock
        clock = now

    # 1. data
    adata = simulate(
        n_cells=cfg.n_cells,
        n_genes=cfg.n_genes,
        n_cell_types=1,
        n_single=cfg.n_single,
        n_pairs=cfg.n_pairs,
        seed=seed,
    )
    truth = adata.uns["simulation"]
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    held_out = _choose_held_out(truth, cfg.n_held_out)
    interactions = {p: str(truth["interactions"][p]) for p in held_out}
    labels = adata.obs["perturbation"].astype(str)
    is_held = labels.isin(held_out).to_numpy()
    train = adata[~is_held].copy()
    real = adata[is_held].copy()
    controls = adata[(labels == "ctrl").to_numpy()].copy()
    say(
        f"Simulated {adata.n_obs} cells x {adata.n_vars} genes: {len(truth['singles'])} single "
        f"genes, {len(truth['pairs'])} pairs, {controls.n_obs} control cells."
    )
    say(
        "Held out (predicted, never seen in training): "
        + ", ".join(f"{p} ({interactions[p]})" for p in held_out)
    )
    lap("simulate")

    # 2. train
    scvi.settings.seed = seed
    DolorisModel.setup_anndata(train, perturbation_key="perturbation", control_group="ctrl")
    model = DolorisModel(train, **cfg.model_kwargs)
    say(f"Training Doloris on {train.n_obs} cells ({epochs or 'default'} epochs).")
    model.train(max_epochs=epochs, enable_progress_bar=progress_bar)
    lap("train")

    # 3. predict
    pred = model.predict(
        controls, held_out, n_steps=cfg.n_steps, seed=seed, progress_bar=progress_bar
    )
    preds = {"Doloris": pred}
    for baseline in (Additive(), NoChange()):
        baseline.fit(train, perturbation_key="perturbation", control_group="ctrl")
        preds[baseline.name] = baseline.predict(controls, held_out)
    lap("predict")

    # 4. evaluate
    tables = []
    for method, p in preds.items():
        t = evaluate(p, real, controls, de_top=(20,), control_group="ctrl")
        t.insert(0, "method", method)
        tables.append(t)
    metrics = pd.concat(tables, ignore_index=True)
    metrics.insert(2, "interaction", metrics["condition"].map(interactions))
    summary = summarize(metrics)
    lap("evaluate")

    # 5. files
    files = {"pred": out / "pred.h5ad", "metrics": out / "metrics.csv", "figure": out / "pairs.png"}
    say(f"Writing the predictions ({files['pred']}) and the metrics ({files['metrics']}) ...")
    pred.write_h5ad(files["pred"])
    metrics.to_csv(files["metrics"], index=False)
    say(
        f"Drawing the control, real and predicted cells of each held-out pair ({files['figure']}) ..."
    )
    figure = draw_pairs(
        controls,
        real,
        {m: preds[m] for m in ("Doloris", "Additive")},
        metrics,
        interactions,
        path=files["figure"],
        seed=seed,
    )
    lap("write")
    say(f"Wrote {', '.join(str(f) for f in files.values())}.")
    return DemoResult(
        out_dir=out,
        files=files,
        held_out=interactions,
        metrics=metrics,
        summary=summary,
        timings=timings,
        n_train_cells=train.n_obs,
        n_genes=train.n_vars,
        figure=figure,
    )


if __name__ == "__main__":  # pragma: no cover - the command line runs the demo, not this module
    # the command line (scdoloris.cli) imports this module; this one does not import it back
    raise SystemExit("Run the demo with `scdoloris demo` or `python -m scdoloris demo`.")
