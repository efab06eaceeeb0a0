"""Speed and memory of scdoloris on this machine; writes benchmarks/PERF.md (issue #9).

Usage::

    make perf                                   # full configuration (long on a 2-core CPU)
    python benchmarks/perf.py --quick -o /tmp/x  # seconds: the CI smoke configuration
    python benchmarks/perf.py --parts threads user --append  # only the thread measurements

What is measured, per (preset, n_genes, n_cells):

* training throughput: cells/s of ``model.train(max_steps=warmup + timed)``, timed by a Lightning
  callback over the ``timed`` steps after ``warmup`` steps (data loading, forward, backward
  and the optimiser step; not setup or the control bank);
* prediction throughput: cells/s of ``model.predict`` with 50 + 50 DDIM steps (encode, decode),
  the coupled mask and the ablation "no residual" on ``n_predict`` control cells, and of the
  bare DDIM loop (``module.encode`` + ``module.decode``) on the same cells;
* contention: the same training and prediction throughputs again beside one busy process (a
  single-threaded pure-Python loop in another process, ``contention.busy_process``, running
  for the duration of the measurement), and the slowdown (busy time / idle time); the torch
  thread count the model chose (``num_threads=None``: its default rule) is reported beside;
* peak memory: the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
  which covers numpy and torch CPU allocations) of a fresh process that builds the data and
  runs ONE phase (training or prediction); the RSS of a process that only imported scdoloris
  and torch is reported as the baseline.

Data: ``simulate()`` of ``min(n_cells, base_cells)`` cells at ``n_genes``, log-normalised,
whose cells are then resampled with replacement to ``n_cells`` (simulating 100k cells x 5000
genes directly takes far longer than the measurements; resampled cells keep the data's
sparsity, which is all that matters for speed and memory).

Threads (part ``threads``), per (preset, n_genes) at ``threads_cells`` cells: training and
prediction cells/s of one model with ``num_threads`` = 1, 2 and all cores (the CPUs of the
process's affinity mask), idle and beside one busy process; with the best count of each and the
count the model's default rule picks (``scdoloris._threads.default_num_threads``, whose
constants are chosen from these numbers).

End to end (part ``e2e``): the wall time of ``python -m scdoloris demo`` (what ``make demo``
runs) and of the README's Usage example (``benchmarks/readme_example.py``), each in a fresh
process on an idle machine.

As a user runs it (part ``user``): ``benchmarks/contention.py``, the Norman subset after
``sc.pp.normalize_total`` + ``sc.pp.log1p``, the default model, 4 epochs alone and beside one
busy process, in a process without thread environment variables (see its docstring).

Ratios, measured in the same run:

(a) the gene-graph network run once per training step (scdoloris) against once per cell of the
    batch (the authors' formulation), at 5000 genes and batch 32: time of one training step
    (forward + backward) as scdoloris trains (the node embeddings computed once, on the
    subgraph the batch's perturbed genes depend on: their 2-hop in-neighbourhood), and with
    the embeddings of the WHOLE graph computed ``batch`` times (each cell's own pass, all in
    the autograd graph);
(b) the prediction loop's achieved FLOP/s against this machine's dense matmul FLOP/s: the
    denoiser's matmul FLOPs per DDIM step are counted from its layer shapes
    (``2 * batch * in * out`` per Linear); the loop is ``module.encode`` + ``module.decode``
    at 2000 genes; the matmul reference is ``torch.nn.functional.linear`` on the same shapes
    (the best any implementation of this network could reach) and a large square matmul.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import contention
from _machine import run_record
from contention import TARGET, busy_process

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass
class PerfConfig:
    genes: list[int] = field(default_factory=lambda: [500, 2000, 5000])
    cells: list[int] = field(default_factory=lambda: [10_000, 100_000])
    presets: list[str] = field(default_factory=lambda: ["default", "paper"])
    base_cells: int = 4000
    batch_size: int = 128
    warmup_steps: int = 5
    timed_steps: int = 20
    n_predict: int = 256
    predict_batch: int = 512
    n_steps: int = 50
    ratio_genes: int = 5000
    ratio_batch: int = 32
    ratio_repeats: int = 3
    flops_genes: int = 2000
    flops_batch: int = 512
    flops_n_steps: int = 10
    square: int = 2048
    large_cells: int = 100_000
    large_genes: int = 2000
    large_n_steps: int = 2
    backed_cells: int = 100_000
    backed_genes: int = 2000
    threads_cells: int = 10_000
    thread_counts: list[int] | None = None  # None: 1, 2 and all cores
    quick: bool = False


QUICK = PerfConfig(
    genes=[50],
    cells=[300],
    presets=["default"],
    base_cells=300,
    batch_size=32,
    warmup_steps=1,
    timed_steps=2,
    n_predict=32,
    predict_batch=32,
    n_steps=2,
    ratio_genes=50,
    ratio_batch=4,
    ratio_repeats=1,
    flops_genes=50,
    flops_batch=32,
    flops_n_steps=2,
    square=128,
    large_cells=500,
    large_genes=50,
    large_n_steps=1,
    backed_cells=400,
    backed_genes=50,
    threads_cells=300,
    quick=True,
)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


# ---------------------------------------------------------------------------------- data
def make_data(n_cells: int, n_genes: int, base_cells: int, seed: int = 0):
    """Simulated, log-normalised cells; resampled (with replacement) to ``n_cells``."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scanpy as sc
    from scipy import sparse

    from scdoloris.datasets import simulate

    adata = simulate(n_cells=min(n_cells, base_cells), n_genes=n_genes, seed=seed)
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    if adata.n_obs < n_cells:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=True))
        obs_names = [f"{adata.obs_names[r]}-{i}" for i, r in enumerate(rows)]
        adata = ad.AnnData(
            adata.X[rows],
            adata.obs.iloc[rows].set_index(pd.Index(obs_names)),
            adata.var,
            uns=adata.uns,
        )
    return adata


