"""Train once: can ``train()`` reuse its inner model instead of training the model twice?

``train(calibrate=True)`` trains an inner model on all but a few training conditions (the
inner validation), then the model itself from scratch. The alternative measured here: the
model starts from the inner model's weights (``scdoloris.model._warm_start``) and trains a
fraction ``f`` of the steps, and the inner model itself may train a fraction ``g``.

Measured one level down, on the inner validation only (a fold's test conditions are never
predicted): in every fold's training data D the calibration's inner split holds out
conditions V. On D without V ("D_in") each procedure runs as ``train()`` would run on D_in:

- ``fresh``: a nested inner model (its own inner split V' of D_in, all steps) gives the
  calibration; the model trains from scratch on D_in (all steps).
- ``warm g f``: the nested inner model trains ``g`` of the steps and gives the calibration; the
  model starts from it and trains ``f`` of the steps on D_in.

Each procedure's model predicts V, and its calibration (fitted on its nested inner model's
scores of V') is applied: the rows written are the scores on V of the model alone and of the
calibrated prediction (E-distance, EMD, top-20 DE genes found), and the seconds each procedure
trained. Paired per condition against ``fresh``.

Usage::

    python benchmarks/experiments/train_once.py --tasks norman_pairs,kang_cell_type --folds 0 \\
        --seeds 0,1 --variants 1:0.25 0.5:0.5 --threads 1 --out <csv>
    python benchmarks/experiments/train_once.py --report <csv> [<csv> ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scdoloris.model._calibration import BLENDS, Calibration, is_candidate
from scdoloris.model._warm_start import warm_start

# benchmarks/ is a folder of scripts, not a package: its modules (run.py, tasks.py,
# _machine.py) are imported from there; this folder's own are beside the script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
import tasks  # noqa: E402
from _machine import run_record  # noqa: E402

METRICS = {"E": "e_distance", "EMD": "emd", "DE": "de_overlap"}


def steps_to_epochs(steps: float, n_cells: int, batch_size: int = 128) -> int:
    return max(1, int(round(steps / math.ceil(n_cells / batch_size))))


def _train(model, steps: float, start_from=None) -> float:
    """Train ``model`` (without calibration) for about ``steps`` steps; seconds."""
    if start_from is not None:
        warm_start(model.module, start_from.module, model.vocabulary_, start_from.vocabulary_)
    t0 = time.perf_counter()
    epochs = steps_to_epochs(steps, model.adata.n_obs)
    model.train(max_epochs=epochs, calibrate=False, enable_progress_bar=False)
    return time.perf_counter() - t0


def _calibration(owner, nested, nested_split, seed) -> Calibration:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = owner._score_inner(nested, nested_split, seed)
    return Calibration.fit(scores)


def _rows(scores: pd.DataFrame, calibration: Calibration) -> list[dict]:
    rows = []
    for cond, frame in scores.groupby("condition"):
        kind = frame["kind"].iloc[0]
        alone = frame[(frame["weight"] == 1.0) & (frame["blend"] == BLENDS[0])].iloc[0]
        chosen = frame[is_candidate(frame, calibration.choice(kind))].iloc[0]
        row = {
            "condition": cond,
            "kind": kind,
            "choice": " ".join(map(str, calibration.choice(kind))),
        }
        row |= {f"{m} model": alone[c] for m, c in METRICS.items()}
        row |= {f"{m} calibrated": chosen[c] for m, c in METRICS.items()}
        rows.append(row)
    return rows


def study_fold(
    fold, seed: int, variants: list[tuple[float, float]], steps: int | None = None
) -> list[dict]:
    import scvi

    from scdoloris import DolorisModel
    from scdoloris.model._doloris import DEFAULT_TRAIN_STEPS

    scvi.settings.seed = seed
    adata = fold.train.copy()
    DolorisModel.setup_anndata(adata, **fold.setup)
    top = DolorisModel(adata)
    split = top._inner_split(seed)  # V: the conditions every procedure is scored on
    if split is None:
        return []
    steps = steps or DEFAULT_TRAIN_STEPS
    out = []
    nested_models: dict[float, tuple] = {}  # per g: the same seed trains the same nested model

    def procedure(name: str, g: float, f: float | None):
        if g not in nested_models:
            scvi.settings.seed = seed
            owner = top._inner_model(split.adata)  # train() on D_in: its own inner split
            nested_split = owner._inner_split(seed)
            if nested_split is None:
                return
            nested = owner._inner_model(nested_split.adata)
            t_nested = _train(nested, g * steps)
            calibration = _calibration(owner, nested, nested_split, seed)
            nested_models[g] = (nested, t_nested, calibration)
        nested, t_nested, calibration = nested_models[g]
        scvi.settings.seed = seed
        final = top._inner_model(split.adata)
        t_final = _train(final, steps if f is None else f * steps, None if f is None else nested)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = top._score_inner(final, split, seed)
        for row in _rows(scores, calibration):
            out.append(
                {"task": fold.task, "fold": fold.index, "seed": seed, "variant": name}
                | row
                | {"inner s": t_nested, "final s": t_final}
            )

    procedure("fresh", 1.0, None)
    for g, f in variants:
        procedure(f"warm {g:g} {f:g}", g, f)
    return out


def report(paths: list[str]) -> int:
    table = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    wide = table.pivot_table(
        index=["task", "fold", "seed", "condition"],
        columns="variant",
        values=[c for c in table.columns if c.endswith((" model", " calibrated"))],
    )
    variants = [v for v in dict.fromkeys(table["variant"]) if v != "fresh"]
    rows = []
    for task, q in wide.groupby(level="task"):
        for v in variants:
            row = {"task kind": task, "variant": v, "n": len(q)}
            for what in ("calibrated", "model"):
                for m in METRICS:
                    col = f"{m} {what}"
                    d = q[(col, v)] - q[(col, "fresh")]
                    se = d.std(ddof=1) / np.sqrt(len(d))
                    digits = 5 if m == "EMD" else 4
                    row[f"{col} fresh"] = f"{q[(col, 'fresh')].mean():.{digits}f}"
                    row[f"Δ{col}"] = f"{d.mean():+.{digits}f} ± {se:.{digits}f}"
            rows.append(row)
    cost = table.drop_duplicates(["task", "fold", "seed", "variant"])
    cost = cost.assign(total=cost["inner s"] + cost["final s"])
    print(pd.DataFrame(rows).set_index(["task kind", "variant"]).to_markdown())
    print()
    print(cost.groupby("variant")[["inner s", "final s", "total"]].mean().round(1).to_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="norman_pairs")
    parser.add_argument("--folds", default="0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", nargs="+", default=["1:0.25", "0.5:0.5"], help="g:f")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="the model's steps (default)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", nargs="+", default=None, help="CSV files to summarise")
    args = parser.parse_args(argv)
    if args.report:
        return report(args.report)
    run._quiet()
    import scvi

    if args.threads is not None:
        scvi.settings.num_threads = args.threads
    info = run_record(run._command(argv))
    variants = [tuple(float(x) for x in v.split(":")) for v in args.variants]
    folds = [int(f) for f in args.folds.split(",")]
    rows = []
    start = time.perf_counter()
    for name in args.tasks.split(","):
        for fold in tasks.folds(name, only=folds):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows += study_fold(fold, seed, variants, args.steps)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(rows).to_csv(args.out, index=False)
                print(
                    f"[{name}] fold {fold.index} seed {seed}: {time.perf_counter() - start:.0f} s"
                )
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
