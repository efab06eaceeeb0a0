"""Benchmark Doloris, its ablations and the baselines on the shared real data sets.

Run ``python benchmarks/run.py`` (``make bench``) for the full benchmark, which writes
``benchmarks/RESULTS.md`` and ``benchmarks/results/``; ``python benchmarks/run.py --tiny``
(``make bench-tiny``) is the seconds-long smoke configuration of CI, written to a temporary
directory. The protocols (splits) are in ``protocols.py``; ``README.md`` documents both.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import protocols
from _machine import run_record
from protocols import Condition, Split, cell_type_mask, condition_mask

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
TINY_MODEL = {
    "n_hidden": 64,
    "n_layers": 1,
    "n_cond": 32,
    "n_mask_hidden": 32,
    "n_graph_hidden": 16,
}
TINY_EPOCHS = 3
TINY_CELLS = 40
SCGEN_PROTOCOLS = ("kang",)
# scGen's training as in its paper and pertpy's example (early stopping on 10% of the cells)
SCGEN_TRAIN = {
    "max_epochs": 100,
    "batch_size": 32,
    "early_stopping": True,
    "early_stopping_patience": 25,
}

# Doloris variants: which trained model (module keyword arguments) and which predict options.
DOLORIS_MODELS = {
    "default": {},
    "no_mask": {"use_mask": False},
    "no_mu_sigma": {"use_control_state": False},
    "no_prior": {"prior": "none"},
    "no_unknown_type": {"cell_type_dropout": 0.0},
}
# models that differ from the default only with several cell types (trained in kang only)
CELL_TYPE_MODELS = ("no_unknown_type",)
DOLORIS_VARIANTS = {
    "Doloris": ("default", {}),
    "Doloris no mask": ("no_mask", {"mask": "none"}),
    "Doloris no latent": ("default", {"start": "noise"}),
    "Doloris auto start": ("default", {"start": "auto"}),
    "Doloris no mu/sigma": ("no_mu_sigma", {}),
    "Doloris bernoulli mask": ("default", {"mask": "bernoulli"}),
    "Doloris coherent mask": ("default", {"mask": "coherent"}),
    "Doloris no prior": ("no_prior", {}),
    "Doloris no residual": ("default", {"residual": "none"}),
    "Doloris no unseen prior": ("default", {"module.unseen_prior": "none"}),
    "Doloris no unknown cell type": ("no_unknown_type", {}),
}
BASELINES = ("NoChange", "MeanShift", "Additive", "LinearBaseline")
FLOOR = "Split-half floor"
METHODS = (*DOLORIS_VARIANTS, *BASELINES, "scGen", FLOOR)
METHOD_SLUGS = {
    "doloris": "Doloris",
    "no_mask": "Doloris no mask",
    "no_latent": "Doloris no latent",
    "auto_start": "Doloris auto start",
    "no_mu_sigma": "Doloris no mu/sigma",
    "bernoulli": "Doloris bernoulli mask",
    "coherent": "Doloris coherent mask",
    "no_prior": "Doloris no prior",
    "no_residual": "Doloris no residual",
    "no_unseen_prior": "Doloris no unseen prior",
    "no_unknown_type": "Doloris no unknown cell type",
    "nochange": "NoChange",
    "meanshift": "MeanShift",
    "additive": "Additive",
    "linear": "LinearBaseline",
    "scgen": "scGen",
    "floor": FLOOR,
}
# summary columns: (CSV column, header, higher is better)
SUMMARY = (
    ("e_distance", "E", False),
    ("e_distance_DE20", "E DE20", False),
    ("emd", "EMD", False),
    ("rmse", "RMSE", False),
    ("pearson_delta", "Pearson delta", True),
)
ID_COLUMNS = [
    "protocol",
    "method",
    "seed",
    "condition",
    "n_pred",
    "n_real",
    "train_seconds",
    "predict_seconds",
]


@dataclass
class Config:
    """Settings of one benchmark run (see :func:`parse_args`)."""

    protocols: list[str]
    seeds: list[int]
    methods: list[str]
    out: Path
    tiny: bool = False
    max_epochs: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    threads: int = 1
    command: str = ""
    ablation_seeds: list[int] | None = None

    def retrains(self, seed: int) -> bool:
        """Whether the ablation models (their own training) run at this seed."""
        return self.ablation_seeds is None or seed in self.ablation_seeds


@dataclass
class Predictions:
    """Predicted cells of one method run, one block per condition, and its timings."""

    blocks: dict[str, np.ndarray]
    var_names: list[str]
    train_seconds: float
    predict_seconds: dict[str, float]


# ---------------------------------------------------------------------------------- predictions
def _groups(split: Split) -> dict[str | None, list[Condition]]:
    """Conditions grouped by input cell type (one predict call per group)."""
    out: dict[str | None, list[Condition]] = {}
    for cond in split.conditions:
        out.setdefault(cond.cell_type, []).append(cond)
    return out


def _input_cells(split: Split, cell_type: str | None) -> ad.AnnData:
    """The input control cells of one cell type (all of them when None)."""
    return split.controls[cell_type_mask(split.controls, cell_type, split.setup)]


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)


def predict_blocks(
    split: Split, predict: Callable[[ad.AnnData, list[str], str | None], ad.AnnData]
) -> tuple[dict[str, np.ndarray], dict[str, float], list[str]]:
    """Run ``predict(controls, perturbations, cell_type)`` once per input cell type.

    Parameters
    ----------
    split
        The protocol's split.
    predict
        Returns one block of predicted cells per perturbation, in order, each with one cell per
        input control cell.

    Returns
    -------
    Predicted cells per condition name, predict seconds per condition (the call's time divided
    by its number of conditions) and the predicted genes.
    """
    blocks, seconds, var_names = {}, {}, []
    for cell_type, conds in _groups(split).items():
        ctrl = _input_cells(split, cell_type)
        start = time.perf_counter()
        pred = predict(ctrl, [c.perturbation for c in conds], cell_type)
        elapsed = time.perf_counter() - start
        X, n = _dense(pred.X), ctrl.n_obs
        if X.shape[0] != n * len(conds):
            raise RuntimeError(
                f"expected {n} predicted cells for each of {len(conds)} perturbations, "
                f"got {X.shape[0]} cells"
            )
        var_names = [str(g) for g in pred.var_names]
        for i, cond in enumerate(conds):
            blocks[cond.name] = X[i * n : (i + 1) * n]
            seconds[cond.name] = elapsed / len(conds)
    return blocks, seconds, var_names


def _seed_everything(seed: int) -> None:
    import scvi

    scvi.settings.seed = seed


def train_doloris(
    split: Split, config: Config, model_kwargs: dict, seed: int, train_kwargs: dict | None = None
):
    """Set the seed, register a copy of the training cells and train a Doloris model.

    Parameters
    ----------
    split
        The protocol's split.
    config
        Run settings (model size and epochs).
    model_kwargs
        Module keyword arguments of the variant (ablation switches).
    seed
        ``scvi.settings.seed``.
    train_kwargs
        More keyword arguments of :meth:`~scdoloris.DolorisModel.train`.

    Returns
    -------
    The trained model and the training seconds (model construction included).
    """
    from scdoloris import DolorisModel

    _seed_everything(seed)
    adata = split.train.copy()
    start = time.perf_counter()
    DolorisModel.setup_anndata(adata, **split.setup)
    model = DolorisModel(adata, **config.model_kwargs, **model_kwargs)
    train_kwargs = {"max_epochs": config.max_epochs, **(train_kwargs or {})}
    model.train(enable_progress_bar=False, **train_kwargs)
    return model, time.perf_counter() - start


def _doloris_predictor(model, seed: int, options: dict) -> Callable:
    """``predict(controls, perturbations, cell_type)`` of a trained Doloris model.

    ``options`` are keyword arguments of ``predict``, except keys ``"module.NAME"``: module
    attributes set for the call and restored after it (switches that act at prediction only,
    e.g. ``module.unseen_prior``).
    """
    attrs = {k.removeprefix("module."): v for k, v in options.items() if k.startswith("module.")}
    kwargs = {k: v for k, v in options.items() if not k.startswith("module.")}

    def predict(ctrl, perts, cell_type):
        saved = {k: getattr(model.module, k) for k in attrs}
        for k, v in attrs.items():
            setattr(model.module, k, v)
        try:
            return model.predict(
                ctrl, perts, cell_type=cell_type, seed=seed, progress_bar=False, **kwargs
            )
        finally:
            for k, v in saved.items():
                setattr(model.module, k, v)

    return predict


def run_doloris(split: Split, config: Config, seed: int) -> dict[str, Predictions]:
    """Train the models the selected Doloris variants need and predict with each variant.

    Parameters
    ----------
    split
        The protocol's split.
    config
        Run settings.
    seed
        Training seed (``scvi.settings.seed``) and prediction seed.

    Returns
    -------
    Predictions per variant name. Variants sharing a model share its training seconds.
    """
    out = {}
    variants = {m: v for m, v in DOLORIS_VARIANTS.items() if m in config.methods}
    if not config.retrains(seed):  # only the variants of the default model at this seed
        variants = {m: v for m, v in variants.items() if v[0] == "default"}
    if split.setup.get("cell_type_key") is None:  # one cell type: these equal the default
        variants = {m: v for m, v in variants.items() if v[0] not in CELL_TYPE_MODELS}
    for model_name in dict.fromkeys(v[0] for v in variants.values()):
        model, train_s = train_doloris(split, config, DOLORIS_MODELS[model_name], seed)
        for method, (used, options) in variants.items():
            if used != model_name:
                continue
            predict = _doloris_predictor(model, seed, options)
            blocks, seconds, genes = predict_blocks(split, predict)
            out[method] = Predictions(blocks, genes, train_s, seconds)
    return out


def run_baseline(split: Split, name: str) -> Predictions:
    """Fit one baseline of :mod:`scdoloris.baselines` on the training cells and predict.

    Parameters
    ----------
    split
        The protocol's split.
    name
        Class name in :mod:`scdoloris.baselines`.

    Returns
    -------
    Its predictions.
    """
    from scdoloris import baselines

    start = time.perf_counter()
    model = getattr(baselines, name)().fit(split.train, **split.setup)
    train_s = time.perf_counter() - start

    def predict(ctrl, perts, cell_type):
        with warnings.catch_warnings():  # MeanShift warns for unseen perturbations: intended
            warnings.simplefilter("ignore", UserWarning)
            return model.predict(ctrl, perts, cell_type=cell_type)

    blocks, seconds, genes = predict_blocks(split, predict)
    return Predictions(blocks, genes, train_s, seconds)


def run_scgen(split: Split, config: Config, seed: int) -> Predictions | None:
    """Train pertpy's scGen (JAX) and predict each held-out cell type from the input controls.

    scGen's own arithmetic (the latent stimulated-minus-control mean) is used unchanged; pertpy
    draws its balancing subsample with an unseeded generator, so scGen is not exactly
    reproducible. Returns None, printing the reason, when pertpy or JAX fails.

    Parameters
    ----------
    split
        The protocol's split (two conditions ``ctrl``/``stim``, cell types).
    config
        Run settings (``max_epochs`` overrides scGen's 100 epochs).
    seed
        ``scvi.settings.seed``.

    Returns
    -------
    Its predictions, or None.
    """
    try:
        import pertpy as pt

        _seed_everything(seed)
        setup = split.setup
        adata = split.train.copy()
        start = time.perf_counter()
        pt.tl.Scgen.setup_anndata(
            adata, batch_key=setup["perturbation_key"], labels_key=setup["cell_type_key"]
        )
        model = pt.tl.Scgen(adata)
        train_kw = {**SCGEN_TRAIN, "enable_progress_bar": False}
        if config.max_epochs is not None:
            train_kw["max_epochs"] = config.max_epochs
        model.train(**train_kw)
        train_s = time.perf_counter() - start

        def predict(ctrl, perts, cell_type):
            with warnings.catch_warnings():  # pertpy's obs-name and balancing chatter
                warnings.simplefilter("ignore", UserWarning)
                preds = [
                    model.predict(
                        ctrl_key=setup["control_group"], stim_key=p, adata_to_predict=ctrl.copy()
                    )[0]
                    for p in perts
                ]
            return ad.AnnData(np.concatenate([_dense(p.X) for p in preds]), var=preds[0].var)

        blocks, seconds, genes = predict_blocks(split, predict)
        return Predictions(blocks, genes, train_s, seconds)
    except Exception as err:  # pertpy / JAX problems must not stop the benchmark
        print(f"  scGen skipped: {type(err).__name__}: {err}")
        return None


def split_half_floor(split: Split, seed: int = protocols.SPLIT_SEED) -> Predictions:
    """The real-vs-real floor: each condition's real cells halved at random.

    The first half plays the prediction, the second half the real cells (see :func:`score`).

    Parameters
    ----------
    split
        The protocol's split.
    seed
        Seed of the halving.

    Returns
    -------
    "Predictions" holding the first halves; the second halves are in ``blocks`` under
    ``"<condition>\\x00real"``.
    """
    rng = np.random.default_rng(seed)
    blocks = {}
    for cond in split.conditions:
        real = _dense(split.real[condition_mask(split.real, cond, split.setup)].X)
        first, second = protocols.halves(np.zeros(real.shape[0]), rng)
        blocks[cond.name] = real[first]
        blocks[cond.name + "\x00real"] = real[second]
    genes = [str(g) for g in split.real.var_names]
    return Predictions(blocks, genes, 0.0, {c.name: 0.0 for c in split.conditions})


# ---------------------------------------------------------------------------------- scoring
def _labelled(X, var_names, name: str) -> ad.AnnData:
    """A bare AnnData of cells ``X`` all in condition ``name``."""
    obs = pd.DataFrame({"condition": [name] * X.shape[0]}, index=[str(i) for i in range(len(X))])
    return ad.AnnData(X=_dense(X), obs=obs, var=pd.DataFrame(index=list(var_names)))


def score(pred: np.ndarray, real: np.ndarray, control: np.ndarray, genes: list[str]) -> dict:
    """All metrics of :func:`scdoloris.metrics.evaluate` for one condition, as a flat dict.

    Parameters
    ----------
    pred, real, control
        Predicted, real and input control cells on ``genes``.
    genes
        Gene names.

    Returns
    -------
    ``{"e_distance": ..., "emd": ..., "e_distance_DE20": ..., ...}`` (all genes unsuffixed).
    """
    from scdoloris.metrics import evaluate

    table = evaluate(
        _labelled(pred, genes, "c"),
        _labelled(real, genes, "c"),
        _labelled(control, genes, "c"),
        de_top=(20, 40),
        groupby="condition",
    )
    return {
        (m if gs == "all" else f"{m}_{gs}"): float(v)
        for m, gs, v in table[["metric", "gene_set", "value"]].itertuples(index=False)
    }


def score_run(
    split: Split, name: str, method: str, seed: int | None, pred: Predictions
) -> list[dict]:
    """Score every condition of one method run.

    Parameters
    ----------
    split
        The protocol's split.
    name
        Protocol name.
    method
        Method name.
    seed
        The run's seed (None for deterministic methods).
    pred
        Its predictions.

    Returns
    -------
    One result row (dict) per condition.
    """
    rows = []
    genes = pred.var_names
    for cond in split.conditions:
        ctrl = split.controls[cell_type_mask(split.controls, cond.cell_type, split.setup)]
        ctrl_x = _dense(ctrl[:, genes].X)
        real_x = pred.blocks.get(cond.name + "\x00real")
        if real_x is None:
            real_x = _dense(split.real[condition_mask(split.real, cond, split.setup)][:, genes].X)
        P = pred.blocks[cond.name]
        rows.append(
            {
                "protocol": name,
                "method": method,
                "seed": seed,
                "condition": cond.name,
                "n_pred": P.shape[0],
                "n_real": real_x.shape[0],
                "train_seconds": pred.train_seconds,
                "predict_seconds": pred.predict_seconds[cond.name],
                **score(P, real_x, ctrl_x, genes),
            }
        )
    return rows


# ---------------------------------------------------------------------------------- protocol
def load_split(name: str, tiny: bool) -> Split:
    """Build the protocol's split; ``tiny`` caps every group at :data:`TINY_CELLS` cells."""
    function = protocols.PROTOCOLS[name]
    if not tiny:
        return function()
    kwargs = {"max_cells": TINY_CELLS}
    if name == "papalexi":
        kwargs["max_real"] = TINY_CELLS
    return function(**kwargs)


def run_protocol(name: str, config: Config) -> tuple[pd.DataFrame, dict]:
    """Run every selected method on one protocol.

    Parameters
    ----------
    name
        Protocol name (a key of :data:`protocols.PROTOCOLS`).
    config
        Run settings.

    Returns
    -------
    The per-condition results and the material of the UMAP figure (the split and the Doloris
    prediction of the first seed, when Doloris ran).
    """
    split = load_split(name, config.tiny)
    print(
        f"[{name}] train {split.train.n_obs} cells, input controls {split.controls.n_obs}, "
        f"held-out real {split.real.n_obs}; conditions: {[c.name for c in split.conditions]}"
    )
    rows, figure = [], {"split": split}
    methods = config.methods
    for seed in config.seeds:
        if any(m in methods for m in DOLORIS_VARIANTS):
            t0 = time.perf_counter()
            for method, pred in run_doloris(split, config, seed).items():
                rows += score_run(split, name, method, seed, pred)
                if method == "Doloris" and "doloris" not in figure:
                    figure["doloris"] = pred
            print(f"  Doloris variants, seed {seed}: {time.perf_counter() - t0:.1f} s")
        if "scGen" in methods and name in SCGEN_PROTOCOLS and not config.tiny:
            pred = run_scgen(split, config, seed)
            if pred is not None:
                rows += score_run(split, name, "scGen", seed, pred)
    has_pairs = any("+" in c.perturbation for c in split.conditions)
    for baseline in BASELINES:
        if baseline in methods and (baseline != "Additive" or has_pairs):
            rows += score_run(split, name, baseline, None, run_baseline(split, baseline))
    if FLOOR in methods:
        rows += score_run(split, name, FLOOR, None, split_half_floor(split))
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    metric_columns = sorted(c for c in table.columns if c not in ID_COLUMNS)
    return table[ID_COLUMNS + metric_columns], figure


# ---------------------------------------------------------------------------------- reporting
def _mean_sd(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _ordered(methods) -> list[str]:
    return [m for m in METHODS if m in set(methods)]


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds and conditions of the headline metrics, and run times, per method.

    Parameters
    ----------
    results
        Per-condition rows of one protocol.

    Returns
    -------
    One row per method (strings), in the benchmark's method order.
    """
    rows = []
    for method in _ordered(results["method"]):
        sub = results[results["method"] == method]
        runs = sub.groupby(sub["seed"].fillna(-1))
        row = {"method": method, "runs": int(runs.ngroups)}
        row.update({header: _mean_sd(sub[col]) for col, header, _ in SUMMARY})
        row["train s"] = _mean_sd(runs["train_seconds"].first(), 1)
        row["predict s"] = _mean_sd(runs["predict_seconds"].sum(), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table of a DataFrame of strings."""
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def wins_and_losses(results: pd.DataFrame) -> list[str]:
    """Sentences comparing Doloris (default) with the best baseline, metric by metric.

    The best baseline is the one with the best mean over conditions (NoChange, MeanShift,
    Additive, LinearBaseline, and scGen where it ran); per-condition counts compare the Doloris
    mean over seeds with the best baseline of that condition.

    Parameters
    ----------
    results
        Per-condition rows of one protocol.

    Returns
    -------
    Markdown bullet lines.
    """
    methods = set(results["method"])
    competitors = [m for m in (*BASELINES, "scGen") if m in methods]
    if "Doloris" not in methods or not competitors:
        return ["- (Doloris or the baselines did not run: no comparison.)"]
    per_cond = results.groupby(["method", "condition"]).mean(numeric_only=True)
    lines = []
    for col, header, higher in SUMMARY:
        means = results.groupby("method")[col].mean()
        base = means[competitors].dropna()
        if base.empty or np.isnan(means["Doloris"]):
            continue
        best = base.idxmax() if higher else base.idxmin()
        doloris, other = means["Doloris"], base[best]
        wins = doloris > other if higher else doloris < other
        table = per_cond[col].unstack("method")
        best_cond = table[base.index].max(1) if higher else table[base.index].min(1)
        cond_wins = (table["Doloris"] > best_cond) if higher else (table["Doloris"] < best_cond)
        floor = f"; split-half floor {means[FLOOR]:.3f}" if FLOOR in means else ""
        lines.append(
            f"- {header}: Doloris **{'wins' if wins else 'loses'}** ({doloris:.3f} vs best "
            f"baseline {best} {other:.3f}{floor}); better than the best baseline of the "
            f"condition in {int(cond_wins.sum())} of {len(table)} conditions."
        )
    e = results.groupby("method")["e_distance"].mean()
    for ablation in (m for m in DOLORIS_VARIANTS if m != "Doloris" and m in e):
        if e[ablation] == e["Doloris"]:  # the same predictions (the option does not apply)
            verdict = "the same as"
        else:
            verdict = "worse than" if e[ablation] > e["Doloris"] else "better than"
        lines.append(
            f"- Ablation {ablation}: E {e[ablation]:.3f}, {verdict} Doloris ({e['Doloris']:.3f})."
        )
    return lines


def run_info(config: Config) -> dict:
    """Command, commit (``+dirty`` with uncommitted changes), date, machine and settings."""
    epochs = config.max_epochs or "default (about 2000 steps)"
    tiny = "; TINY smoke configuration" if config.tiny else ""
    return {
        **run_record(config.command),
        "settings": (
            f"seeds {config.seeds} (ablations with their own model: "
            f"{config.ablation_seeds or 'all'}); max_epochs {epochs}; "
            f"model {config.model_kwargs or 'defaults'}{tiny}"
        ),
    }


def header(info: dict) -> str:
    """The RESULTS.md header: command, commit, date and machine of the latest run."""
    return "\n".join(
        [
            "# scdoloris benchmark results",
            "",
            "Generated by `benchmarks/run.py`; the protocols and methods are documented in "
            "`benchmarks/README.md`. Do not edit by hand.",
            "",
            f"- Command: `{info['command']}`",
            f"- Commit: `{info['commit']}`",
            f"- Date: {info['date']}",
            f"- Machine: {info['machine']}",
            f"- Settings: {info['settings']}",
            "",
            "Each protocol's section names the run that produced it (a run of a subset of the "
            "protocols keeps the other protocols' earlier results). Tables: mean ± sd over "
            "seeds and held-out conditions (E = E-distance on all genes, E DE20 on the "
            "condition's top 20 DE genes; EMD, RMSE and Pearson delta on all genes); `train s` "
            "and `predict s` are per run (all conditions), mean ± sd over seeds. Lower is better "
            "except Pearson delta. Variants `no latent`, `auto start`, `bernoulli mask`, "
            "`coherent mask`, `no residual` and `no unseen prior` reuse the default model, so "
            "they repeat its training time. Pearson delta is undefined (n/a) for NoChange, "
            "whose change from the input controls is zero.",
        ]
    )


def protocol_section(
    name: str, results: pd.DataFrame, info: dict | None = None, results_dir: Path | None = None
) -> str:
    """The RESULTS.md section of one protocol: table, wins and losses, figure links.

    Parameters
    ----------
    name
        Protocol name.
    results
        Its per-condition rows.
    info
        The :func:`run_info` of the run that produced them (with ``seconds``), if known.
    results_dir
        Where the figures are; only those that exist are linked (all when None).

    Returns
    -------
    Markdown text.
    """
    table = markdown_table(summary_table(results))
    conditions = ", ".join(dict.fromkeys(results["condition"]))
    files = [f"{name}_bars.png", f"{name}_umap.png"]
    if results_dir is not None:
        files = [f for f in files if (results_dir / f).exists()]
    figures = ", ".join(f"`results/{f}`" for f in files) or "none"
    run = []
    if info:
        run = [
            f"Run: `{info['command']}` at commit `{info['commit']}`, {info['date']}, "
            f"{info.get('seconds', float('nan')):.0f} s; {info['settings']}.",
            "",
        ]
    return "\n".join(
        [
            f"## {name}",
            "",
            *run,
            f"Held-out conditions: {conditions}.",
            "",
            table,
            "",
            "### Where Doloris wins / loses",
            "",
            *wins_and_losses(results),
            "",
            f"Per-condition results: `results/{name}.csv`; figures: {figures}.",
        ]
    )


def build_report(info: dict, results_dir: Path) -> str:
    """RESULTS.md from every protocol's CSV (and run record) found in ``results_dir``."""
    sections = []
    for name in protocols.PROTOCOLS:
        csv = results_dir / f"{name}.csv"
        if not csv.exists():
            continue
        record = results_dir / f"{name}.json"
        run = json.loads(record.read_text()) if record.exists() else None
        sections.append(protocol_section(name, pd.read_csv(csv), run, results_dir))
    return "\n\n".join([header(info), *sections]) + "\n"


# ---------------------------------------------------------------------------------- figures
def bar_figure(results: pd.DataFrame, path: Path) -> None:
    """Per-condition E-distance bars per method (mean over seeds, sd as error bars)."""
    from matplotlib.figure import Figure

    stats = results.groupby(["condition", "method"])["e_distance"].agg(["mean", "std"])
    conditions = list(dict.fromkeys(results["condition"]))
    methods = _ordered(results["method"])
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 1.6 * len(conditions)) + 2.5, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(conditions))
    from matplotlib import colormaps

    colours = colormaps["tab20"].colors  # more methods than tab10's ten colours
    for i, method in enumerate(methods):
        sub = stats.xs(method, level="method").reindex(conditions)
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            sub["mean"],
            width,
            yerr=sub["std"].fillna(0),
            label=method,
            color=colours[i % len(colours)],
        )
    ax.set_xticks(x, conditions, rotation=20, ha="right")
    ax.set_ylabel("E-distance (all genes, lower is better)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def umap_figure(figure: dict, path: Path) -> bool:
    """UMAP of input controls, real and Doloris-predicted cells of the first condition.

    Returns False (nothing drawn) when Doloris did not run.
    """
    import scanpy as sc
    from matplotlib.figure import Figure

    pred = figure.get("doloris")
    if pred is None:
        return False
    split: Split = figure["split"]
    cond = split.conditions[0]
    genes = pred.var_names
    parts = {
        "control (input)": _dense(_input_cells(split, cond.cell_type)[:, genes].X),
        "real": _dense(split.real[condition_mask(split.real, cond, split.setup)][:, genes].X),
        "Doloris": pred.blocks[cond.name],
    }
    labels = np.concatenate([[k] * len(v) for k, v in parts.items()])
    adata = ad.AnnData(np.concatenate(list(parts.values())))
    sc.pp.pca(adata, n_comps=min(30, adata.n_obs - 1, adata.n_vars - 1), random_state=0)
    sc.pp.neighbors(adata, n_neighbors=min(15, adata.n_obs - 1), random_state=0)
    sc.tl.umap(adata, random_state=0)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for label in parts:
        xy = adata.obsm["X_umap"][labels == label]
        ax.scatter(xy[:, 0], xy[:, 1], s=6, label=label, alpha=0.7)
    ax.set_title(f"{cond.name}: control, real and Doloris cells")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ---------------------------------------------------------------------------------- main
def _command(argv: list[str] | None) -> str:
    """The command line as typed (the script path relative to the repository when inside it)."""
    script = Path(sys.argv[0] if argv is None else __file__).resolve()
    if script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return shlex.join(["python", str(script), *(sys.argv[1:] if argv is None else argv)])


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse the command line into a :class:`Config`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", default="norman,papalexi,kang", help="comma-separated")
    parser.add_argument("--seeds", default=None, help="comma-separated; default 0,1,2 (tiny: 0)")
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of: {','.join(METHOD_SLUGS)} (default: all)",
    )
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration")
    parser.add_argument("--max-epochs", type=int, default=None, help="override training epochs")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory for RESULTS.md and results/ (default: benchmarks/; tiny: a "
        "new temporary directory)",
    )
    parser.add_argument(
        "--ablation-seeds",
        default=None,
        help="comma-separated seeds at which the ablations with their own model (no mask, "
        "no mu/sigma, no prior) are trained; default: the first seed only ('all' for every "
        "seed). Variants of the default model (no latent, auto start, bernoulli, coherent, "
        "no residual, no unseen prior) run at every seed",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default 2; tiny: 1)"
    )
    args = parser.parse_args(argv)
    names = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(names) - set(protocols.PROTOCOLS))
    if unknown:
        parser.error(f"unknown protocols {unknown}; choose from {sorted(protocols.PROTOCOLS)}")
    slugs = list(METHOD_SLUGS) if args.methods is None else args.methods.split(",")
    bad = sorted(set(s.strip() for s in slugs) - set(METHOD_SLUGS))
    if bad:
        parser.error(f"unknown methods {bad}; choose from {list(METHOD_SLUGS)}")
    seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2")).split(",")]
    if args.ablation_seeds == "all":
        ablation_seeds = None
    elif args.ablation_seeds is None:
        ablation_seeds = seeds[:1]
    else:
        ablation_seeds = [int(s) for s in args.ablation_seeds.split(",")]
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="scdoloris-bench-tiny-")) if args.tiny else BENCH_DIR
    else:
        out = Path(args.out)
    return Config(
        protocols=names,
        seeds=seeds,
        ablation_seeds=ablation_seeds,
        methods=[METHOD_SLUGS[s.strip()] for s in slugs],
        out=out,
        tiny=args.tiny,
        max_epochs=args.max_epochs or (TINY_EPOCHS if args.tiny else None),
        model_kwargs=dict(TINY_MODEL) if args.tiny else {},
        threads=args.threads or (1 if args.tiny else 2),
        command=_command(argv),
    )