def build_model(adata, preset: str):
    from scdoloris import DolorisModel

    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="ctrl")
    return DolorisModel(adata, preset=preset)


def controls(adata, n: int):
    ctrl = adata[adata.obs["perturbation"] == "ctrl"]
    return ctrl[:n].copy()


def a_perturbation(adata) -> str:
    return next(p for p in adata.obs["perturbation"].unique() if p != "ctrl" and "+" not in p)


# ---------------------------------------------------------------------------------- phases
def timed_training(model, cfg: PerfConfig, num_threads: int | None = None) -> tuple[float, int]:
    """Seconds of ``timed_steps`` training steps after ``warmup_steps`` (Lightning callback),
    and torch's thread count during them."""
    import lightning.pytorch as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self):
            self.start = None
            self.end = None
            self.threads = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == cfg.warmup_steps:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.end = time.perf_counter()
            self.threads = torch.get_num_threads()

    timer = StepTimer()
    n_steps = cfg.warmup_steps + cfg.timed_steps
    model.train(
        max_epochs=10_000,
        max_steps=n_steps,
        batch_size=cfg.batch_size,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[timer],
        num_threads=num_threads,
    )
    return timer.end - timer.start, timer.threads


def phase_train(cfg: PerfConfig, preset: str, n_genes: int, n_cells: int) -> dict:
    t0 = time.perf_counter()
    adata = make_data(n_cells, n_genes, cfg.base_cells)
    data_s = time.perf_counter() - t0
    model = build_model(adata, preset)
    seconds, threads = timed_training(model, cfg)
    with busy_process():
        busy_s, _ = timed_training(model, cfg)
    cells = cfg.timed_steps * cfg.batch_size
    return {
        "train_cells_per_s": cells / seconds,
        "train_step_ms": 1000 * seconds / cfg.timed_steps,
        "train_threads": threads,
        "train_busy_cells_per_s": cells / busy_s,
        "train_slowdown": busy_s / seconds,
        "data_s": data_s,
        "n_params": sum(p.numel() for p in model.module.parameters()),
        "peak_rss_mb": peak_rss_mb(),
    }


def predict_seconds(model, ctrl, pert: str, cfg: PerfConfig, num_threads=None) -> float:
    """Seconds of ``model.predict`` on ``ctrl`` (coupled mask, no residual), after a warm-up."""
    from scdoloris import ablations

    kw = {
        "n_steps": cfg.n_steps,
        "batch_size": cfg.predict_batch,
        "progress_bar": False,
        "num_threads": num_threads,
    }
    with ablations.variant("no residual").applied(model):
        model.predict(ctrl[: min(8, ctrl.n_obs)], pert, **kw)  # warm-up
        t0 = time.perf_counter()
        model.predict(ctrl, pert, **kw)
    return time.perf_counter() - t0


