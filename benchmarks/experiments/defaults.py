"""Choose defaults on the inner validation only: settings compared on held-out TRAINING conditions.

For every fold of the chosen task kinds (``tasks.py``), the fold's training cells are split the
way :meth:`scdoloris.DolorisModel.train` splits them for its calibration (training conditions
held out of an inner model); an inner model is trained per training setting and each
prediction setting is scored on the held-out training conditions. The fold's own test
conditions are never predicted, so a default chosen from these numbers was not chosen on the
conditions the benchmark scores it on (each fold's inner split comes from that fold's training
cells only).

Usage::

    python benchmarks/experiments/defaults.py --tasks norman_pairs,kang_cell_type \\
        --train "steps=250" "steps=600" "steps=2000" --predict "n_steps=10" "n_steps=50"

``--train`` settings: ``steps=N`` (optimisation steps), switches of ``scdoloris.ablations``
(``prior=none``, ``lr_schedule=cosine``) and module keyword arguments (``n_timesteps=250``);
``--predict``: keyword arguments of ``predict`` (``n_steps=20``) and prediction switches of
``scdoloris.ablations`` (``residual=none``). Each is a comma-separated ``key=value`` list; ``""``
is the default. The
table printed (and written to ``--out``) gives, per setting, the mean over inner conditions of
the uncalibrated model's E-distance and EMD and of the calibrated prediction's, with the
calibration fitted on the same inner scores ("calibrated") and, per condition, on the other
inner conditions only ("calibrated LOO", leave one condition out: the choice is not made on
the condition it is scored on), per task kind and over all.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scdoloris.model._calibration import BLENDS, CELL_BLEND, Calibration, is_candidate

# benchmarks/ is a folder of scripts, not a package: its modules (run.py, tasks.py,
# _machine.py) are imported from there; this folder's own are beside the script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
import tasks  # noqa: E402
from _machine import run_record  # noqa: E402

#: the inner metrics reported: column prefix -> score column
METRICS = {"E": "e_distance", "EMD": "emd", "DE": "de_overlap"}


def parse_setting(text: str) -> dict:
    """``"a=1,b=none"`` -> ``{"a": 1, "b": "none"}`` (Python literals where they parse)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, value = part.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def split_setting(text: str):
    """A setting as ``(ablation variant, other keyword arguments)``."""
    from scdoloris import ablations

    setting = parse_setting(text)
    switches = {k: setting.pop(k) for k in list(setting) if k in ablations.SWITCHES}
    return ablations.variant(switches), setting


def study_fold(
    fold,
    seed: int,
    train_settings: list[str],
    predict_settings: list[str],
    candidates: list[pd.DataFrame] | None = None,
):
    """Rows of inner scores for one fold and seed, per training and prediction setting.

    ``candidates``, when given, receives every calibration candidate's inner scores (the frame
    :meth:`Calibration.fit` reads), so that calibration rules can be compared offline."""
    import scvi

    from scdoloris import DolorisModel

    scvi.settings.seed = seed
    adata = fold.train.copy()
    DolorisModel.setup_anndata(adata, **fold.setup)
    model = DolorisModel(adata)
    split = model._inner_split(seed)
    if split is None:
        return []
    rows = []
    base_module = dict(model._init_arguments["module_kwargs"])
    for train_text in train_settings:
        variant, setting = split_setting(train_text)
        steps = setting.pop("steps", None)
        module_kwargs = {**base_module, **setting, **variant.model_kwargs()}
        model._init_arguments["module_kwargs"] = module_kwargs
        scvi.settings.seed = seed
        kwargs = {"enable_progress_bar": False, "batch_size": 128}
        if variant.plan:
            kwargs["plan_kwargs"] = dict(variant.plan)
        n_batches = int(np.ceil(adata.n_obs / 128))
        if steps is None:
            steps = model_default_steps()
        kwargs["max_epochs"] = max(1, int(np.ceil(steps / n_batches)))
        start = time.perf_counter()
        inner = model._train_inner_model(split, kwargs)
        train_s = time.perf_counter() - start
        for predict_text in predict_settings:
            start = time.perf_counter()
            variant, setting = split_setting(predict_text)
            with variant.applied(inner):
                scores = model._score_inner(inner, split, seed, **setting)
            predict_s = time.perf_counter() - start
            calibration = fit(scores)
            if candidates is not None:
                tags = {"task": fold.task, "fold": fold.index, "seed": seed}
                tags.update(train=train_text, predict=predict_text)
                candidates.append(scores.assign(**tags))
            loo = held_out_choices(scores)
            for cond, frame in scores.groupby("condition"):
                kind = frame["kind"].iloc[0]
                alone = frame[(frame["weight"] == 1.0) & (frame["blend"] == BLENDS[0])].iloc[0]
                chosen = frame[is_candidate(frame, calibration.choice(kind))].iloc[0]
                held = loo.loc[cond]
                rows.append(
                    {
                        "task": fold.task,
                        "fold": fold.index,
                        "seed": seed,
                        "train": train_text,
                        "predict": predict_text,
                        "condition": cond,
                        "kind": kind,
                        **{f"{m} model": alone[c] for m, c in METRICS.items()},
                        **{f"{m} calibrated": chosen[c] for m, c in METRICS.items()},
                        **{f"{m} calibrated LOO": held[c] for m, c in METRICS.items()},
                        "train s": train_s,
                        "predict s": predict_s,
                    }
                )
    model._init_arguments["module_kwargs"] = base_module
    return rows