def _quiet() -> None:
    """Silence the training loggers' and libraries' chatter (not the benchmark's output)."""
    import scvi

    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*transfer_batch_to_device.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*num_workers.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write RESULTS.md, the CSVs and the figures; print the tables."""
    config = parse_args(argv)
    import scvi

    # scvi-tools' setting: torch's count, and the one DolorisModel respects (issue #17)
    scvi.settings.num_threads = config.threads
    _quiet()
    results_dir = config.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    info = run_info(config)
    for name in config.protocols:
        t0 = time.perf_counter()
        results, figure = run_protocol(name, config)
        results.to_csv(results_dir / f"{name}.csv", index=False)
        record = {**info, "seconds": time.perf_counter() - t0}
        (results_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        bar_figure(results, results_dir / f"{name}_bars.png")
        umap = results_dir / f"{name}_umap.png"
        umap.unlink(missing_ok=True)  # never leave an earlier run's figure beside new numbers
        umap_figure(figure, umap)
        section = protocol_section(name, results, record, results_dir)
        print(f"\n{section}\n\n[{name}] {record['seconds']:.1f} s\n")
        # after every protocol, so that an interrupted run keeps what it finished
        (config.out / "RESULTS.md").write_text(build_report(info, results_dir))
    total = time.perf_counter() - start
    print(f"Wrote {config.out / 'RESULTS.md'} and {results_dir}/ in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
