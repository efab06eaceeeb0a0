"""Summaries of the cross-validated benchmark: per task kind, intervals, win rates, verdicts.

Every number here is computed from ``results/<task>.csv`` (one row per condition, view,
method and seed, written by ``run.py``); ``RESULTS.md`` is rebuilt from those files, so a run
of some task kinds keeps the others' sections.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

DOLORIS = "Doloris"
UNCALIBRATED = "Doloris uncalibrated"
BASELINES = ("NoChange", "MeanShift", "Additive")
FLOOR = "Split-half floor"
METRICS = (  # (column, header, lower is better)
    ("e_distance", "E", True),
    ("emd", "EMD", True),
    ("e_distance_DE20", "E DE20", True),
    ("pearson_delta", "Pearson delta", False),
    ("rank", "rank", True),
)
# what users do next with the cells: DE against the controls and which genes cells express
# (column, header, lower is better; None: closer to 1 is better); ce_: cell-eval's
DOWNSTREAM = (
    ("de_overlap_20", "DE20 found", False),
    ("detection_error", "detection error", True),
    ("expressed_genes_ratio", "genes/cell ratio", None),
    ("constant_genes", "constant genes", True),
    ("ce_overlap_at_N", "cell-eval overlap@N", False),
    ("ce_de_direction_match", "cell-eval direction", False),
    ("ce_de_spearman_lfc_sig", "cell-eval LFC Spearman", False),
    ("ce_discrimination_score_l1", "cell-eval discrimination", False),
)
N_BOOT = 2000
ORDER = (DOLORIS, UNCALIBRATED)


def condition_means(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Conditions x methods: the metric averaged over seeds."""
    return table.groupby(["condition", "method"])[metric].mean().unstack("method")


