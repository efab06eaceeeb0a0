"""Training beside one busy process, as a user runs it (issue #17).

Usage::

    python benchmarks/contention.py            # Norman subset, 4 epochs, 3 repeats (minutes)
    python benchmarks/contention.py --quick    # seconds: the smoke configuration
    python benchmarks/contention.py --json     # one JSON line (benchmarks/perf.py reads it)

The scenario of issue #17: the Norman subset (``../shared/data/norman2019_k562_subset.h5ad``,
raw counts), ``sc.pp.normalize_total`` and ``sc.pp.log1p`` as every user does, the default
model (``DolorisModel(adata)``) and ``model.train(max_epochs=4)``, alone and beside one busy
single-threaded process (a pure-Python loop in another process, started before and killed after
the call). The measurement runs in a child process WITHOUT thread environment variables
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``NUMBA_NUM_THREADS``, ... are removed), so that
torch's global thread count is whatever numba leaves after the preprocessing.

Two variants, each timed alone and beside the busy process: the model's default
(``num_threads=None``: the model chooses) and torch's global count
(``num_threads=torch.get_num_threads()`` read after the preprocessing: the behaviour before
issue #17). Each run trains a fresh model; the time is the wall time of ``model.train`` (the
median over the repeats), after one untimed warm-up training. The slowdown is the busy time
over the alone time; the target of issue #17 is at most 1.6x for the default.

``busy_process`` is also used by ``benchmarks/perf.py`` for its contention columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NORMAN = REPO.parent / "shared" / "data" / "norman2019_k562_subset.h5ad"
#: Removed from the measuring process's environment (a user who set none of them).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
TARGET = 1.6
BUSY_LOOP = "import sys\nsys.stdout.write('ready\\n')\nsys.stdout.flush()\nwhile True:\n    pass\n"
VARIANTS = {
    "default": "model default",
    "global": "torch's global count (before #17)",
}


@contextmanager
def busy_process() -> Iterator[subprocess.Popen]:
    """One single-threaded busy process (a pure-Python loop) for the duration of the block.

    The block starts once the process runs (it reports ready); the process is killed after.

    Yields
    ------
    The process.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", BUSY_LOOP],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the busy process did not start")
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def clean_env() -> dict[str, str]:
    """This process's environment without the thread variables."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}


@dataclass
class ScenarioConfig:
    """Settings of the scenario (see the module's docstring); ``QUICK``: the smoke settings.

    ``max_steps`` caps each training, ``max_cells`` keeps all control cells and random others,
    ``simulate_if_missing`` uses simulated counts when the Norman subset is absent.
    """

    data: str = str(NORMAN)
    epochs: int = 4
    max_steps: int | None = None
    max_cells: int | None = None
    repeats: int = 3
    warmup_steps: int = 5
    simulate_if_missing: bool = False
    quick: bool = False


QUICK = ScenarioConfig(
    max_steps=2, max_cells=400, repeats=1, warmup_steps=1, simulate_if_missing=True, quick=True
)


def read_data(cfg: ScenarioConfig):
    """The Norman subset (raw counts; or simulated counts when it is absent and allowed)."""
    import numpy as np
    import scanpy as sc

    path = Path(cfg.data)
    if path.exists():
        adata = sc.read_h5ad(path)
        control, source = "control", path.name
    elif cfg.simulate_if_missing:
        from scdoloris.datasets import simulate

        adata = simulate(n_cells=600, n_genes=200, seed=0)
        control, source = "ctrl", f"simulated ({path.name} not found)"
    else:
        raise FileNotFoundError(f"{path} not found (pass --data)")
    if cfg.max_cells and adata.n_obs > cfg.max_cells:  # all controls, then random others
        is_ctrl = (adata.obs["perturbation"] == control).to_numpy()
        others = np.flatnonzero(~is_ctrl)
        n_more = max(0, cfg.max_cells - int(is_ctrl.sum()))
        pick = np.random.default_rng(0).choice(others, min(n_more, others.size), replace=False)
        adata = adata[np.sort(np.concatenate([np.flatnonzero(is_ctrl), pick]))].copy()
    return adata, control, source


def measure(cfg: ScenarioConfig) -> dict:
    """Run the scenario in this process (see the module's docstring); a JSON-able result."""
    import lightning.pytorch as pl
    import scanpy as sc
    import scvi
    import torch

    from scdoloris import DolorisModel

    threads_at_import = torch.get_num_threads()
    adata, control, source = read_data(cfg)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    threads_after = torch.get_num_threads()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group=control)

    class Recorder(pl.Callback):
        def __init__(self):
            self.threads: set[int] = set()
            self.steps = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.threads.add(torch.get_num_threads())
            self.steps += 1

    def train(num_threads, **kw) -> tuple[float, Recorder]:
        scvi.settings.seed = 0
        model = DolorisModel(adata)
        rec = Recorder()
        t0 = time.perf_counter()
        model.train(
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
            callbacks=[rec],
            num_threads=num_threads,
            **kw,
        )
        return time.perf_counter() - t0, rec

    train(None, max_epochs=1, max_steps=cfg.warmup_steps)  # imports, first-call costs
    length = {"max_epochs": cfg.epochs}
    if cfg.max_steps:
        length["max_steps"] = cfg.max_steps
    runs: list[dict] = []
    for repeat in range(cfg.repeats):
        for variant in VARIANTS:
            for busy in (False, True):
                # the global count, read now: the earlier calls must have left it unchanged
                global_now = torch.get_num_threads()
                requested = None if variant == "default" else global_now
                with busy_process() if busy else nullcontext():
                    seconds, rec = train(requested, **length)
                runs.append(
                    {
                        "repeat": repeat,
                        "variant": variant,
                        "busy": busy,
                        "seconds": seconds,
                        "steps": rec.steps,
                        "threads": sorted(rec.threads),
                        "global_threads_before": global_now,
                    }
                )
    summary = {}
    for variant in VARIANTS:
        alone = [r["seconds"] for r in runs if r["variant"] == variant and not r["busy"]]
        busy = [r["seconds"] for r in runs if r["variant"] == variant and r["busy"]]
        threads = sorted({t for r in runs if r["variant"] == variant for t in r["threads"]})
        summary[variant] = {
            "alone_s": statistics.median(alone),
            "busy_s": statistics.median(busy),
            "slowdown": statistics.median(busy) / statistics.median(alone),
            "threads": threads,
        }
    return {
        "config": asdict(cfg),
        "data": source,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "steps": runs[0]["steps"],
        "threads_at_import": threads_at_import,
        "threads_after_preprocessing": threads_after,
        "threads_at_end": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "summary": summary,
        "runs": runs,
    }


def markdown(result: dict) -> list[str]:
    """The result as Markdown lines (a table and its explanation)."""
    cfg = result["config"]
    length = f"{cfg['epochs']} epochs" + (
        f" (at most {cfg['max_steps']} steps)" if cfg.get("max_steps") else ""
    )
    lines = [
        f"Data: {result['data']}, {result['n_cells']:,} cells x {result['n_genes']} genes, "
        f"`sc.pp.normalize_total` + `sc.pp.log1p`; default model, `train()` for {length}: "
        f"{result['steps']} steps of batch 128; no thread environment variables; wall time of "
        f"`model.train`, median of {cfg['repeats']} repeat(s). Torch's global thread count: "
        f"{result['threads_at_import']} after import, {result['threads_after_preprocessing']} "
        f"after the preprocessing, {result['threads_at_end']} at the end ({result['cores']} "
        "cores). Busy: one single-threaded pure-Python loop in another process.",
        "",
        "| variant | torch threads in training | alone s | beside a busy process s | slowdown |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in VARIANTS.items():
        s = result["summary"][key]
        threads = ", ".join(str(t) for t in s["threads"])
        lines.append(
            f"| {label} | {threads} | {s['alone_s']:.1f} | {s['busy_s']:.1f} | "
            f"**{s['slowdown']:.2f}x** |"
        )
    default = result["summary"]["default"]["slowdown"]
    if cfg.get("quick"):
        lines += ["", "Smoke settings (`--quick`): these numbers are not a measurement."]
    else:
        verdict = "met" if default <= TARGET else "not met"
        lines += ["", f"Target of issue #17: at most {TARGET}x for the model default: {verdict}."]
    return lines


def run(cfg: ScenarioConfig) -> dict:
    """Measure in a child process without thread environment variables; its JSON result."""
    payload = json.dumps(asdict(cfg))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", payload],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(),
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds): smoke")
    parser.add_argument("--data", help=f"the Norman subset (default {NORMAN})")
    parser.add_argument("--epochs", type=int, help="epochs of each training (default 4)")
    parser.add_argument("--max-steps", type=int, help="at most this many steps per training")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 3)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(ScenarioConfig(**json.loads(args.child)))))
        return 0
    cfg = ScenarioConfig(**asdict(QUICK)) if args.quick else ScenarioConfig()
    for name in ("data", "epochs", "max_steps", "repeats"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    result = run(cfg)
    if args.json:
        print(json.dumps(result))
    elif "error" in result:
        print(f"failed: {result['error']}", file=sys.stderr)
    else:
        print("\n".join(markdown(result)))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
