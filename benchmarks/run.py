"""The cross-validated benchmark: Doloris, its uncalibrated model and the baselines, fold by fold.

``python benchmarks/run.py`` (``make bench``) runs every task kind of ``tasks.py`` (every
condition held out once, K folds over conditions) at seeds 0, 1 and 2, writes the per-condition
scores to ``benchmarks/results/<task>.csv`` and the report to ``benchmarks/RESULTS.md``
(``report.py``). ``--tiny`` is CI's seconds-long smoke configuration (a temporary directory).
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
from dataclasses import dataclass, field
from pathlib import Path

import cell_eval_scores
import numpy as np
import pandas as pd
import peers
import report
import scgen
import tasks
from _machine import run_record

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
TINY_MODEL = {
    "n_hidden": 64,
    "n_layers": 1,
    "n_cond": 32,
    "n_mask_hidden": 32,
    "n_graph_hidden": 16,
}
TINY_STEPS = 30
TINY_CELLS = 40
TINY_TASKS = ("norman_pairs", "kang_cell_type")
SCGEN_TASKS = ("kang_cell_type", "kang_donor")  # scGen's own task (benchmarks/scgen.py)
#: scGen trains ~100 s per fold with early stopping; one seed keeps `make bench` near an hour
SCGEN_SEEDS = (0,)

DOLORIS = "Doloris"
UNCALIBRATED = "Doloris uncalibrated"
BASELINES = ("NoChange", "MeanShift", "Additive")
FLOOR = "Split-half floor"
# ablations (scdoloris.ablations): retrained variants, trained without the inner validation and
# compared with the uncalibrated default; and prediction-time variants of the default model
ABLATION_MODELS = ("no prior", "no mu/sigma")
ABLATION_PREDICT = ("no residual",)
METHOD_SLUGS = {
    "doloris": DOLORIS,
    "uncalibrated": UNCALIBRATED,
    "nochange": "NoChange",
    "meanshift": "MeanShift",
    "additive": "Additive",
    "scgen": "scGen",
    "floor": FLOOR,
    "no_prior": "Doloris no prior",
    "no_mu_sigma": "Doloris no mu/sigma",
    "no_residual": "Doloris no residual",
    # peers in their own virtual environments (peers.py; make bench-peers), never by default
    "cellflow": "CellFlow",
    "cpa": "CPA",
}
DEFAULT_METHODS = ("doloris", "uncalibrated", "nochange", "meanshift", "additive", "scgen", "floor")


@dataclass
class Config:
    """Settings of one benchmark run."""

    tasks: list[str]
    seeds: list[int]
    methods: list[str]
    out: Path
    tiny: bool = False
    steps: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    threads: int | None = None
    views: tuple[str, ...] = tasks.VIEWS
    folds: list[int] | None = None
    max_cells: int = tasks.MAX_CELLS
    jobs: int = 1
    command: str = ""
    cell_eval: bool = False
    peer_steps: dict[str, int] = field(default_factory=dict)


def _quiet() -> None:
    """Silence the training loggers' and libraries' chatter (not the benchmark's output)."""
    import scvi

    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "jax", "scdoloris"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# ---------------------------------------------------------------------------------- methods
def train_doloris(
    fold: tasks.Fold, config: Config, seed: int, calibrate: bool, ablation: str | None = None
):
    """Register a copy of the fold's training cells and train Doloris (or one of its
    ``ablation`` variants, ``scdoloris.ablations``); (model, seconds)."""
    import scvi

    from scdoloris import DolorisModel, ablations

    scvi.settings.seed = seed
    if config.threads is not None:
        scvi.settings.num_threads = config.threads
    adata = fold.train.copy()
    start = time.perf_counter()
    DolorisModel.setup_anndata(adata, **fold.setup)
    variant = ablations.variant(ablation)
    model = variant.build(adata, **config.model_kwargs)
    kwargs = {"enable_progress_bar": False, "calibrate": calibrate}
    if config.steps is not None:
        kwargs["max_epochs"] = max(1, int(np.ceil(config.steps / np.ceil(adata.n_obs / 128))))
    variant.train(model, **kwargs)
    return model, time.perf_counter() - start


def predict_doloris(
    model,
    fold: tasks.Fold,
    cond: tasks.Condition,
    view: str,
    seed: int,
    ablation: str | None = None,
    **kw,
):
    """One condition's prediction from its input cells in ``view`` (with the prediction
    switches of an ``ablation``); (cells, seconds)."""
    from scdoloris import ablations

    start = time.perf_counter()
    with ablations.variant(ablation).applied(model):
        pred = model.predict(
            fold.input_cells(cond, view),
            cond.perturbation,
            cell_type=cond.cell_type,
            seed=seed,
            progress_bar=False,
            allow_unknown=True,
            **kw,
        )
    return tasks.dense(pred.X), time.perf_counter() - start


def fit_baselines(fold: tasks.Fold) -> dict:
    """The package's baselines fitted on the fold's training cells."""
    from scdoloris import baselines

    out = {}
    for name in BASELINES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = getattr(baselines, name)().fit(fold.train, **fold.setup)
    return out


def predict_baseline(model, name: str, fold: tasks.Fold, cond: tasks.Condition, view: str):
    """A baseline's prediction; Additive falls back to MeanShift where a token has no single
    (for a single perturbation the two are the same)."""
    ctrl = fold.input_cells(cond, view)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pred = model[name].predict(ctrl, cond.perturbation, cell_type=cond.cell_type)
        except ValueError:
            if name != "Additive":
                raise
            pred = model["MeanShift"].predict(ctrl, cond.perturbation, cell_type=cond.cell_type)
    return tasks.dense(pred.X)


# ---------------------------------------------------------------------------------- scoring
def score(P: np.ndarray, R: np.ndarray, C: np.ndarray, de: np.ndarray) -> dict:
    """E-distance, EMD and RMSE on all genes, E-distance on the top-20 DE genes, Pearson delta;
    and what users do next with the cells: the share of the real top-20 DE genes (Wilcoxon
    against the input cells ``C``, as ``sc.tl.rank_genes_groups`` ranks them) that the
    prediction's top 20 find, the per-gene detection-rate error, the expressed genes per cell
    over the real cells' (medians) and the genes with one non-zero value in every cell."""
    from scdoloris import metrics

    out = {
        "e_distance": metrics.e_distance(P, R),
        "emd": metrics.emd(P, R),
        "rmse": metrics.rmse(P, R),
        "e_distance_DE20": metrics.e_distance(P[:, de], R[:, de]),
    }
    delta = P.mean(0) - C.mean(0)
    out["pearson_delta"] = metrics.pearson_delta(P, R, C) if np.abs(delta).max() > 1e-8 else np.nan
    out["de_overlap_20"] = metrics.de_overlap(P, R, C, 20)
    out["detection_error"] = metrics.detection_error(P, R)
    out["expressed_genes_ratio"] = metrics.expressed_genes_ratio(P, R)
    out["constant_genes"] = int(metrics.constant_genes(P).size)
    return out


def top_de(R: np.ndarray, C: np.ndarray, n: int = 20) -> np.ndarray:
    """The condition's top ``n`` genes by absolute mean difference of real vs input cells."""
    return np.argsort(-np.abs(R.mean(0) - C.mean(0)), kind="stable")[:n]


def rank_metric(means: dict[str, np.ndarray], real_means: dict[str, np.ndarray]) -> dict:
    """Per condition: the fraction of the task kind's other conditions whose real mean is closer
    to this condition's predicted mean than its own real mean is (0 best, about 0.5 chance)."""
    names = list(real_means)
    out = {}
    for c, m in means.items():
        d = {o: float(np.linalg.norm(m - real_means[o])) for o in names}
        others = [o for o in names if o != c]
        out[c] = float(np.mean([d[o] < d[c] for o in others])) if others else np.nan
    return out


# ---------------------------------------------------------------------------------- a task
def run_job(name: str, index: int, seed: int | None, config: Config) -> dict:
    """One fold of one task kind: the deterministic methods (``seed`` None) or the seeded ones
    at ``seed``. Returns the score rows, the predicted means (for the rank), the real means and
    the calibration chosen."""
    import scvi

    _quiet()
    if config.threads is not None:
        scvi.settings.num_threads = config.threads
    start = time.perf_counter()
    fold = next(tasks.folds(name, only=[index], max_cells=config.max_cells))
    conds = fold.conditions
    reals = {c.name: tasks.dense(fold.real[c.name].X) for c in conds}
    inputs = {
        (v, c.name): tasks.dense(fold.input_cells(c, v).X) for v in config.views for c in conds
    }
    out = {"rows": [], "means": {}, "calibration": None, "cells": {}, "genes": None, "peers": []}
    out["real_means"] = {c: R.mean(0) for c, R in reals.items()}
    if config.cell_eval:  # the main view's cells, for cell-eval (cell_eval_scores.py)
        out["genes"] = list(fold.train.var_names)
        out["reals"] = reals
        out["contexts"] = {c.name: c.context for c in conds}
        out["controls"] = {c.context: inputs[(cell_eval_scores.VIEW, c.name)] for c in conds}
    methods = set(config.methods)

    def record(method, cond, view, P, train_s=0.0, predict_s=0.0, real=None):
        R = reals[cond.name] if real is None else real
        C = inputs[(view, cond.name)]
        if config.cell_eval and view == cell_eval_scores.VIEW:
            out["cells"][(method, seed, cond.name)] = (P, real)
        out["rows"].append(
            {
                "task": name,
                "fold": fold.index,
                "condition": cond.name,
                "view": view,
                "method": method,
                "seed": seed,
                "n_pred": P.shape[0],
                "n_real": R.shape[0],
                "train_seconds": train_s,
                "predict_seconds": predict_s,
                **score(P, R, C, top_de(R, C)),
            }
        )
        out["means"].setdefault((view, method, seed), {})[cond.name] = P.mean(0)

    def predict_all(method, model, train_s, ablation=None, **kw):
        for v in config.views:
            for c in conds:
                P, s = predict_doloris(model, fold, c, v, seed, ablation, **kw)
                record(method, c, v, P, train_s, s)

    if seed is None:
        if methods & set(BASELINES):
            base = fit_baselines(fold)
            for b in (b for b in BASELINES if b in methods):
                for v in config.views:
                    for c in conds:
                        record(b, c, v, predict_baseline(base, b, fold, c, v))
        if FLOOR in methods:
            rng = np.random.default_rng(tasks.SPLIT_SEED)
            for c in conds:
                R = reals[c.name]
                order = rng.permutation(R.shape[0])
                half = (R.shape[0] + 1) // 2
                for v in config.views:
                    record(FLOOR, c, v, R[order[:half]], real=R[order[half:]])
    else:
        default_variants = {DOLORIS: (None, {}), UNCALIBRATED: (None, {"calibrate": False})}
        default_variants |= {f"Doloris {k}": (k, {"calibrate": False}) for k in ABLATION_PREDICT}
        wanted = {m: v for m, v in default_variants.items() if m in methods}
        if wanted:
            calibrate = DOLORIS in methods
            model, train_s = train_doloris(fold, config, seed, calibrate)
            if calibrate and model.calibration is not None:
                out["calibration"] = {
                    "task": name,
                    "fold": fold.index,
                    "seed": seed,
                    **{
                        k: f"{b} {w:g}" + (f" {how}" if 0 < w < 1 else "")
                        for k, (b, w, how) in model.calibration.choices.items()
                    },
                }
            for method, (ablation, kw) in wanted.items():
                predict_all(method, model, train_s, ablation, **kw)
        for ablation in ABLATION_MODELS:
            if f"Doloris {ablation}" in methods:
                model, train_s = train_doloris(fold, config, seed, False, ablation)
                predict_all(f"Doloris {ablation}", model, train_s, calibrate=False)
        if "scGen" in methods and name in SCGEN_TASKS and seed in SCGEN_SEEDS and not config.tiny:
            trained = scgen.train_scgen(fold, seed)
            if trained is not None:
                model, train_s = trained
                for v in config.views:
                    for c in conds:
                        t0 = time.perf_counter()
                        P = scgen.predict_scgen(model, fold, c, v, seed=seed)
                        record("scGen", c, v, P, train_s, time.perf_counter() - t0)
        for peer in (p for p in peers.PEERS if p in methods):
            result = peers.train_predict_peer(
                peer, fold, config.views, seed, config.threads or 1, config.peer_steps.get(peer)
            )
            if result is None:
                continue
            for c in conds:
                for v in config.views:
                    if (v, c.name) in result["pred"]:
                        P, train_s, predict_s = result["pred"][(v, c.name)]
                        record(peer, c, v, P, train_s, predict_s)
            meta = result["meta"]
            out["peers"].append(
                {
                    "peer": peer,
                    "task": name,
                    "fold": fold.index,
                    "seed": seed,
                    "train_seconds": meta["train_seconds"],
                    "wall_seconds": meta["wall_seconds"],
                    "na": {f"{c} ({v})": why for (v, c), why in result["na"].items()},
                    "settings": meta.get("settings"),
                    "versions": meta.get("versions"),
                }
            )
    what = "baselines" if seed is None else f"seed {seed}"
    print(
        f"[{name}] fold {fold.index}, {what}: {len(conds)} conditions, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return out


def run_task(name: str, config: Config) -> pd.DataFrame:
    """Every fold of one task kind; one row per condition, view, method and seed.

    With ``config.jobs > 1`` the (fold, seed) jobs run in that many processes (each with
    ``config.threads`` torch threads).
    """
    n_folds = len(tasks.fold_assignment(name, tasks.conditions(name, max_cells=config.max_cells)))
    folds = range(n_folds) if config.folds is None else [f for f in config.folds if f < n_folds]
    jobs = [(name, f, s, config) for f in folds for s in [None, *config.seeds]]
    if config.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        context = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context) as pool:
            results = list(pool.map(run_job, *zip(*jobs, strict=True)))
    else:
        results = [run_job(*job) for job in jobs]
    rows, means, real_means, calibrations, peer_runs = [], {}, {}, [], []
    for r in results:
        rows += r["rows"]
        for key, m in r["means"].items():
            means.setdefault(key, {}).update(m)
        real_means.update(r["real_means"])
        if r["calibration"] is not None:
            calibrations.append(r["calibration"])
        peer_runs += r.get("peers", [])
    table = pd.DataFrame(rows)
    if config.cell_eval:
        table = cell_eval_scores.add_scores(table, results, name, config.threads or 1)
    ranks = {key: rank_metric(m, real_means) for key, m in means.items()}
    table["rank"] = [
        ranks[(r.view, r.method, None if pd.isna(r.seed) else r.seed)].get(r.condition, np.nan)
        for r in table.itertuples()
    ]
    table.attrs["calibrations"] = calibrations
    table.attrs["peers"] = peer_runs
    return table


# ---------------------------------------------------------------------------------- main
def _command(argv: list[str] | None) -> str:
    script = Path(sys.argv[0] if argv is None else __file__).resolve()
    if script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return shlex.join(["python", str(script), *(sys.argv[1:] if argv is None else argv)])


def _peer_steps(text: str | None, parser: argparse.ArgumentParser) -> dict[str, int]:
    """``--peer-steps``: ``"N"`` (every peer) or ``"cellflow=N,cpa=M"`` -> {peer name: steps}."""
    if not text:
        return {}
    if "=" not in text:
        return dict.fromkeys(peers.PEERS, int(text))
    out = {}
    for item in text.split(","):
        slug, _, n = item.partition("=")
        if METHOD_SLUGS.get(slug) not in peers.PEERS:
            parser.error(f"--peer-steps: {slug!r} is not a peer ({list(peers.PEERS)})")
        out[METHOD_SLUGS[slug]] = int(n)
    return out


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse the command line into a :class:`Config`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=None, help=f"comma-separated of {list(tasks.TASKS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated; default 0,1,2 (tiny: 0)")
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated of {list(METHOD_SLUGS)}; default {','.join(DEFAULT_METHODS)}",
    )
    parser.add_argument("--steps", type=int, default=None, help="Doloris training steps")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default all)")
    parser.add_argument("--views", default=",".join(tasks.VIEWS), help="train,held-out")
    parser.add_argument("--threads", type=int, default=None, help="scvi.settings.num_threads")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes running (fold, seed) jobs in parallel"
    )
    parser.add_argument(
        "--peer-steps",
        default=None,
        help="peers' training steps (default: their own): N for all, or cellflow=N,cpa=M",
    )
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration")
    parser.add_argument(
        "--cell-eval",
        choices=("auto", "yes", "no"),
        default="auto",
        help="score the main view with cell-eval (its venv: make cell-eval-venv); auto: when "
        "that venv exists and the run is not --tiny",
    )
    parser.add_argument("--out", default=None, help="output directory (default benchmarks/)")
    args = parser.parse_args(argv)
    names = args.tasks.split(",") if args.tasks else list(TINY_TASKS if args.tiny else tasks.TASKS)
    bad = sorted(set(names) - set(tasks.TASKS))
    if bad:
        parser.error(f"unknown tasks {bad}; choose from {list(tasks.TASKS)}")
    slugs = args.methods.split(",") if args.methods else list(DEFAULT_METHODS)
    bad = sorted(set(slugs) - set(METHOD_SLUGS))
    if bad:
        parser.error(f"unknown methods {bad}; choose from {list(METHOD_SLUGS)}")
    seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2")).split(",")]
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="scdoloris-bench-tiny-")) if args.tiny else BENCH_DIR
    else:
        out = Path(args.out)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else ([0] if args.tiny else None)
    return Config(
        tasks=names,
        seeds=seeds,
        methods=[METHOD_SLUGS[s] for s in slugs],
        out=out,
        tiny=args.tiny,
        steps=args.steps or (TINY_STEPS if args.tiny else None),
        model_kwargs=dict(TINY_MODEL) if args.tiny else {},
        threads=args.threads or (1 if args.tiny else None),
        views=tuple(args.views.split(",")),
        folds=folds,
        max_cells=TINY_CELLS if args.tiny else tasks.MAX_CELLS,
        jobs=args.jobs,
        command=_command(argv),
        cell_eval=cell_eval_scores.wanted(args.cell_eval, args.tiny),
        peer_steps=_peer_steps(args.peer_steps, parser),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write the CSVs and RESULTS.md; print the summary."""
    config = parse_args(argv)
    _quiet()
    results_dir = config.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    info = run_record(config.command)
    start = time.perf_counter()
    for name in config.tasks:
        t0 = time.perf_counter()
        table = run_task(name, config)
        table.to_csv(results_dir / f"{name}.csv", index=False)
        record = {
            **info,
            "seconds": time.perf_counter() - t0,
            "seeds": config.seeds,
            "steps": config.steps,
            "calibrations": table.attrs["calibrations"],
        }
        if table.attrs["peers"]:
            record["peers"] = table.attrs["peers"]
        (results_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(report.task_section(name, table, record))
        (config.out / "RESULTS.md").write_text(report.build(config.out, info))
    print(f"Wrote {config.out / 'RESULTS.md'} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