def phase_predict(cfg: PerfConfig, preset: str, n_genes: int, n_cells: int) -> dict:
    adata = make_data(n_cells, n_genes, cfg.base_cells)
    model = build_model(adata, preset)
    model.is_trained_ = True  # speed does not depend on the weights
    model.module.eval()
    ctrl = controls(adata, cfg.n_predict)
    pert = a_perturbation(adata)
    predict_s = predict_seconds(model, ctrl, pert, cfg)
    with busy_process():
        busy_s = predict_seconds(model, ctrl, pert, cfg)
    threads = model._thread_count(None, True, "predict")  # what predict() chose
    loop_s = ddim_loop_seconds(model, ctrl, pert, cfg.n_steps, cfg.predict_batch, threads)
    return {
        "predict_cells_per_s": ctrl.n_obs / predict_s,
        "predict_threads": threads,
        "predict_busy_cells_per_s": ctrl.n_obs / busy_s,
        "predict_slowdown": busy_s / predict_s,
        "ddim_loop_cells_per_s": ctrl.n_obs / loop_s,
        "n_predicted": ctrl.n_obs,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_threads(cfg: PerfConfig, preset: str, n_genes: int) -> dict:
    """Training and prediction cells/s at 1, 2, ..., all threads, idle and beside a busy process."""
    import os

    adata = make_data(cfg.threads_cells, n_genes, cfg.base_cells)
    model = build_model(adata, preset)
    ctrl = controls(adata, cfg.n_predict)
    pert = a_perturbation(adata)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    counts = sorted(set(cfg.thread_counts or [1, 2, cores]))
    rows = []
    for n in counts:
        for busy in (False, True):
            with busy_process() if busy else nullcontext():
                train_s, seen = timed_training(model, cfg, num_threads=n)
                predict_s = predict_seconds(model, ctrl, pert, cfg, num_threads=n)
            rows.append(
                {
                    "threads": n,
                    "busy": busy,
                    "train_threads_seen": seen,
                    "train_cells_per_s": cfg.timed_steps * cfg.batch_size / train_s,
                    "predict_cells_per_s": ctrl.n_obs / predict_s,
                }
            )
    return {
        "preset": preset,
        "n_genes": n_genes,
        "n_cells": adata.n_obs,
        "cores": cores,
        "rule": {phase: model._thread_count(None, True, phase) for phase in ("train", "predict")},
        "rows": rows,
    }


def ddim_loop_seconds(
    model, ctrl, pert: str, n_steps: int, batch: int, num_threads: int | None = None
) -> float:
    """Seconds of module.encode + module.decode over ``ctrl`` (the bare prediction loop), with
    ``num_threads`` torch threads (None: the global count)."""
    import numpy as np
    import torch

    from scdoloris._threads import torch_threads
    from scdoloris.model._prediction import slice_condition

    module = model.module
    X = np.asarray(ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else ctrl.X, np.float32)
    indices = model._lookup_tokens(tuple(pert.split("+")))
    cond = model._condition_tensors(indices, None, X.shape[0])
    t0 = time.perf_counter()
    with torch.inference_mode(), torch_threads(num_threads):
        for start in range(0, X.shape[0], batch):
            sl = slice(start, min(start + batch, X.shape[0]))
            x = torch.from_numpy(X[sl])
            ct = torch.zeros(x.shape[0], dtype=torch.long)
            latent = module.encode(x, ct, n_steps)
            module.decode(latent, x, ct, n_steps=n_steps, **slice_condition(cond, sl, "cpu"))
    return time.perf_counter() - t0


def denoiser_shapes(module) -> list[tuple[int, int]]:
    """(in, out) of the per-cell Linear layers of ONE denoiser evaluation (trunk, one head)."""
    from torch import nn

    net = module.denoiser if module.share_trunk else module.target_net
    # the time MLP runs once per distinct timestep (one row per DDIM step): not per cell
    heads = {id(h) for h in net.heads} | {id(m) for m in net.time_mlp.modules()}
    shapes = [
        (m.in_features, m.out_features)
        for m in net.modules()
        if isinstance(m, nn.Linear) and id(m) not in heads
    ]
    if net.use_control_state:  # the control half of the input layer runs once per DDIM run
        shapes[0] = (shapes[0][0] // 2, shapes[0][1])
    return shapes + [(net.heads[0].in_features, net.heads[0].out_features)]


def phase_ratios(cfg: PerfConfig) -> dict:
    import torch
    from torch_geometric.utils import k_hop_subgraph

    from scdoloris._constants import REGISTRY_KEYS

    out = {}
    # (a) the gene-graph network: once per step against once per cell of the batch
    n = 300 if cfg.quick else 2000
    adata = make_data(n, cfg.ratio_genes, n)
    model = build_model(adata, "default")
    model._fill_control_bank()
    module = model.module
    module.train()
    loader = model._make_data_loader(adata=adata, batch_size=cfg.ratio_batch, shuffle=True)
    tensors = next(iter(loader))
    encoders = [module.condition.perturbation, module.mask_condition.perturbation]
    originals = [enc.node_embeddings for enc in encoders]

    def step():
        module.zero_grad(set_to_none=True)
        _, _, loss = module(tensors)
        loss.loss.backward()

    def timed(repeats: int) -> float:
        step()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
        return best

    once = timed(cfg.ratio_repeats)  # the training path: one pass on the batch's subgraph
    for enc, orig in zip(encoders, originals, strict=True):
        # the authors' formulation: one pass over the whole graph per cell (all in autograd)
        enc.node_embeddings = lambda node_idx=None, orig=orig: torch.stack(
            [orig() for _ in range(cfg.ratio_batch)]
        ).mean(0)
    per_cell = timed(cfg.ratio_repeats)
    for enc in encoders:
        del enc.node_embeddings
    enc = module.condition.perturbation
    _, node_idx, _, _ = module.batch_tokens(tensors[REGISTRY_KEYS.TOKENS_KEY])
    needed = node_idx[node_idx != -1].unique()
    subset, sub_edges, _, _ = k_hop_subgraph(
        needed,
        enc.graph.n_hops,
        enc.edge_index,
        num_nodes=enc.node_features.shape[0],
        directed=True,
    )
    out["graph"] = {
        "n_genes": cfg.ratio_genes,
        "batch": cfg.ratio_batch,
        "n_nodes": int(module.condition.perturbation.node_features.shape[0]),
        "n_edges": int(module.condition.perturbation.edge_index.shape[1]),
        "batch_nodes": int(needed.numel()),
        "subgraph_nodes": int(subset.numel()),
        "subgraph_edges": int(sub_edges.shape[1]),
        "step_once_ms": 1000 * once,
        "step_per_cell_ms": 1000 * per_cell,
        "ratio": per_cell / once,
    }
    del model, module, adata

    # (b) prediction loop FLOP/s against matmul FLOP/s
    adata = make_data(cfg.flops_batch * 2, cfg.flops_genes, cfg.flops_batch * 2)
    model = build_model(adata, "default")
    model.is_trained_ = True
    model.module.eval()
    ctrl = controls(adata, cfg.flops_batch)
    while ctrl.n_obs < cfg.flops_batch:  # tile the controls up to one full batch
        import anndata as ad

        ctrl = ad.concat([ctrl, ctrl])[: cfg.flops_batch].copy()
    pert = a_perturbation(adata)
    ddim_loop_seconds(model, ctrl[:8], pert, 1, cfg.flops_batch)  # warm-up
    loop_s = min(
        ddim_loop_seconds(model, ctrl, pert, cfg.flops_n_steps, cfg.flops_batch)
        for _ in range(cfg.ratio_repeats)
    )
    module = model.module
    n_eval = 2 * cfg.flops_n_steps  # encode and decode: one denoiser evaluation per step
    shapes = denoiser_shapes(module)
    loop_flops = n_eval * sum(2.0 * cfg.flops_batch * i * o for i, o in shapes)
    achieved = loop_flops / loop_s
    # matmul references: the same Linear shapes, and a large square matmul
    weights = [(torch.randn(cfg.flops_batch, i), torch.randn(o, i)) for i, o in shapes]
    reps = max(3, cfg.flops_n_steps)
    with torch.inference_mode():
        for a, w in weights:
            torch.nn.functional.linear(a, w)
        t0 = time.perf_counter()
        for _ in range(reps):
            for a, w in weights:
                torch.nn.functional.linear(a, w)
        shape_s = (time.perf_counter() - t0) / reps
        shape_flops = sum(2.0 * a.shape[0] * w.shape[0] * w.shape[1] for a, w in weights)
        sq = torch.randn(cfg.square, cfg.square)
        sq @ sq
        t0 = time.perf_counter()
        for _ in range(reps):
            sq @ sq
        square_s = (time.perf_counter() - t0) / reps
    square_flops = 2.0 * cfg.square**3 / square_s
    out["flops"] = {
        "n_genes": cfg.flops_genes,
        "batch": cfg.flops_batch,
        "n_steps": cfg.flops_n_steps,
        "loop_gflops": achieved / 1e9,
        "linear_shapes_gflops": shape_flops / shape_s / 1e9,
        "square_gflops": square_flops / 1e9,
        "ratio_vs_shapes": achieved / (shape_flops / shape_s),
        "ratio_vs_square": achieved / square_flops,
    }
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def phase_large_predict(cfg: PerfConfig) -> dict:
    """Peak RSS of predicting ``large_cells`` control cells (sparse input) in one call.

    The input is the simulated control cells resampled to ``large_cells``; memory does not
    depend on the number of DDIM steps, so ``large_n_steps`` keeps the run short.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd

    adata = make_data(cfg.base_cells, cfg.large_genes, cfg.base_cells)
    model = build_model(adata, "default")
    model.is_trained_ = True
    model.module.eval()
    pert = a_perturbation(adata)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"]
    rows = np.random.default_rng(0).choice(ctrl.n_obs, cfg.large_cells, replace=True)
    obs = ctrl.obs.iloc[rows].set_index(pd.Index([f"c{i}" for i in range(len(rows))]))
    big = ad.AnnData(ctrl.X[rows], obs, ctrl.var)
    del adata
    input_mb = (big.X.data.nbytes + big.X.indices.nbytes + big.X.indptr.nbytes) / 2**20
    rss_before = peak_rss_mb()
    from scdoloris import ablations

    t0 = time.perf_counter()
    with ablations.variant("no residual").applied(model):
        pred = model.predict(
            big, pert, n_steps=cfg.large_n_steps, batch_size=cfg.predict_batch, progress_bar=False
        )
    seconds = time.perf_counter() - t0
    return {
        "n_cells": big.n_obs,
        "n_genes": cfg.large_genes,
        "n_steps": cfg.large_n_steps,
        "seconds": seconds,
        "input_mb": input_mb,
        "output_mb": pred.X.nbytes / 2**20,
        "peak_rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_write_h5ad(cfg: PerfConfig, path: str) -> dict:
    """Write the simulated ``backed_cells`` x ``backed_genes`` data set (sparse X) to ``path``."""
    adata = make_data(cfg.backed_cells, cfg.backed_genes, cfg.base_cells)
    adata.write_h5ad(path)
    return {"file_mb": Path(path).stat().st_size / 2**20, "nnz": int(adata.X.nnz)}


def phase_backed_train(cfg: PerfConfig, path: str) -> dict:
    """Train from the file opened backed: peak RSS and cells/s (default preset)."""
    import anndata as ad

    adata = ad.read_h5ad(path, backed="r")
    t0 = time.perf_counter()
    model = build_model(adata, "default")
    setup_s = time.perf_counter() - t0
    seconds, _ = timed_training(model, cfg)
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "setup_s": setup_s,
        "train_cells_per_s": cfg.timed_steps * cfg.batch_size / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_baseline(cfg: PerfConfig) -> dict:
    import torch  # noqa: F401

    import scdoloris  # noqa: F401

    return {"peak_rss_mb": peak_rss_mb()}


PHASES = {
    "baseline": phase_baseline,
    "train": phase_train,
    "predict": phase_predict,
    "ratios": phase_ratios,
    "large_predict": phase_large_predict,
    "write_h5ad": phase_write_h5ad,
    "backed_train": phase_backed_train,
    "threads": phase_threads,
}


# ---------------------------------------------------------------------------------- driver
def run_phase(cfg: PerfConfig, name: str, *args) -> dict:
    """Run one phase in a fresh process (its own peak RSS) and return its JSON result."""
    payload = json.dumps({"cfg": asdict(cfg), "phase": name, "args": list(args)})
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--phase", payload],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_info(command: str) -> dict:
    """Command, commit, date and machine of this run (:func:`_machine.run_record`)."""
    return run_record(command)


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def threads_report(cfg: PerfConfig, entries: list[dict] | None) -> list[str]:
    """The "Threads" section: cells/s by thread count, idle and busy; the best and the rule."""
    if not entries:
        return []
    lines = [
        "",
        "## Threads: 1, 2 and all cores, idle and beside one busy process",
        "",
        f"One model per preset and gene count ({cfg.threads_cells:,} cells, the settings "
        "above) trained and run with `num_threads` = each count, idle and beside one busy "
        "process; slowdown: busy time / idle time at the same count. The default rule "
        "(`scdoloris._threads.default_num_threads`: `SMALL_MODEL_THREADS`, `SMALL_MODEL_SIZE`) "
        "is to be chosen from these numbers.",
        "",
        "| preset | genes | threads | train idle cells/s | train busy cells/s | "
        "train slowdown | predict idle cells/s | predict busy cells/s | predict slowdown |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = [
        "",
        "Best count (most cells/s) and the rule's choice:",
        "",
        "| preset | genes | train idle | train busy | predict idle | predict busy | "
        "rule train | rule predict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in entries:
        head = f"| {entry['preset']} | {entry['n_genes']} |"
        if "error" in entry:
            lines.append(f"{head} - | - | - | - | - | - | - | {entry['error']}")
            continue
        by = {(r["threads"], r["busy"]): r for r in entry["rows"]}
        counts = sorted({r["threads"] for r in entry["rows"]})
        for n in counts:
            idle, busy = by[n, False], by[n, True]
            lines.append(
                f"{head} {n} | {_fmt(idle['train_cells_per_s'])} | "
                f"{_fmt(busy['train_cells_per_s'])} | "
                f"{_ratio(idle['train_cells_per_s'] / busy['train_cells_per_s'])} | "
                f"{_fmt(idle['predict_cells_per_s'], 1)} | "
                f"{_fmt(busy['predict_cells_per_s'], 1)} | "
                f"{_ratio(idle['predict_cells_per_s'] / busy['predict_cells_per_s'])} |"
            )
        best = [
            max(counts, key=lambda n, k=key, b=is_busy: by[n, b][k])
            for key in ("train_cells_per_s", "predict_cells_per_s")
            for is_busy in (False, True)
        ]
        summary.append(
            f"{head} {best[0]} | {best[1]} | {best[2]} | {best[3]} | "
            f"{entry['rule']['train']} | {entry['rule']['predict']} |"
        )
    return lines + summary


def user_report(result: dict | None) -> list[str]:
    """The "as a user runs it" section (``benchmarks/contention.py``)."""
    if result is None:
        return []
    lines = [
        "",
        "## As a user runs it: scanpy preprocessing first, no thread variables",
        "",
        "`benchmarks/contention.py` (see its docstring).",
        "",
    ]
    if "error" in result:
        return lines + [f"The measurement failed: {result['error']}"]
    return lines + contention.markdown(result)


def end_to_end() -> dict:
    """Wall times of ``make demo``'s command and of the README example (``readme_example.py``),
    each in a fresh process as a user starts it (the package installed, no warm-up)."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        demo = [sys.executable, "-m", "scdoloris", "demo", "-o", tmp]
        done = subprocess.run(demo, capture_output=True, text=True)
        out["demo_s"] = time.perf_counter() - t0
        if done.returncode != 0:
            out["demo_error"] = done.stderr[-500:]
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(BENCH / "readme_example.py")], capture_output=True, text=True
    )
    out["readme_wall_s"] = time.perf_counter() - t0
    if done.returncode == 0:
        out["readme"] = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        out["readme_error"] = done.stderr[-500:]
    return out