def seed_means(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per method and seed (deterministic methods: one "seed"): the mean over conditions."""
    t = table.assign(seed=table["seed"].fillna(-1))
    return t.groupby(["method", "seed"])[metric].mean().unstack("method")


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling conditions."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    boots = values[rng.integers(0, len(values), (N_BOOT, len(values)))].mean(1)
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def best_baseline(table: pd.DataFrame, metric: str, lower: bool = True) -> str | None:
    """The baseline with the best mean of ``metric`` over conditions (seed-averaged)."""
    cm = condition_means(table, metric)
    present = [b for b in BASELINES if b in cm and cm[b].notna().any()]
    if not present:
        return None
    sign = 1.0 if lower else -1.0
    return min(present, key=lambda b: sign * cm[b].mean())


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean ± seed sd, median, interval of every metric; train seconds."""
    rows = []
    methods = sorted(table["method"].unique(), key=_method_order)
    for m in methods:
        sub = table[table["method"] == m]
        row = {"method": m, "runs": int(sub["seed"].nunique()) or 1}
        for col, head, _ in METRICS:
            cm = condition_means(sub, col)[m]
            sm = seed_means(sub, col)[m]
            sd = float(sm.std(ddof=1)) if len(sm) > 1 else float("nan")
            lo, hi = bootstrap_ci(cm.to_numpy())
            row[head] = float(cm.mean())
            row[f"{head} sd"] = sd
            row[f"{head} median"] = float(cm.median())
            row[f"{head} lo"], row[f"{head} hi"] = lo, hi
        per_run = sub.drop_duplicates(["fold", "seed"])["train_seconds"]
        row["train s"] = float(per_run.mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def _method_order(m: str) -> tuple:
    if m in ORDER:
        return (0, ORDER.index(m))
    if m.startswith("Doloris"):
        return (1, m)
    if m in BASELINES:
        return (2, BASELINES.index(m))
    return (3 if m != FLOOR else 4, m)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def markdown_table(s: pd.DataFrame) -> str:
    """The summary as markdown: mean ± seed sd [95% interval over conditions] (median)."""
    heads = ["method", "runs"] + [h for _, h, _ in METRICS] + ["train s"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for m, r in s.iterrows():
        cells = [m, str(r["runs"])]
        for col, h, _ in METRICS:
            digits = 4 if col == "emd" else 3
            sd = "" if not np.isfinite(r[f"{h} sd"]) else f" ± {_fmt(r[f'{h} sd'], digits)}"
            cells.append(
                f"{_fmt(r[h], digits)}{sd} [{_fmt(r[f'{h} lo'], digits)}, "
                f"{_fmt(r[f'{h} hi'], digits)}] ({_fmt(r[f'{h} median'], digits)})"
            )
        cells.append(f"{r['train s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(
    table: pd.DataFrame,
    method: str,
    metric: str,
    lower: bool = True,
    against: str | None = None,
) -> dict | None:
    """``method`` against the best baseline of ``metric`` (or the method ``against``): means,
    the mean difference with its bootstrap interval over conditions, the seed-to-seed sd of
    the method's mean, and the per-condition win rate against every baseline."""
    cm = condition_means(table, metric)
    best = against if against is not None else best_baseline(table, metric, lower)
    if best is None or method not in cm or best not in cm or cm[method].isna().all():
        return None
    diff = (cm[method] - cm[best]).to_numpy()
    sm = seed_means(table[table["method"] == method], metric)[method]
    better = (lambda a, b: a < b) if lower else (lambda a, b: a > b)
    wins = {b: float(better(cm[method], cm[b]).mean()) for b in BASELINES if b in cm}
    return {
        "method": method,
        "metric": metric,
        "lower": lower,
        "value": float(cm[method].mean()),
        "best": best,
        "best_value": float(cm[best].mean()),
        "diff": float(np.nanmean(diff)),
        "diff_ci": bootstrap_ci(diff),
        "seed_sd": float(sm.std(ddof=1)) if len(sm) > 1 else float("nan"),
        "wins": wins,
    }


def verdict(c: dict) -> str:
    """ "better" (by more than the seed sd), "not worse" (within it or better by less), "worse"."""
    margin = c["best_value"] - c["value"]
    if not c.get("lower", True):
        margin = -margin
    sd = c["seed_sd"] if np.isfinite(c["seed_sd"]) else 0.0
    if margin > sd:
        return "better"
    if margin >= 0:
        return "not worse"
    return "worse"


def within_noise(c: dict) -> str:
    """Against a method rather than the baselines: "no worse" unless worse by more than the
    seed sd (the issue's "no worse than the model alone, beyond the seed sd")."""
    worse = c["value"] - c["best_value"] if c.get("lower", True) else c["best_value"] - c["value"]
    sd = c["seed_sd"] if np.isfinite(c["seed_sd"]) else 0.0
    return "worse" if worse > sd else "no worse"


def downstream_table(table: pd.DataFrame) -> str:
    """Per method, the downstream metrics: mean ± seed sd (median over conditions)."""
    present = [(c, h, lo) for c, h, lo in DOWNSTREAM if c in table and table[c].notna().any()]
    if not present:
        return ""
    heads = ["method"] + [h for _, h, _ in present]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for m in sorted(table["method"].unique(), key=_method_order):
        sub = table[table["method"] == m]
        cells = [m]
        for col, _, _ in present:
            cm = condition_means(sub, col)[m]
            sm = seed_means(sub, col)[m]
            sd = float(sm.std(ddof=1)) if len(sm) > 1 else float("nan")
            sd_text = f" ± {_fmt(sd)}" if np.isfinite(sd) else ""
            cells.append(f"{_fmt(float(cm.mean()))}{sd_text} ({_fmt(float(cm.median()))})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_lines(table: pd.DataFrame) -> list[str]:
    lines = []
    for method in (DOLORIS, UNCALIBRATED):
        for col, head, lower in (
            ("e_distance", "E", True),
            ("emd", "EMD", True),
            ("de_overlap_20", "DE20 found", False),
        ):
            if col not in table:
                continue
            c = comparison(table, method, col, lower)
            if c is None:
                continue
            digits = 4 if col == "emd" else 3
            wins = ", ".join(f"{b} {100 * w:.0f}%" for b, w in c["wins"].items())
            lines.append(
                f"- {method}, {head}: {_fmt(c['value'], digits)} vs best baseline {c['best']} "
                f"{_fmt(c['best_value'], digits)}: difference {c['diff']:+.{digits}f} "
                f"[{_fmt(c['diff_ci'][0], digits)}, {_fmt(c['diff_ci'][1], digits)}], seed sd "
                f"{_fmt(c['seed_sd'], digits)}: **{verdict(c)}**; conditions won: {wins}."
            )
    for col, head, lower in (("emd", "EMD", True), ("de_overlap_20", "DE20 found", False)):
        c = comparison(table, DOLORIS, col, lower, against=UNCALIBRATED) if col in table else None
        if c is not None:
            digits = 4 if col == "emd" else 3
            lines.append(
                f"- Doloris against the model alone, {head}: {_fmt(c['value'], digits)} vs "
                f"{_fmt(c['best_value'], digits)}: difference {c['diff']:+.{digits}f} "
                f"[{_fmt(c['diff_ci'][0], digits)}, {_fmt(c['diff_ci'][1], digits)}], seed sd "
                f"{_fmt(c['seed_sd'], digits)}: **{within_noise(c)}**."
            )
    return lines


def calibration_lines(record: dict) -> list[str]:
    choices = record.get("calibrations") or []
    if not choices:
        return []
    frame = pd.DataFrame(choices).drop(columns=["task"])
    kinds = [c for c in frame.columns if c not in ("fold", "seed")]
    lines = [
        "Calibration chosen by each fold's inner validation (baseline, model weight, blend), "
        "per training seed:",
        "",
    ]
    for kind in kinds:
        per_seed = []
        for seed, sub in frame.groupby("seed"):
            counts = sub[kind].dropna().value_counts()
            per_seed.append(f"seed {seed}: " + ", ".join(f"{k} ({n}x)" for k, n in counts.items()))
        lines.append(f"- {kind}: " + "; ".join(per_seed))
    return lines


def peer_lines(table: pd.DataFrame, record: dict) -> list[str]:
    """Per peer (``run.py --methods cellflow,cpa``): its runs, training seconds per run, the
    conditions it could not predict (with the reason) and, on the conditions it did predict
    (main view), its E and EMD beside Doloris, the uncalibrated model and the best baseline on
    the same conditions."""
    runs = record.get("peers") or []
    lines = []
    main = table[table["view"] == "train"]
    for peer in sorted({r["peer"] for r in runs}):
        mine = [r for r in runs if r["peer"] == peer]
        train = np.mean([r["train_seconds"] for r in mine])
        wall = np.mean([r["wall_seconds"] for r in mine])
        lines.append(
            f"- {peer}: {len(mine)} runs (fold x seed), training {train:.0f} s per run "
            f"(runner wall time with prediction and file exchange {wall:.0f} s)"
        )
        na = {}
        for r in mine:
            for cond, why in r["na"].items():
                na.setdefault(why, set()).add(cond.rsplit(" (", 1)[0])
        for why, conds in na.items():
            lines.append(
                f"  - n/a for {len(conds)} condition(s) ({', '.join(sorted(conds))}): {why}"
            )
        done = sorted(set(main.loc[main["method"] == peer, "condition"]))
        if not done:
            continue
        sub = main[main["condition"].isin(done)]
        cells = []
        for col, head in (("e_distance", "E"), ("emd", "EMD")):
            d = 4 if col == "emd" else 3
            cm = condition_means(sub, col)
            best = best_baseline(sub, col)
            parts = [f"{peer} {_fmt(cm[peer].mean(), d)}"]
            parts += [f"{m} {_fmt(cm[m].mean(), d)}" for m in (DOLORIS, UNCALIBRATED) if m in cm]
            if best is not None:
                parts.append(f"best baseline {best} {_fmt(cm[best].mean(), d)}")
            cells.append(f"{head}: " + ", ".join(parts))
        lines.append(
            f"  - on the {len(done)} condition(s) it predicted (controls in training): "
            + "; ".join(cells)
        )
    return (
        (["Peers (each in its own virtual environment, `peers.py`):", ""] + lines) if lines else []
    )


def task_section(name: str, table: pd.DataFrame, record: dict) -> str:
    """One task kind's section of RESULTS.md."""
    out = [f"## {name}", ""]
    out.append(
        f"Run: `{record['command']}` at commit `{record['commit']}`, {record['date']}, "
        f"{record['seconds']:.0f} s; seeds {record.get('seeds')}; "
        f"{table['fold'].nunique()} folds, {table['condition'].nunique()} conditions."
    )
    for view in [v for v in ("train", "held-out") if v in set(table["view"])]:
        sub = table[table["view"] == view]
        title = (
            "input: the controls in training"
            if view == "train"
            else ("input: held-out controls (second view)")
        )
        out += ["", f"### {title}", "", markdown_table(summary(sub)), ""]
        down = downstream_table(sub)
        if down:
            out += ["Downstream (DE against the input cells, genes per cell):", "", down, ""]
        out += comparison_lines(sub)
    out += [""] + calibration_lines(record)
    peer = peer_lines(table, record)
    if peer:
        out += [""] + peer
    return "\n".join(out)


def overview(results: dict[str, pd.DataFrame]) -> list[str]:
    """The first table of RESULTS.md: per task kind (main view), Doloris vs the best baseline."""
    lines = [
        "| task kind | Doloris E | uncalibrated E | best baseline E | Doloris EMD | "
        "uncalibrated EMD | best baseline EMD | Doloris DE20 found | uncalibrated DE20 | "
        "best baseline DE20 | verdict E | verdict EMD | verdict DE20 | EMD vs model alone | "
        "DE20 vs model alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, table in results.items():
        sub = table[table["view"] == "train"]
        cells = [name]
        verdicts, against = [], []
        for col, lower in (("e_distance", True), ("emd", True), ("de_overlap_20", False)):
            c = comparison(sub, DOLORIS, col, lower) if col in sub else None
            u = comparison(sub, UNCALIBRATED, col, lower) if col in sub else None
            d = 4 if col == "emd" else 3
            if c is None:
                cells += ["n/a"] * 3
                verdicts.append("n/a")
            else:
                sd = f" ± {_fmt(c['seed_sd'], d)}" if np.isfinite(c["seed_sd"]) else ""
                cells += [
                    f"{_fmt(c['value'], d)}{sd}",
                    _fmt(u["value"], d) if u else "n/a",
                    f"{_fmt(c['best_value'], d)} ({c['best']})",
                ]
                verdicts.append(verdict(c))
            if col != "e_distance":
                a = comparison(sub, DOLORIS, col, lower, against=UNCALIBRATED) if c else None
                against.append(within_noise(a) if a else "n/a")
        lines.append("| " + " | ".join(cells + verdicts + against) + " |")
    return lines


def build(out_dir: Path, info: dict) -> str:
    """RESULTS.md from every ``results/<task>.csv`` and its run record."""
    import tasks

    results, sections, seconds = {}, [], 0.0
    for name in tasks.TASKS:
        csv = out_dir / "results" / f"{name}.csv"
        if not csv.exists():
            continue
        table = pd.read_csv(csv)
        record = json.loads((out_dir / "results" / f"{name}.json").read_text())
        results[name] = table
        seconds += record["seconds"]
        sections.append(task_section(name, table, record))
    head = [
        "# scdoloris benchmark results (cross-validated)",
        "",
        "Generated by `benchmarks/run.py` from `benchmarks/results/`; the task kinds and methods "
        "are documented in `benchmarks/README.md`. Do not edit by hand.",
        "",
        f"- Last command: `{info['command']}`",
        f"- Commit: `{info['commit']}`; date {info['date']}",
        f"- Machine: {info['machine']}",
        f"- Wall time: {seconds:.0f} s (the sum over the task kinds' runs; each section gives "
        "its own command and seconds)",
        "",
        "Values: mean over conditions (each the mean over seeds) ± the sd over seeds of the "
        "mean over conditions, [95% bootstrap interval over conditions] (median over "
        "conditions). Lower is better except Pearson delta. `rank`: fraction of the task "
        "kind's other conditions whose real mean is closer to the prediction's mean than its "
        "own (0 best, 0.5 chance). DE20 found: the share of the real top-20 DE genes "
        "(Wilcoxon against the input cells, as `sc.tl.rank_genes_groups` ranks them) among "
        "the prediction's top 20 (higher is better). Verdicts: Doloris against the best of "
        'NoChange, MeanShift and Additive on that metric; "better" means by more than the '
        'seed-to-seed sd; against the model alone, "no worse" means not worse by more than '
        "the seed sd.",
        "",
        *overview(results),
        "",
    ]
    return "\n".join(head + sections) + "\n"
