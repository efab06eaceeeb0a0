"""The built-in demo: simulate a screen, hold out gene pairs, train Doloris, compare to baselines.

:func:`run_demo` does everything and writes ``pred.h5ad``, ``metrics.csv`` and ``umap.png``; the
command line ``scdoloris demo`` calls it and prints its summary. Steps:

1. :func:`scdoloris.datasets.simulate` one cell type with single-gene knockouts and gene pairs
   of known interaction types, then ``normalize_total`` and ``log1p``;
2. hold out a few pairs (one per interaction type where possible) whose single genes stay in
   training;
3. train :class:`~scdoloris.DolorisModel` on the rest and predict the held-out pairs from the
   control cells; fit the :class:`~scdoloris.baselines.Additive` and
   :class:`~scdoloris.baselines.NoChange` baselines on the same cells;
4. score all three against the real held-out cells with :func:`scdoloris.metrics.evaluate`;
5. draw a UMAP of control, real and predicted cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["DemoConfig", "DemoResult", "DEFAULT", "FAST", "run_demo", "summarize"]


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
        Training epochs; ``None``: the model's default (about 2000 optimisation steps).
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
    n_steps: int = 50
    model_kwargs: dict = field(default_factory=dict)


#: About 3000 cells x 400 genes, the default model, 50 epochs (~950 steps; the loss has
#: flattened by then): about 3 minutes on one CPU core.
DEFAULT = DemoConfig(n_cells=3000, n_genes=400, n_single=10, n_pairs=8, n_held_out=4, max_epochs=50)
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
_GROUP_COLORS = {
    "control": "#c8c8c8",
    "real": "#333333",
    "Doloris": "#1f77b4",
    "Additive": "#ff7f0e",
}
_PALETTE = ["#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
SUMMARY_METRICS = {"e_distance": "E-distance", "emd": "EMD", "rmse": "RMSE"}


@dataclass
class DemoResult:
    """What :func:`run_demo` returns.

    Attributes
    ----------
    out_dir
        The output folder.
    files
        Written files by kind: ``"pred"``, ``"metrics"``, ``"umap"``.
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
    """

    out_dir: Path
    files: dict[str, Path]
    held_out: dict[str, str]
    metrics: pd.DataFrame
    summary: pd.DataFrame
    timings: dict[str, float]
    n_train_cells: int
    n_genes: int


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


def run_demo(
    out_dir: str | Path = "demo_output",
    fast: bool = False,
    seed: int = 0,
    max_epochs: int | None = None,
    config: DemoConfig | None = None,
    progress_bar: bool = True,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """Run the demo end to end and write ``pred.h5ad``, ``metrics.csv`` and ``umap.png``.

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

    from . import plotting
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
    files = {"pred": out / "pred.h5ad", "metrics": out / "metrics.csv", "umap": out / "umap.png"}
    pred.write_h5ad(files["pred"])
    metrics.to_csv(files["metrics"], index=False)
    n_real = real.obs["perturbation"].astype(str).value_counts().to_dict()
    parts = {"control": controls, "real": real}
    parts.update({m: _balanced(preds[m], n_real, seed) for m in ("Doloris", "Additive")})
    cells = []
    for group, part in parts.items():
        obs = pd.DataFrame(
            {
                "group": group,
                "perturbation": part.obs["perturbation"].astype(str).to_numpy(),
            },
            index=[f"{group}-{i}" for i in range(part.n_obs)],
        )
        X = part.X.toarray() if sparse.issparse(part.X) else np.asarray(part.X)
        cells.append(ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=part.var_names)))
    both = ad.concat(cells)
    both.obs["group"] = pd.Categorical(both.obs["group"], categories=list(parts))
    both.uns["group_colors"] = list(_GROUP_COLORS.values())
    perts = ["ctrl", *held_out]
    both.obs["perturbation"] = pd.Categorical(both.obs["perturbation"], categories=perts)
    both.uns["perturbation_colors"] = ["#c8c8c8"] + [
        _PALETTE[i % len(_PALETTE)] for i in range(len(held_out))
    ]
    plotting.umap(
        both,
        ["group", "perturbation"],
        files["umap"],
        seed=seed,
        title=["control, real and predicted cells", "perturbation"],
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
    )


if __name__ == "__main__":  # pragma: no cover - `python -m scdoloris.demo [--fast ...]`
    import sys

    from .cli import app

    app(["demo", *sys.argv[1:]], prog_name="scdoloris")