def fit(scores: pd.DataFrame, **rule) -> Calibration:
    """The calibration of ``scores`` among the blends they score (an ablation's cell blend
    alone when it is the only one); ``rule``: ``Calibration.fit``'s keyword arguments
    (``clear_se``, ``no_worse_se``, ``metrics``)."""
    blends = tuple(b for b in BLENDS if b in set(scores["blend"])) or (CELL_BLEND,)
    return Calibration.fit(scores, blends, **rule)


def held_out_choices(scores: pd.DataFrame, **rule) -> pd.DataFrame:
    """Per inner condition, the scores of the candidate that a calibration fitted on the OTHER
    inner conditions chooses for its kind (leave one condition out: the choice is not made on
    the condition it is scored on); indexed by condition, with the choice's ``baseline``,
    ``weight``, ``blend`` and its scores (``e_distance``, ``emd``, ``de_overlap``); ``rule``:
    passed to :func:`fit`."""
    rows = {}
    for cond, frame in scores.groupby("condition"):
        rest = fit(scores[scores["condition"] != cond], **rule)
        choice = rest.choice(frame["kind"].iloc[0])
        held = frame[is_candidate(frame, choice)].iloc[0]
        rows[cond] = dict(zip(("baseline", "weight", "blend"), choice, strict=True))
        rows[cond].update({c: held[c] for c in METRICS.values() if c in held})
    return pd.DataFrame.from_dict(rows, orient="index")


def model_default_steps() -> int:
    """The default number of optimisation steps of ``DolorisModel.train``."""
    from scdoloris.model import _doloris

    return int(_doloris.DEFAULT_TRAIN_STEPS)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting: means over conditions (and seeds) per task kind and over all task kinds."""
    cols = [f"{m} {what}" for what in ("model", "calibrated", "calibrated LOO") for m in METRICS]
    cols = [c for c in cols if c in table]
    per_task = table.groupby(["train", "predict", "task"])[cols].mean()
    overall = per_task.groupby(["train", "predict"]).mean()  # each task kind weighs alike
    overall["task"] = "all (mean of task kinds)"
    overall = overall.set_index("task", append=True)
    cost = table.drop_duplicates(["task", "fold", "seed", "train", "predict"])
    cost = cost.groupby(["train", "predict"])[["train s", "predict s"]].mean()
    out = pd.concat([per_task, overall]).sort_index()
    return out.join(cost, on=["train", "predict"])


def _write(table: pd.DataFrame, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="norman_pairs,kang_cell_type,papalexi_unseen")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train", nargs="+", default=[""], help="training settings")
    parser.add_argument("--predict", nargs="+", default=[""], help="prediction settings")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="CSV of the per-condition rows")
    parser.add_argument("--scores", default=None, help="CSV of every candidate's inner scores")
    args = parser.parse_args(argv)
    run._quiet()
    import scvi

    if args.threads is not None:
        scvi.settings.num_threads = args.threads
    info = run_record(run._command(argv))
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    rows, candidates = [], []
    start = time.perf_counter()
    for name in args.tasks.split(","):
        for fold in tasks.folds(name, only=folds):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows += study_fold(fold, seed, args.train, args.predict, candidates)
                # after every fold, so that an interrupted study keeps its rows
                if args.out:
                    _write(pd.DataFrame(rows), args.out)
                if args.scores and candidates:
                    _write(pd.concat(candidates), args.scores)
                print(
                    f"[{name}] fold {fold.index} seed {seed}: {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    table = pd.DataFrame(rows)
    print(f"Command: `{info['command']}`; commit {info['commit']}; {info['date']}")
    print(f"Machine: {info['machine']}; {time.perf_counter() - start:.0f} s")
    print(summarise(table).round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
