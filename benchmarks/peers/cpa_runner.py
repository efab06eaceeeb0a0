"""CPA (``cpa-tools`` 0.8.8, torch) on one benchmark fold, in ``.venv-cpa`` (Python 3.10).

``python benchmarks/peers/cpa_runner.py IN_DIR OUT_DIR --seed S --threads 1 [--max-steps N]``
reads a fold written by ``benchmarks/peers.py`` (layout: ``_fold_io.py``), trains CPA on
``train.h5ad`` and writes one predicted cell per input cell. It does not import scdoloris.

CPA: Lotfollahi, Klimovskaia Susmelj, De Donno et al., "Predicting cellular responses to
complex perturbations in high-throughput screens", Mol. Syst. Biol. 19, e11517 (2023).

Settings and where they come from
---------------------------------
CPA's tutorials in ``theislab/cpa`` (``docs/tutorials/``, the documentation of
``cpa-tools``): ``Norman.ipynb`` ("Predicting single-cell response to unseen combinatorial
CRISPR perturbations") for the genetic task kinds (Norman, Papalexi), ``Kang.ipynb`` (context
transfer of IFN-beta stimulation) for the Kang task kinds. :data:`NORMAN_MODEL`,
:data:`NORMAN_PLAN`, :data:`KANG_MODEL` and :data:`KANG_PLAN` are their ``model_params`` and
``trainer_params`` as they stand, except ``seed`` (the tutorials' 8206 and 6977): the
benchmark's seed.

===================  =====================================================================
step                 as in the tutorials
===================  =====================================================================
input                raw counts (``adata.X = adata.layers['counts']``), ``recon_loss="nb"``,
                     ``is_count_data=True``; ``setup_anndata(perturbation_key, control_group,
                     dosage_key, categorical_covariate_keys=['cell_type'], deg_uns_key,
                     deg_uns_cat_key, max_comb_len)``: dose 1.0 for every gene of a label;
                     ``max_comb_len`` 2 (Norman) or 1 (Kang); the covariate is the task
                     kind's (a cell type, a replicate; a constant where there is none)
DEGs                 ``rank_genes_groups_cov``: per covariate and perturbation, the top 50
                     genes of ``sc.tl.rank_genes_groups`` against the controls (the
                     preprocessing of CPA's data sets); CPA uses them only for its
                     validation score (``cpa_metric``), which early stopping follows
split               the fold's training cells drawn at random 85 % ``train``, 15 % ``valid``
                     (Norman: ``np.random.choice(['train', 'valid'], p=[0.85, 0.15])``);
                     the cells to predict are ``ood`` rows
training             Norman: ``max_epochs=2000, batch_size=2048, early_stopping_patience=5,
                     check_val_every_n_epoch=5``; Kang: the same with ``batch_size=512``
prediction           the tutorials' counterfactual: rows labelled with the condition to
                     predict whose expression is the control input cells, registered with
                     the training cells (never trained on: ``ood``), then ``model.predict``,
                     which returns each cell's negative binomial mean ``mu``
===================  =====================================================================

What the benchmark adds: the tutorials compare CPA's means with the real cells' mean *counts*
(``r2_score`` on ``layers['counts']``), where a mean is the right point prediction. The benchmark
scores log-normalised cells and their distributions, where a cell at ``log1p(mu)`` is not a cell
CPA's model generates: every zero of a sparse gene becomes a small positive value, and the mean
change is dominated by ``log1p(mean) - mean(log1p)`` (on ``norman_pairs`` fold 0: per-gene sd
0.019 against 0.053 for real cells, Pearson delta 0.12). By default each predicted cell is
therefore drawn from CPA's own likelihood, ``NB(mu, theta = exp(px_r))`` (gamma-Poisson, seeded),
then normalised like the data (counts to the data set's median total, ``log1p``; the tutorials
normalise to 1e4); ``--means`` writes the normalised means instead (the tutorials' point
prediction).

``--max-steps`` caps the epochs at ``ceil(steps / steps per epoch)``. A perturbation whose gene
was never perturbed in training has an untrained embedding in CPA: without an external gene
embedding (the tutorial's route for unseen genes; none lies on this machine), it is n/a.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fold_io as io  # noqa: E402

NORMAN_MODEL = {
    "n_latent": 32,
    "recon_loss": "nb",
    "doser_type": "linear",
    "n_hidden_encoder": 256,
    "n_layers_encoder": 4,
    "n_hidden_decoder": 256,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": False,
    "dropout_rate_encoder": 0.2,
    "dropout_rate_decoder": 0.0,
    "variational": False,
}
NORMAN_PLAN = {
    "n_epochs_kl_warmup": None,
    "n_epochs_adv_warmup": 50,
    "n_epochs_mixup_warmup": 10,
    "n_epochs_pretrain_ae": 10,
    "mixup_alpha": 0.1,
    "lr": 0.0001,
    "wd": 3.2170178270865573e-06,
    "adv_steps": 3,
    "reg_adv": 10.0,
    "pen_adv": 20.0,
    "adv_lr": 0.0001,
    "adv_wd": 7.051355554517135e-06,
    "n_layers_adv": 2,
    "n_hidden_adv": 128,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.3,
    "step_size_lr": 25,
    "do_clip_grad": False,
    "adv_loss": "cce",
    "gradient_clip_value": 5.0,
}
NORMAN_TRAIN = {
    "max_epochs": 2000,
    "batch_size": 2048,
    "early_stopping_patience": 5,
    "check_val_every_n_epoch": 5,
}
KANG_MODEL = {
    "n_latent": 64,
    "recon_loss": "nb",
    "doser_type": "linear",
    "n_hidden_encoder": 128,
    "n_layers_encoder": 2,
    "n_hidden_decoder": 512,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": True,
    "dropout_rate_encoder": 0.0,
    "dropout_rate_decoder": 0.1,
    "variational": False,
}
KANG_PLAN = {
    "n_epochs_kl_warmup": None,
    "n_epochs_pretrain_ae": 30,
    "n_epochs_adv_warmup": 50,
    "n_epochs_mixup_warmup": 0,
    "mixup_alpha": 0.0,
    "adv_steps": None,
    "n_hidden_adv": 64,
    "n_layers_adv": 3,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.3,
    "reg_adv": 20.0,
    "pen_adv": 5.0,
    "lr": 0.0003,
    "wd": 4e-07,
    "adv_lr": 0.0003,
    "adv_wd": 4e-07,
    "adv_loss": "cce",
    "doser_lr": 0.0003,
    "doser_wd": 4e-07,
    "do_clip_grad": True,
    "gradient_clip_value": 1.0,
    "step_size_lr": 10,
}
KANG_TRAIN = {**NORMAN_TRAIN, "batch_size": 512}
SOURCES = {
    "paper": "Lotfollahi et al., Mol. Syst. Biol. 19, e11517 (2023) (CPA)",
    "genetic": "theislab/cpa docs/tutorials/Norman.ipynb (model_params, trainer_params, "
    "train(max_epochs=2000, batch_size=2048, early_stopping_patience=5, "
    "check_val_every_n_epoch=5))",
    "kang": "theislab/cpa docs/tutorials/Kang.ipynb (model_params, trainer_params, batch 512)",
}
VALID_FRACTION = 0.15
N_DEGS = 50


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimisation steps")
    p.add_argument(
        "--means", action="store_true", help="write the NB means, not cells drawn from the NB"
    )
    return p.parse_args(argv)


def degs(adata, control: str) -> dict[str, list[str]]:
    """Top :data:`N_DEGS` genes per ``"<cell_type>_<perturbation>"`` against the controls of the
    same cell type (``sc.tl.rank_genes_groups`` on the log-normalised ``X``, by absolute score)."""
    import scanpy as sc

    out = {}
    for ct in sorted(set(adata.obs["cell_type"])):
        sub = adata[adata.obs["cell_type"] == ct].copy()
        groups = sorted(set(sub.obs["perturbation"]) - {control})
        if not groups or (sub.obs["perturbation"] == control).sum() < 2:
            continue
        sizes = sub.obs["perturbation"].value_counts()
        groups = [g for g in groups if sizes[g] >= 2]
        if not groups:
            continue
        sc.tl.rank_genes_groups(
            sub,
            groupby="perturbation",
            groups=groups,
            reference=control,
            rankby_abs=True,
            n_genes=N_DEGS,
            use_raw=False,
        )
        names = sub.uns["rank_genes_groups"]["names"]
        for g in groups:
            out[f"{ct}_{g}"] = [str(x) for x in names[g]]
    return out


def main(argv=None) -> int:
    """Train on ``IN_DIR`` and write the predictions and ``meta.json`` to ``OUT_DIR``."""
    args = parse_args(argv)
    io.limit_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scvi
    import torch
    from scipy import sparse

    torch.set_num_threads(args.threads)
    import cpa

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, conditions, read_input = io.read_fold(args.in_dir)
    control = str(train.uns["control"])
    target_sum = float(train.uns["target_sum"])
    kang = str(train.uns.get("task", "")).startswith("kang")
    model_params = dict(KANG_MODEL if kang else NORMAN_MODEL)
    plan = dict(KANG_PLAN if kang else NORMAN_PLAN)
    fit = dict(KANG_TRAIN if kang else NORMAN_TRAIN)
    pert = train.obs["perturbation"].astype(str).to_numpy()
    seen = {g for p in pert[pert != control] for g in io.split_tokens(p)}
    width = max(len(io.split_tokens(p)) for p in pert)
    width = max(width, *(len(io.split_tokens(c["perturbation"])) for c in conditions))

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    na, jobs = {}, []
    for c in conditions:
        unseen = sorted(set(io.split_tokens(c["perturbation"])) - seen)
        if unseen:
            na[str(c["i"])] = (
                "a gene never perturbed in training: CPA's embedding of it is untrained and no "
                "external gene embedding (the tutorial's route) is available offline"
            )
        elif c["cell_type"] not in set(train.obs["cell_type"]):
            na[str(c["i"])] = f"covariate {c['cell_type']!r} is not in training"
        else:
            jobs.append(c)
    parts = [
        ad.AnnData(
            X=sparse.csr_matrix(train.layers["counts"]),
            obs=pd.DataFrame(
                {
                    "perturbation": pert,
                    "cell_type": train.obs["cell_type"].astype(str).to_numpy(),
                    "split": rng.choice(
                        ["train", "valid"], size=train.n_obs, p=[1 - VALID_FRACTION, VALID_FRACTION]
                    ),
                    "job": -1,
                },
                index=[f"t{k}" for k in range(train.n_obs)],
            ),
            var=pd.DataFrame(index=train.var_names),
        )
    ]
    for c in jobs:
        src = read_input(c["i"])[:, train.var_names]
        parts.append(
            ad.AnnData(
                X=sparse.csr_matrix(src.layers["counts"]),
                obs=pd.DataFrame(
                    {
                        "perturbation": c["perturbation"],
                        "cell_type": c["cell_type"],
                        "split": "ood",
                        "job": c["i"],
                    },
                    index=[f"p{c['i']}_{k}" for k in range(src.n_obs)],
                ),
                var=pd.DataFrame(index=train.var_names),
            )
        )
    adata = ad.concat(parts)
    adata.obs["dose"] = [
        "+".join("1.0" for _ in io.split_tokens(p)) for p in adata.obs["perturbation"]
    ]
    adata.obs["cov_cond"] = (
        adata.obs["cell_type"].astype(str) + "_" + adata.obs["perturbation"].astype(str)
    )
    lognorm = train.copy()
    lognorm.obs_names = [f"t{k}" for k in range(train.n_obs)]
    adata.uns["rank_genes_groups_cov"] = degs(lognorm, control)
    for col in ("perturbation", "cell_type", "split", "cov_cond"):
        adata.obs[col] = adata.obs[col].astype("category")

    scvi.settings.seed = args.seed
    cpa.CPA.setup_anndata(
        adata,
        perturbation_key="perturbation",
        control_group=control,
        dosage_key="dose",
        categorical_covariate_keys=["cell_type"],
        is_count_data=True,
        deg_uns_key="rank_genes_groups_cov",
        deg_uns_cat_key="cov_cond",
        max_comb_len=width,
    )
    model = cpa.CPA(
        adata=adata,
        split_key="split",
        train_split="train",
        valid_split="valid",
        test_split="ood",
        **model_params,
        seed=args.seed,
    )
    n_train = int((adata.obs["split"] == "train").sum())
    steps_per_epoch = math.ceil(n_train / fit["batch_size"])
    if args.max_steps is not None:
        fit["max_epochs"] = min(
            fit["max_epochs"], max(1, math.ceil(args.max_steps / steps_per_epoch))
        )
    t0 = time.perf_counter()
    model.train(
        max_epochs=fit["max_epochs"],
        use_gpu=False,
        batch_size=fit["batch_size"],
        plan_kwargs=plan,
        early_stopping_patience=fit["early_stopping_patience"],
        check_val_every_n_epoch=fit["check_val_every_n_epoch"],
        save_path=False,
        enable_progress_bar=False,
    )
    fit_s = time.perf_counter() - t0
    train_s = time.perf_counter() - start
    epochs = len(model.epoch_history["epoch"]) if model.epoch_history is not None else None
    print(f"CPA: trained in {fit_s:.1f} s ({epochs} epoch records)", flush=True)

    # the tutorials' model.predict(adata) on every registered row; CPA_pred = NB means
    t0 = time.perf_counter()
    model.predict(adata, batch_size=2048)
    mu = np.asarray(adata.obsm["CPA_pred"], dtype=np.float64)
    if not args.means:
        theta = np.exp(model.module.px_r.detach().cpu().numpy().astype(np.float64))
        draw = np.random.default_rng(args.seed)
        mu = draw.poisson(draw.gamma(theta, np.clip(mu, 1e-12, None) / theta))
    job_of = adata.obs["job"].to_numpy()
    per_job = (time.perf_counter() - t0) / max(len(jobs), 1)
    predict_s = {}
    for c in jobs:
        rows = np.flatnonzero(job_of == c["i"])
        io.write_prediction(
            out_dir, c["i"], io.lognorm_counts(mu[rows], target_sum), train.var_names
        )
        predict_s[str(c["i"])] = per_job

    io.write_meta(
        out_dir,
        {
            "peer": "CPA",
            "train_seconds": train_s,
            "fit_seconds": fit_s,
            "epochs_recorded": epochs,
            "steps_per_epoch": steps_per_epoch,
            "predict_seconds": predict_s,
            "settings": {
                "tutorial": "Kang" if kang else "Norman",
                "model_params": model_params,
                "trainer_params": plan,
                "train": fit,
                "seed": args.seed,
                "threads": args.threads,
                "valid_fraction": VALID_FRACTION,
                "n_degs": N_DEGS,
                "output": "NB means" if args.means else "cells drawn from NB(mu, exp(px_r))",
            },
            "preprocessing": "raw counts (layers['counts'] of the fold's cells), NB loss; "
            "predicted counts (drawn, or the means with --means) scaled to the data set's "
            "median total count, then log1p",
            "sources": SOURCES,
            "versions": io.versions(
                "cpa-tools", "torch", "scvi-tools", "anndata", "lightning", "numpy", "jax"
            ),
            "na": na,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
