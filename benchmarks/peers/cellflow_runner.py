"""CellFlow (``cellflow-tools`` 0.0.9, JAX) on one benchmark fold, in ``.venv-cellflow``.

``python benchmarks/peers/cellflow_runner.py IN_DIR OUT_DIR --seed S --threads 1 [--max-steps N]``
reads a fold written by ``benchmarks/peers.py`` (layout: ``_fold_io.py``), trains CellFlow's
OT flow matching model (``solver="otfm"``) on ``train.h5ad`` and writes one predicted cell per
input cell. It does not import scdoloris.

CellFlow: "CellFlow enables generative single-cell phenotype modeling with flow matching",
bioRxiv 2025 (Theis lab; the package ``theislab/CellFlow``).

Settings and where they come from
---------------------------------
``--preset norman`` is the paper's Norman 2019 run (combinatorial CRISPRa, the genetic task
closest to ours), in its reproducibility repository ``theislab/cellflow_reproducibility``,
``figure_4/norman/downstream_analysis/cellflow/``: ``train_norman_pca_50.py`` (the script),
``conf/model/norman.yaml`` and ``conf/training/norman.yaml`` with the selected run
``conf/hparams_search/hparams_norman_select_0_tough_leaf_242.yaml`` (which overrides the model
file's ``epsilon: 0.1`` with 1.0), launched by ``bash_scripts/optimal_run_norman_50.sh``:

==============================  ==========================================================
setting                         value (:data:`NORMAN`)
==============================  ==========================================================
cell representation             ``X_pca``: 50 PCs of the log-normalised training cells
                                (``cellflow.preprocessing.centered_pca``); input cells
                                projected (``project_pca``), predictions decoded to genes
                                (``reconstruct_pca``), as in the script
perturbation covariates         ``{"gene": ("gene_1", "gene_2")}``; a single is
                                ``(A, pad)``, the pad's representation all zeros (the
                                paper's ``"ctrl"`` token, ``np.zeros_like``)
gene representation             paper: ESM2 (``esm2_t36_3B``, layer 36 mean) of each
                                gene's protein. **Here: a one-hot vector per gene seen in
                                training**: the ESM2 weights cannot be downloaded here, and
                                no gene embedding lies on this machine; the condition
                                encoder's first layer then learns each gene's embedding.
                                A gene never seen in training has no representation: n/a.
condition encoder               ``layers_before_pool`` MLP [1024, 1024] dropout 0.5;
                                ``pooling="attention_token"``; ``layers_after_pool`` MLP
                                [1024, 1024] dropout 0.2; ``condition_embedding_dim=1024``;
                                ``cond_output_dropout=0.9``
velocity field                  ``time_encoder_dims`` [2048] x 3, dropout 0;
                                ``hidden_dims`` [4096] x 3, dropout 0;
                                ``decoder_dims`` [4096] x 3, dropout 0.2;
                                ``time_freqs=1024``; concatenation; no layer norm or
                                projection before concatenation
flow                            ``{"constant_noise": 1.0}``
matching                        ``match_linear(epsilon=1.0, scale_cost="mean",
                                tau_a=1.0, tau_b=1.0)``
optimiser                       ``optax.MultiSteps(optax.adam(5e-5), 20)`` (one update
                                every 20 iterations)
training                        ``num_iterations=200_000``, ``batch_size=1024``
prediction                      CellFlow's default ODE solve (diffrax ``Tsit5``, PID
                                controller, rtol = atol = 1e-5)
==============================  ==========================================================

A covariate (``cell_type``: a Kang cell type, a Papalexi replicate) follows CellFlow's PBMC
tutorial (``docs/notebooks/100_pbmc.ipynb``) and the paper's PBMC runs
(``figure_2/prepare_data/pbmc_cytokines/prepare_adata_new_donor.ipynb``): a sample covariate
whose representation is the mean expression of its control cells in training
(``get_donor_embeddings``), ``split_covariates`` on it (each context's own controls), its
``layers_before_pool`` MLP [256, 256] dropout 0.

What differs from the paper, and why

* The gene representation (above).
* The network and budget: the table is ``--preset norman``. On one CPU thread of the benchmark
  machine it takes 13-19 s per iteration (measured while the machine was shared), so the
  paper's 200,000 iterations (on GPUs) would take about a month per fold, and its prediction
  (an adaptive ODE solve through 4,096-wide layers) ran past 10 minutes for 50 cells. The
  default ``--preset cpu`` (:data:`CPU`) keeps the architecture at an eighth of its widths
  (hidden and decoder layers 512, time encoder 256 on 128 frequencies, condition embedding 128,
  condition MLPs 128 and 32) and takes two values of the paper's own search grid: no gradient
  accumulation (``multi_steps=1``) and learning rate 1e-4; 1,000 iterations of 1,024 cells
  (about 0.2 s each): more optimisation steps than Doloris's 600 and a longer training.
  ``--max-steps`` sets ``num_iterations``.
* The batch sampling seed: CellFlow's trainer draws batches from fixed seeds
  (``np.random.default_rng(0)``, ``jax.random.PRNGKey(0)``), so ``--seed`` changes only the
  initialisation (``prepare_model(seed=...)``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fold_io as io  # noqa: E402

PAD = "_pad_"
#: the paper's selected Norman model (module docstring)
NORMAN = {
    "n_pcs": 50,
    "condition_embedding_dim": 1024,
    "time_encoder_dims": [2048, 2048, 2048],
    "time_encoder_dropout": 0.0,
    "hidden_dims": [4096, 4096, 4096],
    "hidden_dropout": 0.0,
    "decoder_dims": [4096, 4096, 4096],
    "decoder_dropout": 0.2,
    "pooling": "attention_token",
    "gene_layers": {"layer_type": "mlp", "dims": [1024, 1024], "dropout_rate": 0.5},
    "covariate_layers": {"layer_type": "mlp", "dims": [256, 256], "dropout_rate": 0.0},
    "layers_after_pool": {"layer_type": "mlp", "dims": [1024, 1024], "dropout_rate": 0.2},
    "cond_output_dropout": 0.9,
    "time_freqs": 1024,
    "flow_noise": 1.0,
    "learning_rate": 5e-5,
    "multi_steps": 20,
    "epsilon": 1.0,
    "tau_a": 1.0,
    "tau_b": 1.0,
    "num_iterations": 200_000,
    "batch_size": 1024,
}
#: the same network at an eighth of the paper's widths, for one CPU thread (module docstring):
#: no gradient accumulation and the larger learning rate, both values of the paper's own
#: search grid (``conf/hparams_search/hparams_norman_optimal.yaml``: ``multi_steps`` 1, 20 or
#: 50; ``learning_rate`` 5e-5 or 1e-4)
CPU = {
    **NORMAN,
    "condition_embedding_dim": 128,
    "time_encoder_dims": [256, 256, 256],
    "hidden_dims": [512, 512, 512],
    "decoder_dims": [512, 512, 512],
    "gene_layers": {"layer_type": "mlp", "dims": [128, 128], "dropout_rate": 0.5},
    "covariate_layers": {"layer_type": "mlp", "dims": [32, 32], "dropout_rate": 0.0},
    "layers_after_pool": {"layer_type": "mlp", "dims": [128, 128], "dropout_rate": 0.2},
    "time_freqs": 128,
    "learning_rate": 1e-4,
    "multi_steps": 1,
    "num_iterations": 1_000,
}
PRESETS = {"norman": NORMAN, "cpu": CPU}
SOURCES = {
    "paper": "CellFlow enables generative single-cell phenotype modeling with flow matching, "
    "bioRxiv 2025",
    "settings": "theislab/cellflow_reproducibility figure_4/norman/downstream_analysis/cellflow/"
    "{train_norman_pca_50.py, conf/model/norman.yaml, conf/training/norman.yaml, "
    "conf/hparams_search/hparams_norman_select_0_tough_leaf_242.yaml}",
    "covariates": "theislab/CellFlow docs/notebooks/100_pbmc.ipynb (v0.0.9); "
    "cellflow_reproducibility figure_2/prepare_data/pbmc_cytokines/"
    "prepare_adata_new_donor.ipynb (donor embedding = mean control expression)",
}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--max-steps", type=int, default=None, help="training iterations (default: the preset's)"
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="network and budget")
    return p.parse_args(argv)


def gene_columns(labels, width: int):
    """Per label, its genes padded with :data:`PAD` to ``width`` columns."""
    rows = []
    for label in labels:
        genes = io.split_tokens(label)
        rows.append(genes + [PAD] * (width - len(genes)))
    return rows


def main(argv=None) -> int:
    """Train on ``IN_DIR`` and write the predictions and ``meta.json`` to ``OUT_DIR``."""
    args = parse_args(argv)
    io.limit_threads(args.threads)
    import functools
    import warnings

    import numpy as np
    import optax
    import pandas as pd

    warnings.filterwarnings("ignore")
    import cellflow
    import cellflow.preprocessing as cfpp
    from cellflow.utils import match_linear

    settings = {**PRESETS[args.preset], "preset": args.preset}
    if args.max_steps is not None:
        settings["num_iterations"] = int(args.max_steps)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, conditions, read_input = io.read_fold(args.in_dir)
    control = str(train.uns["control"])
    pert = train.obs["perturbation"].astype(str).to_numpy()
    is_ctrl = pert == control
    width = max(len(io.split_tokens(p)) for p in pert[~is_ctrl])
    width = max(width, max(len(io.split_tokens(c["perturbation"])) for c in conditions))
    gene_cols = [f"gene_{k + 1}" for k in range(width)]
    seen = sorted({g for p in pert[~is_ctrl] for g in io.split_tokens(p)})
    ct = train.obs["cell_type"].astype(str).to_numpy()
    has_cov = len(set(ct)) > 1 or set(ct) != {io.NO_COVARIATE}

    start = time.perf_counter()
    adata = train.copy()
    del adata.layers["counts"]
    cols = gene_columns(np.where(is_ctrl, "", pert), width)
    for k, c in enumerate(gene_cols):
        adata.obs[c] = pd.Categorical([r[k] for r in cols])
    adata.obs["is_control"] = is_ctrl
    eye = np.eye(len(seen), dtype=np.float32)
    adata.uns["gene_onehot"] = {g: eye[k] for k, g in enumerate(seen)}
    adata.uns["gene_onehot"][PAD] = np.zeros(len(seen), dtype=np.float32)
    X = np.asarray(adata.X, dtype=np.float32)
    if has_cov:
        adata.obs["cell_type"] = pd.Categorical(ct)
        adata.uns["cell_type_mean"] = {
            c: X[is_ctrl & (ct == c)].mean(0) for c in sorted(set(ct[is_ctrl]))
        }
    cfpp.centered_pca(adata, n_comps=settings["n_pcs"], keep_centered_data=False)
    fit_data = adata
    if has_cov:
        # CellFlow pairs each context's controls with its perturbed cells (split_covariates) and
        # refuses controls without any: a held-out context (a Kang cell type never seen
        # stimulated) keeps its controls for the PCA and its representation, not for the flow
        targets = set(ct[~is_ctrl])
        fit_data = adata[~is_ctrl | np.isin(ct, sorted(targets))].copy()

    cf = cellflow.model.CellFlow(fit_data, solver="otfm")
    cov = {
        "sample_covariates": ["cell_type"] if has_cov else None,
        "sample_covariate_reps": {"cell_type": "cell_type_mean"} if has_cov else None,
        "split_covariates": ["cell_type"] if has_cov else None,
    }
    cf.prepare_data(
        sample_rep="X_pca",
        control_key="is_control",
        perturbation_covariates={"gene": tuple(gene_cols)},
        perturbation_covariate_reps={"gene": "gene_onehot"},
        max_combination_length=width,
        null_value=0.0,
        **cov,
    )
    before = {"gene": settings["gene_layers"]}
    if has_cov:
        before["cell_type"] = settings["covariate_layers"]
    cf.prepare_model(
        condition_mode="deterministic",
        regularization=0.0,
        pooling=settings["pooling"],
        layers_before_pool=before,
        layers_after_pool=settings["layers_after_pool"],
        condition_embedding_dim=settings["condition_embedding_dim"],
        cond_output_dropout=settings["cond_output_dropout"],
        time_freqs=settings["time_freqs"],
        time_encoder_dims=settings["time_encoder_dims"],
        time_encoder_dropout=settings["time_encoder_dropout"],
        hidden_dims=settings["hidden_dims"],
        hidden_dropout=settings["hidden_dropout"],
        decoder_dims=settings["decoder_dims"],
        decoder_dropout=settings["decoder_dropout"],
        probability_path={"constant_noise": settings["flow_noise"]},
        match_fn=functools.partial(
            match_linear,
            epsilon=settings["epsilon"],
            scale_cost="mean",
            tau_a=settings["tau_a"],
            tau_b=settings["tau_b"],
        ),
        optimizer=optax.MultiSteps(optax.adam(settings["learning_rate"]), settings["multi_steps"]),
        layer_norm_before_concatenation=False,
        linear_projection_before_concatenation=False,
        seed=args.seed,
    )
    prep_s = time.perf_counter() - start
    t0 = time.perf_counter()
    n_it = settings["num_iterations"]
    cf.train(num_iterations=n_it, batch_size=settings["batch_size"], valid_freq=n_it + 1)
    fit_s = time.perf_counter() - t0
    train_s = time.perf_counter() - start
    print(f"CellFlow: {n_it} iterations in {fit_s:.1f} s (+{prep_s:.1f} s set-up)", flush=True)

    na, predict_s = {}, {}
    pcs, means = np.asarray(adata.varm["PCs"]), np.asarray(adata.varm["X_mean"])
    for c in conditions:
        i = c["i"]
        genes = io.split_tokens(c["perturbation"])
        unseen = [g for g in genes if g not in seen]
        if unseen:
            na[str(i)] = (
                "a gene never perturbed in training: no gene embedding offline (the paper's "
                "ESM2 cannot be downloaded here; a one-hot of an unseen gene is untrained)"
            )
            continue
        if has_cov and c["cell_type"] not in adata.uns["cell_type_mean"]:
            na[str(i)] = f"covariate {c['cell_type']!r} has no control cells in training"
            continue
        t0 = time.perf_counter()
        src = read_input(i)
        src = src[:, adata.var_names].copy()
        src.obs["is_control"] = True
        src.uns = {k: adata.uns[k] for k in ("gene_onehot", "cell_type_mean") if k in adata.uns}
        for c_ in gene_cols:
            src.obs[c_] = PAD
        if has_cov:
            src.obs["cell_type"] = c["cell_type"]
        cfpp.project_pca(src, ref_adata=adata)
        row = dict(zip(gene_cols, gene_columns([c["perturbation"]], width)[0], strict=True))
        row.update({"is_control": False, "condition": f"c{i}"})
        if has_cov:
            row["cell_type"] = c["cell_type"]
        covariate_data = pd.DataFrame([row])
        for col in (*gene_cols, *(["cell_type"] if has_cov else [])):
            covariate_data[col] = covariate_data[col].astype("category")
        pred = cf.predict(
            adata=src,
            covariate_data=covariate_data,
            sample_rep="X_pca",
            condition_id_key="condition",
        )
        Z = np.asarray(pred[f"c{i}"]).reshape(src.n_obs, -1)
        io.write_prediction(out_dir, i, Z @ pcs.T + means.T, adata.var_names)
        predict_s[str(i)] = time.perf_counter() - t0

    io.write_meta(
        out_dir,
        {
            "peer": "CellFlow",
            "train_seconds": train_s,
            "fit_seconds": fit_s,
            "seconds_per_iteration": fit_s / max(n_it, 1),
            "predict_seconds": predict_s,
            "settings": {**settings, "seed": args.seed, "threads": args.threads},
            "gene_representation": f"one-hot over the {len(seen)} genes perturbed in training",
            "covariate": "cell_type: mean control expression" if has_cov else None,
            "preprocessing": "X log-normalised as given (normalize_total + log1p); 50 PCs of "
            "the training cells (centered_pca); inputs projected, predictions reconstructed",
            "sources": SOURCES,
            "versions": io.versions("cellflow-tools", "jax", "jaxlib", "flax", "ott-jax", "optax"),
            "na": na,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