def calibration_cost(repeats: int = 2) -> dict:
    """``train()`` of the README example with and without the calibration, side by side:
    fresh processes, alternating (without, with, without, with, ...), idle (issue #32)."""
    runs: dict[str, list] = {"without": [], "with": []}
    for _ in range(repeats):
        for name, extra in (("without", ["--no-calibrate"]), ("with", [])):
            done = subprocess.run(
                [sys.executable, str(BENCH / "readme_example.py"), *extra],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                return {"error": done.stderr[-500:]}
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1])["train_s"])
    without = sum(runs["without"]) / repeats
    with_ = sum(runs["with"]) / repeats
    return {"without_s": runs["without"], "with_s": runs["with"], "ratio": with_ / without}


def calibration_report(result: dict | None) -> list[str]:
    """The section "Training with and without the calibration"."""
    if result is None:
        return []
    lines = ["", "## Training with and without the calibration, idle (the README example)", ""]
    if "error" in result:
        return lines + [f"The measurement failed: {result['error']}"]

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    return lines + [
        f"`train()` of the README example (`benchmarks/readme_example.py`, fresh processes, "
        f"alternating): with the calibration (the default) {runs(result['with_s'])} s, "
        f"`train(calibrate=False)` {runs(result['without_s'])} s: ratio of the means "
        f"**{result['ratio']:.2f}x** (target at most 1.3x). With the calibration the inner "
        "model trains half the steps and the model, started from it, the other half.",
    ]


