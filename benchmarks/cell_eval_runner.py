"""Score predicted perturbation responses with cell-eval, the Virtual Cell Challenge's evaluator.

This script is an *external evaluator*: it runs under the python of the separate virtual
environment ``.venv-cell-eval`` (``make cell-eval-venv`` creates it with ``cell-eval==0.8.2``)
and imports only cell-eval, anndata, numpy, pandas and the standard library, never scdoloris.
cell-eval is not a dependency of the package.

Usage::

    .venv-cell-eval/bin/python benchmarks/cell_eval_runner.py IN_DIR OUT_CSV [--threads 1]
    .venv-cell-eval/bin/python benchmarks/cell_eval_runner.py --self-check

Input. ``IN_DIR`` holds one or more *groups*; a group is the pair of files
``<group>.pred.h5ad`` and ``<group>.real.h5ad`` (e.g. ``Doloris__seed0__ctx_rep1``). In both,
``X`` is log-normalised expression (``normalize_total`` then ``log1p``; dense or CSR), the same
genes in the same order, and ``obs["perturbation"]`` names each cell's condition, ``"control"``
for the control cells (the same control cells in both files). Both files must hold the same
set of perturbations. Other ``obs`` columns are ignored.

Output. One CSV, one row per (group, perturbation) and one column per metric: ``group``,
``perturbation``, ``n_cells_real``, ``n_cells_pred`` and the columns of :data:`METRICS`.
Every metric is per perturbation (cell-eval's ``MetricPipeline``; its aggregate-only metrics,
``de_spearman_sig``, ``pearson_edistance`` and ``clustering_agreement``, are not computed).

DE. cell-eval computes differential expression with pdex: for each perturbation against the
control cells, a two-sided Mann-Whitney U test per gene on the values of ``X`` (normal
approximation, tie and continuity corrections: the calls of scanpy's Wilcoxon test with
``tie_correct=True``),
Benjamini-Hochberg FDR over the genes, and a log2 fold change of the pseudobulks
``expm1(mean(X))`` (geometric means in count space, no pseudocount: a gene absent from one
side has an infinite fold change and heads the ranking if significant). A gene is significant
at FDR < 0.05; the top genes of a perturbation are its significant genes by decreasing
``|log2 fold change|``. The runner tells cell-eval that ``X`` is already log1p
(``allow_discrete=True`` so cell-eval never re-normalises data that happen to look integer,
with pdex's ``is_log1p=True``), instead of its guess from the decimals of ``X``.
Negative predicted values are clipped to 0 (with a warning) since cell-eval rejects them; a
maximum of 15 or more is refused as not log-normalised.

Metrics (real = the real cells, pred = the predicted cells, each against the control cells;
"significant" = FDR < 0.05; "effect" = a pseudobulk mean of ``X`` minus the control's):

- ``overlap_at_N`` / ``_20`` / ``_50`` / ``_100``: the share of the real top-k genes among the
  predicted top-k (k = the number of real significant genes for N, else min(k, that number)).
- ``precision_at_N`` / ``_20`` / ``_50``: the share of the predicted top-k genes among the real
  top-k (k = the number of predicted significant genes for N, else min(k, that number)).
- ``de_direction_match``: over the real significant genes, the share whose predicted log2
  fold change has the same sign.
- ``de_spearman_lfc_sig``: over the real significant genes, the Spearman correlation of the
  real and predicted log2 fold changes.
- ``de_sig_genes_recall``: the share of the real significant genes significant in pred too.
- ``pr_auc`` / ``roc_auc``: how well the predicted ``-log10 FDR`` ranks the real
  significant genes above the others (average precision / ROC AUC).
- ``discrimination_score_l1`` / ``_l2`` / ``_cosine``: 1 - (rank of this perturbation's real
  effect among all real effects of the group, by distance to its predicted effect) / number
  of perturbations; 1 best, (n + 1) / 2n chance for n perturbations (a gene named like the
  perturbation is left out).
- ``pearson_delta``: Pearson correlation of the predicted and real effects (NaN for a
  constant predicted effect, e.g. no change).
- ``mse`` / ``mae``: mean squared / absolute error of the predicted vs real pseudobulk means;
  ``mse_delta`` / ``mae_delta``: the same of the effects (equal to them: same control cells).
- ``de_nsig_counts_real`` / ``_pred``: the numbers of significant genes.

Undefined values are NaN rather than cell-eval's 0: ``overlap_at_*`` where the real cells have
no significant gene, ``precision_at_*`` where the prediction has none, the discrimination
scores of a group with a single perturbation (cell-eval returns a meaningless 1 there: one
candidate), and every metric cell-eval leaves out (direction match, LFC Spearman and recall
without real significant genes, AUCs where the real labels are all one class).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import anndata as ad

PERT_COL = "perturbation"
CONTROL = "control"
FDR = 0.05
MAX_LOG1P = 15.0
PRED_SUFFIX = ".pred.h5ad"
REAL_SUFFIX = ".real.h5ad"

log = logging.getLogger("cell_eval_runner")

#: overlap / precision at k computed directly with ``DEComparison.compute_overlap`` (cell-eval
#: registers only N, 50, 100, 200 and 500)
EXTRA_OVERLAP_K = (20,)

#: the metrics cell-eval's ``MetricPipeline`` computes (all per perturbation, all cheap)
PIPELINE_METRICS = (
    "overlap_at_N",
    "overlap_at_50",
    "overlap_at_100",
    "precision_at_N",
    "precision_at_50",
    "de_direction_match",
    "de_spearman_lfc_sig",
    "de_sig_genes_recall",
    "pr_auc",
    "roc_auc",
    "discrimination_score_l1",
    "discrimination_score_l2",
    "discrimination_score_cosine",
    "pearson_delta",
    "mse",
    "mae",
    "mse_delta",
    "mae_delta",
)

#: every metric column of the output CSV, in order
METRICS = (
    "overlap_at_N",
    *(f"overlap_at_{k}" for k in EXTRA_OVERLAP_K),
    "overlap_at_50",
    "overlap_at_100",
    "precision_at_N",
    *(f"precision_at_{k}" for k in EXTRA_OVERLAP_K),
    "precision_at_50",
    *PIPELINE_METRICS[5:],
    "de_nsig_counts_real",
    "de_nsig_counts_pred",
)


def set_threads(threads: int) -> None:
    """Limit every thread pool cell-eval uses (call before importing it).

    Parameters
    ----------
    threads
        Threads for numba (pdex's Mann-Whitney tests), polars and the BLAS libraries.
    """
    for var in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "POLARS_MAX_THREADS",
    ):
        os.environ[var] = str(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")


def find_groups(in_dir: Path) -> list[str]:
    """List the groups of ``in_dir``: the names with both a pred and a real file.

    Parameters
    ----------
    in_dir
        Folder of ``<group>.pred.h5ad`` / ``<group>.real.h5ad`` pairs.

    Returns
    -------
    list[str]
        The group names, sorted.

    Raises
    ------
    ValueError
        When a file lacks its partner or the folder holds no group.
    """
    pred = {p.name[: -len(PRED_SUFFIX)] for p in in_dir.glob(f"*{PRED_SUFFIX}")}
    real = {p.name[: -len(REAL_SUFFIX)] for p in in_dir.glob(f"*{REAL_SUFFIX}")}
    if pred != real:
        raise ValueError(
            f"unpaired files in {in_dir}: pred without real {sorted(pred - real)}, "
            f"real without pred {sorted(real - pred)}"
        )
    if not pred:
        raise ValueError(f"no <group>{PRED_SUFFIX} / <group>{REAL_SUFFIX} pair in {in_dir}")
    return sorted(pred)


def prepare(adata: ad.AnnData, which: str, group: str) -> ad.AnnData:
    """Check one side of a group and bring it to the form cell-eval accepts.

    Keeps only ``obs["perturbation"]`` (as strings), makes ``X`` a dense float32 array,
    clips negative values to 0 with a warning, and refuses a maximum of 15 or more.

    Parameters
    ----------
    adata
        The pred or real AnnData of the group, log-normalised.
    which
        ``"pred"`` or ``"real"`` (for messages).
    group
        The group's name (for messages).

    Returns
    -------
    anndata.AnnData
        A new AnnData.
    """
    import anndata as ad

    if PERT_COL not in adata.obs:
        raise ValueError(f"{group}.{which}: obs has no {PERT_COL!r} column")
    labels = adata.obs[PERT_COL].astype(str).to_numpy()
    if CONTROL not in labels:
        raise ValueError(f"{group}.{which}: no {CONTROL!r} cells in obs[{PERT_COL!r}]")
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    x = np.array(x, dtype=np.float32)
    values = x.ravel()
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{group}.{which}: X has NaN or infinite values")
    n_negative = int(np.sum(values < 0))
    if n_negative:
        log.warning("%s.%s: %d negative values clipped to 0", group, which, n_negative)
        np.maximum(values, 0, out=values)
    if values.size and values.max() >= MAX_LOG1P:
        raise ValueError(
            f"{group}.{which}: max of X is {values.max():.1f}: expected log-normalised values "
            f"(normalize_total then log1p), below {MAX_LOG1P}"
        )
    obs = pd.DataFrame({PERT_COL: labels}, index=np.asarray(adata.obs_names).astype(str))
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))


def evaluate_group(
    pred: ad.AnnData, real: ad.AnnData, group: str, threads: int = 1
) -> pd.DataFrame:
    """Score one group with cell-eval: one row per perturbation.

    Parameters
    ----------
    pred
        Predicted cells and the control cells, log-normalised.
    real
        Real cells and the same control cells, log-normalised.
    group
        The group's name (the ``group`` column).
    threads
        Threads for pdex's differential expression.

    Returns
    -------
    pandas.DataFrame
        Columns ``group``, ``perturbation``, ``n_cells_real``, ``n_cells_pred`` and
        :data:`METRICS`.
    """
    from cell_eval import MetricPipeline, MetricsEvaluator

    pred = prepare(pred, "pred", group)
    real = prepare(real, "real", group)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # pearson_delta of a constant predicted change (no change) is NaN: no need to shout
        warnings.filterwarnings("ignore", message="An input array is constant")
        evaluator = MetricsEvaluator(
            adata_pred=pred,
            adata_real=real,
            control_pert=CONTROL,
            pert_col=PERT_COL,
            num_threads=threads,
            outdir=os.path.join(tmp, "out"),
            # our X is log1p already: never let cell-eval guess or re-normalise it
            allow_discrete=True,
            pdex_kwargs={"is_log1p": True},
        )
        pipeline = MetricPipeline(profile=None)
        pipeline.add_metrics(list(PIPELINE_METRICS))
        pipeline.compute_de_metrics(evaluator.de_comparison)
        pipeline.compute_anndata_metrics(evaluator.anndata_pair)
        results = pipeline.get_results().to_pandas()

    de = evaluator.de_comparison
    perts = sorted(str(p) for p in evaluator.anndata_pair.perts)
    table = results.set_index("perturbation") if len(results) else pd.DataFrame(index=perts)
    table = table.reindex(perts)
    for k in EXTRA_OVERLAP_K:
        for kind in ("overlap", "precision"):
            scores = de.compute_overlap(k=k, metric=kind, fdr_threshold=FDR)
            table[f"{kind}_at_{k}"] = [scores.get(p, np.nan) for p in perts]
    n_real = np.array([de.real.get_significant_genes(p, FDR).size for p in perts])
    n_pred = np.array([de.pred.get_significant_genes(p, FDR).size for p in perts])
    table["de_nsig_counts_real"] = n_real
    table["de_nsig_counts_pred"] = n_pred

    missing = [m for m in METRICS if m not in table]
    if missing:
        log.warning("%s: cell-eval gave no value of %s (NaN)", group, ", ".join(missing))
    table = table.reindex(columns=list(METRICS)).astype(float)
    # undefined, not 0: no real top genes to recover, no predicted top genes to be precise
    table.loc[n_real == 0, [m for m in METRICS if m.startswith("overlap_at_")]] = np.nan
    table.loc[n_pred == 0, [m for m in METRICS if m.startswith("precision_at_")]] = np.nan
    if len(perts) < 2:
        # a single candidate: its rank is always first
        table[[m for m in METRICS if m.startswith("discrimination_score_")]] = np.nan

    labels_real = real.obs[PERT_COL].value_counts()
    labels_pred = pred.obs[PERT_COL].value_counts()
    table.insert(0, "n_cells_pred", [int(labels_pred[p]) for p in perts])
    table.insert(0, "n_cells_real", [int(labels_real[p]) for p in perts])
    table.insert(0, "perturbation", perts)
    table.insert(0, "group", group)
    return table.reset_index(drop=True)


def run(in_dir: Path, out_csv: Path, threads: int = 1) -> pd.DataFrame:
    """Score every group of ``in_dir`` and write one CSV.

    Parameters
    ----------
    in_dir
        Folder of ``<group>.pred.h5ad`` / ``<group>.real.h5ad`` pairs.
    out_csv
        The CSV to write (its folder is created).
    threads
        Threads for pdex's differential expression.

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    import anndata as ad

    tables = []
    for group in find_groups(in_dir):
        start = time.perf_counter()
        pred = ad.read_h5ad(in_dir / f"{group}{PRED_SUFFIX}")
        real = ad.read_h5ad(in_dir / f"{group}{REAL_SUFFIX}")
        tables.append(evaluate_group(pred, real, group, threads=threads))
        print(
            f"{group}: {len(tables[-1])} perturbations, {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    table = pd.concat(tables, ignore_index=True)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return table


def synthetic_group(
    n_perts: int = 3, n_cells: int = 60, n_genes: int = 100, seed: int = 0
) -> ad.AnnData:
    """Build a small log-normalised data set: control plus perturbations with distinct effects.

    Perturbation ``i`` multiplies the mean counts of its own 10 genes by 4.

    Parameters
    ----------
    n_perts
        Number of perturbations (besides the control).
    n_cells
        Cells per perturbation and of the control.
    n_genes
        Genes (at least ``10 * n_perts``).
    seed
        Random seed.

    Returns
    -------
    anndata.AnnData
        ``X`` log1p of library-size-normalised Poisson counts, ``obs["perturbation"]``.
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    labels = [CONTROL] + [f"P{i}" for i in range(n_perts)]
    blocks = []
    for i, _ in enumerate(labels):
        mean = np.full(n_genes, 2.0)
        if i:
            mean[10 * (i - 1) : 10 * i] *= 4.0
        counts = rng.poisson(mean, size=(n_cells, n_genes)).astype(np.float64)
        size = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        blocks.append(np.log1p(counts / size * 1e4))
    obs = pd.DataFrame(
        {PERT_COL: np.repeat(labels, n_cells)},
        index=[f"cell{i}" for i in range(n_cells * len(labels))],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return ad.AnnData(X=np.vstack(blocks).astype(np.float32), obs=obs, var=var)


def self_check(threads: int = 1) -> None:
    """Run the whole runner on synthetic groups and check the scores of known answers.

    A perfect prediction (pred = real) must score overlap 1 and discrimination 1 on every
    perturbation; predicting the control cells for every perturbation (no change) must score
    overlap 0; a single-perturbation group keeps its DE metrics and has NaN discrimination.

    Parameters
    ----------
    threads
        Threads for pdex's differential expression.
    """
    real = synthetic_group()
    nochange = real.copy()
    ctrl = np.flatnonzero(real.obs[PERT_COL].to_numpy() == CONTROL)
    for pert in real.obs[PERT_COL].unique():
        cells = np.flatnonzero(real.obs[PERT_COL].to_numpy() == pert)
        nochange.X[cells] = real.X[ctrl[: cells.size]]
    single = real[real.obs[PERT_COL].isin([CONTROL, "P0"])].copy()
    with tempfile.TemporaryDirectory() as tmp:
        in_dir = Path(tmp)
        for group, pred, truth in (
            ("perfect", real, real),
            ("nochange", nochange, real),
            ("single", single, single),
        ):
            pred.write_h5ad(in_dir / f"{group}{PRED_SUFFIX}")
            truth.write_h5ad(in_dir / f"{group}{REAL_SUFFIX}")
        table = run(in_dir, in_dir / "scores.csv", threads=threads)
    by = {g: t.set_index("perturbation") for g, t in table.groupby("group")}
    assert (by["perfect"]["de_nsig_counts_real"] > 0).all(), by["perfect"]
    assert np.allclose(by["perfect"]["overlap_at_N"], 1.0), by["perfect"]
    assert np.allclose(by["perfect"]["overlap_at_20"], 1.0), by["perfect"]
    assert np.allclose(by["perfect"]["discrimination_score_l1"], 1.0), by["perfect"]
    assert np.allclose(by["perfect"]["de_direction_match"], 1.0), by["perfect"]
    assert np.allclose(by["nochange"]["overlap_at_N"].fillna(0.0), 0.0), by["nochange"]
    assert np.allclose(by["single"]["overlap_at_N"], 1.0), by["single"]
    assert by["single"]["discrimination_score_l1"].isna().all(), by["single"]
    print("cell-eval runner self-check passed", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``IN_DIR OUT_CSV [--threads N]`` or ``--self-check``.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    parser = argparse.ArgumentParser(
        description="Score <group>.pred.h5ad against <group>.real.h5ad with cell-eval.",
    )
    parser.add_argument("in_dir", nargs="?", type=Path, help="folder of the groups")
    parser.add_argument("out_csv", nargs="?", type=Path, help="the CSV to write")
    parser.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    parser.add_argument(
        "--self-check", action="store_true", help="score synthetic groups and check them"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    set_threads(args.threads)
    if args.self_check:
        self_check(args.threads)
        return 0
    if args.in_dir is None or args.out_csv is None:
        parser.error("IN_DIR and OUT_CSV are required (or --self-check)")
    table = run(args.in_dir, args.out_csv, threads=args.threads)
    print(f"wrote {len(table)} rows to {args.out_csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