def e2e_report(result: dict | None) -> list[str]:
    """The "end to end" section: ``make demo`` and the README example, idle."""
    if result is None:
        return []
    lines = ["", "## End to end, idle: `make demo` and the README example", ""]
    if "demo_error" in result or "readme_error" in result:
        errors = [result.get("demo_error", ""), result.get("readme_error", "")]
        return lines + [f"The measurement failed: {' '.join(errors)}"]
    r = result["readme"]
    return lines + [
        f"- `python -m scdoloris demo` (what `make demo` runs): **{result['demo_s']:.0f} s** "
        "wall time.",
        f"- The README's Usage example (`benchmarks/readme_example.py`; "
        f"{r['n_train_cells']:,} training cells, {r['n_control_cells']} control cells "
        f"predicted for two pairs): **{result['readme_wall_s']:.0f} s** wall time "
        f"(imports, read and set-up {r['setup_s']:.1f} s, `train()` {r['train_s']:.1f} s, "
        f"`predict` {r['predict_s']:.1f} s, UMAP, save and load {r['umap_save_load_s']:.1f} s).",
    ]


def report(info: dict, cfg: PerfConfig, results: dict) -> str:
    lines = [
        "# scdoloris speed and memory" + (" (QUICK smoke configuration)" if cfg.quick else ""),
        "",
        "Generated by `benchmarks/perf.py` (see its docstring for what is measured). "
        "Do not edit by hand.",
        "",
        f"- Command: `{info['command']}`",
        f"- Commit: `{info['commit']}`",
        f"- Date: {info['date']}",
        f"- Machine: {info['machine']}",
        f"- Settings: batch {cfg.batch_size}, {cfg.warmup_steps} warm-up + {cfg.timed_steps} "
        f"timed training steps; prediction of {cfg.n_predict} control cells in batches of "
        f"{cfg.predict_batch}, {cfg.n_steps} + {cfg.n_steps} DDIM steps, coupled mask, "
        f"residual none; data resampled from simulate() of {cfg.base_cells} cells.",
        f"- Baseline peak RSS (python + torch + scdoloris imported): "
        f"{_fmt(results['baseline'].get('peak_rss_mb'))} MiB",
        "",
        "Peak RSS is `ru_maxrss` of a fresh process that builds the data and runs one phase "
        "(it includes the baseline and the data). Threads: torch threads the model chose "
        "(its default rule, `num_threads=None`) for training / prediction. Busy: the same "
        "measurement beside one busy process (a single-threaded pure-Python loop in another "
        "process); slowdown: busy time / idle time (target of issue #17: at most "
        f"{TARGET}x for the default preset at 500 and 2000 genes).",
        "",
        "| preset | genes | cells | threads | train cells/s | train busy cells/s | "
        "train slowdown | train step ms | train peak MiB | predict cells/s | "
        "predict busy cells/s | predict slowdown | DDIM loop cells/s | predict peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(results["grid"], key=lambda r: (r["preset"], r["n_genes"], r["n_cells"])):
        tr, pr = row.get("train", {}), row.get("predict", {})
        err = "; ".join(
            f"{k}: {v['error']}" for k, v in (("train", tr), ("predict", pr)) if "error" in v
        )
        threads = f"{tr.get('train_threads', '-')} / {pr.get('predict_threads', '-')}"
        lines.append(
            f"| {row['preset']} | {row['n_genes']} | {row['n_cells']:,} | {threads} | "
            f"{_fmt(tr.get('train_cells_per_s'))} | {_fmt(tr.get('train_busy_cells_per_s'))} | "
            f"{_ratio(tr.get('train_slowdown'))} | {_fmt(tr.get('train_step_ms'), 1)} | "
            f"{_fmt(tr.get('peak_rss_mb'))} | {_fmt(pr.get('predict_cells_per_s'), 1)} | "
            f"{_fmt(pr.get('predict_busy_cells_per_s'), 1)} | "
            f"{_ratio(pr.get('predict_slowdown'))} | "
            f"{_fmt(pr.get('ddim_loop_cells_per_s'), 1)} | {_fmt(pr.get('peak_rss_mb'))} |"
            + (f" {err}" if err else "")
        )
    lines += threads_report(cfg, results.get("threads")) + user_report(results.get("user"))
    lines += e2e_report(results.get("e2e"))
    lines += calibration_report(results.get("calibration"))
    big = results.get("large_predict", {})
    if big and "error" not in big:
        lines += [
            "",
            "## Prediction of a large input",
            "",
            f"{big['n_cells']:,} control cells x {big['n_genes']} genes (sparse input, "
            f"{big['input_mb']:.0f} MiB; output {big['output_mb']:.0f} MiB dense float32), "
            f"default preset, one `predict` call with the coupled mask, batches of "
            f"{cfg.predict_batch}: peak RSS **{big['peak_rss_mb']:,.0f} MiB** "
            f"({big['peak_rss_before_mb']:,.0f} MiB before the call; target < 4096 MiB), "
            f"{big['seconds']:.0f} s with {big['n_steps']} + {big['n_steps']} DDIM steps "
            "(memory does not depend on the number of steps; the time of 50 + 50 steps follows "
            "from the prediction throughput above).",
        ]
    elif big:
        lines += ["", f"Large prediction failed: {big['error']}"]
    bt = results.get("backed_train", {})
    if bt and "error" not in bt:
        lines += [
            "",
            "## Training from a backed (on-disk) AnnData",
            "",
            f"{bt['n_cells']:,} simulated cells x {bt['n_genes']} genes written to an .h5ad "
            f"(sparse X, {bt['nnz']:,} non-zeros, file {bt['file_mb']:,.0f} MiB), opened with "
            f"`read_h5ad(..., backed='r')`, default preset: setup and model "
            f"{bt['setup_s']:.0f} s, training {bt['train_cells_per_s']:,.0f} cells/s "
            f"(batch {cfg.batch_size}), peak RSS {bt['peak_rss_mb']:,.0f} MiB.",
        ]
    elif bt:
        lines += ["", f"Backed training failed: {bt['error']}"]
    ratios = results.get("ratios")
    if ratios is None:
        return "\n".join(lines) + "\n"
    if "error" in ratios:
        lines += ["", f"Ratios failed: {ratios['error']}"]
        return "\n".join(lines) + "\n"
    g, f = ratios["graph"], ratios["flops"]
    lines += [
        "",
        "## Ratios",
        "",
        f"(a) Gene-graph network once per training step vs once per cell (the authors' "
        f"formulation), default preset, {g['n_genes']} genes ({g['n_nodes']} graph nodes, "
        f"{g['n_edges']} edges), batch {g['batch']}: training step (forward + backward) "
        f"{g['step_once_ms']:.1f} ms vs {g['step_per_cell_ms']:.1f} ms, ratio "
        f"**{g['ratio']:.1f}x** (target >= 20x). Once per step is the training path: one pass "
        f"on the subgraph the batch's {g.get('batch_nodes', '?')} perturbed genes depend on "
        f"(their 2-hop in-neighbourhood, {g.get('subgraph_nodes', '?')} nodes and "
        f"{g.get('subgraph_edges', '?')} edges); once per cell is a pass over the whole graph "
        "for each cell.",
        "",
        f"(b) Prediction loop (module.encode + module.decode, {f['n_steps']} + {f['n_steps']} "
        f"DDIM steps), default preset, {f['n_genes']} genes, batch {f['batch']}: "
        f"{f['loop_gflops']:.1f} GFLOP/s of denoiser matmuls (counted from the layer shapes); "
        f"`F.linear` on the same shapes {f['linear_shapes_gflops']:.1f} GFLOP/s "
        f"(**{100 * f['ratio_vs_shapes']:.0f}%**), a {cfg.square}x{cfg.square} matmul "
        f"{f['square_gflops']:.1f} GFLOP/s (**{100 * f['ratio_vs_square']:.0f}%**; "
        "target >= 50%).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): CI smoke")
    parser.add_argument("-o", "--output", type=Path, default=BENCH, help="folder of PERF.md")
    parser.add_argument("--genes", type=int, nargs="+", help="override the gene counts")
    parser.add_argument("--cells", type=int, nargs="+", help="override the cell counts")
    parser.add_argument("--presets", nargs="+", help="override the presets")
    parser.add_argument(
        "--thread-counts", type=int, nargs="+", help="part threads: the counts (default 1 2 all)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["ratios", "large", "backed", "grid", "threads", "user", "e2e", "calibration"],
        choices=["ratios", "large", "backed", "grid", "threads", "user", "e2e", "calibration"],
        help="what to measure (default: all)",
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the other parts of the existing perf.json"
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        payload = json.loads(args.phase)
        import torch

        torch.manual_seed(0)
        cfg = PerfConfig(**payload["cfg"])
        result = PHASES[payload["phase"]](cfg, *payload["args"])
        print(json.dumps(result))
        return 0
    cfg = QUICK if args.quick else PerfConfig()
    if args.genes:
        cfg.genes = args.genes
    if args.cells:
        cfg.cells = args.cells
    if args.presets:
        cfg.presets = args.presets
    if args.thread_counts:
        cfg.thread_counts = args.thread_counts
    command = "python benchmarks/perf.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = run_info(command.strip())
    results: dict = {"baseline": run_phase(cfg, "baseline"), "grid": []}
    args.output.mkdir(parents=True, exist_ok=True)
    previous = args.output / "perf.json"
    if args.append and previous.exists():  # keep the parts of an earlier run
        earlier = json.loads(previous.read_text())
        results.update({k: v for k, v in earlier.items() if k not in ("info", "baseline")})
        info["command"] = f"{earlier['info']['command']}; then {info['command']}"

    def write() -> None:  # after every phase: an interrupted run keeps what it measured
        (args.output / "PERF.md").write_text(report(info, cfg, results))
        (args.output / "perf.json").write_text(json.dumps({"info": info, **results}, indent=1))

    def record(key: str, value: dict) -> None:
        results[key] = value
        print(json.dumps({key: value}), flush=True)
        write()

    if "ratios" in args.parts:
        record("ratios", run_phase(cfg, "ratios"))
    if "large" in args.parts:
        record("large_predict", run_phase(cfg, "large_predict"))
    if "backed" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "simulated.h5ad")
            written = run_phase(cfg, "write_h5ad", path)
            if "error" not in written:
                written = {**written, **run_phase(cfg, "backed_train", path)}
            record("backed_train", written)
    if "grid" in args.parts:  # re-measured rows replace their earlier versions (--append)
        keys = {(p, g, c) for p in cfg.presets for g in cfg.genes for c in cfg.cells}
        results["grid"] = [
            r for r in results["grid"] if (r["preset"], r["n_genes"], r["n_cells"]) not in keys
        ]
        for preset in cfg.presets:
            for n_genes in cfg.genes:
                for n_cells in cfg.cells:
                    row = {"preset": preset, "n_genes": n_genes, "n_cells": n_cells}
                    results["grid"].append(row)
                    for phase in ("train", "predict"):
                        row[phase] = run_phase(cfg, phase, preset, n_genes, n_cells)
                        print(json.dumps({**row, "phase": phase}), flush=True)
                        write()
    if "threads" in args.parts:
        results["threads"] = []
        for preset in cfg.presets:
            for n_genes in cfg.genes:
                entry = {"preset": preset, "n_genes": n_genes}
                entry.update(run_phase(cfg, "threads", preset, n_genes))
                results["threads"].append(entry)
                print(json.dumps({"threads": entry}), flush=True)
                write()
    if "user" in args.parts:
        scenario = contention.QUICK if cfg.quick else contention.ScenarioConfig()
        record("user", contention.run(scenario))
    if "e2e" in args.parts and not cfg.quick:
        record("e2e", end_to_end())
    if "calibration" in args.parts and not cfg.quick:
        record("calibration", calibration_cost())
    write()
    print(f"wrote {args.output / 'PERF.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
