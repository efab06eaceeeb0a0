"""The README's Usage example, as written there, on ../shared/data; prints its timings as JSON.

``benchmarks/perf.py --parts e2e`` runs it in a fresh process (issue #17: the end-to-end time of
the README example on this machine). The model is saved to a temporary directory.
``--no-calibrate`` trains with ``train(calibrate=False)`` (``perf.py --parts calibration``
compares the two, issue #32).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

NORMAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman2019_k562_subset.h5ad"


def main() -> int:
    calibrate = "--no-calibrate" not in sys.argv[1:]
    t0 = time.perf_counter()
    import scanpy as sc
    import scvi

    import scdoloris

    adata = sc.read_h5ad(NORMAN)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    scvi.settings.seed = 0
    held_out = adata.obs["perturbation"].isin(["KLF1+MAP2K6", "KLF1+TGFBR2"])
    train = adata[~held_out].copy()
    scdoloris.DolorisModel.setup_anndata(
        train, perturbation_key="perturbation", control_group="control"
    )
    model = scdoloris.DolorisModel(train)
    t1 = time.perf_counter()
    model.train(enable_progress_bar=False, calibrate=calibrate)
    t2 = time.perf_counter()
    controls = adata[adata.obs["perturbation"] == "control"]
    pred = model.predict(controls, perturbation=["KLF1+MAP2K6", "KLF1+TGFBR2"])
    t3 = time.perf_counter()
    sc.pp.pca(pred)
    sc.pp.neighbors(pred)
    sc.tl.umap(pred)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(f"{tmp}/doloris_norman/")
        model = scdoloris.DolorisModel.load(f"{tmp}/doloris_norman/")
    t4 = time.perf_counter()
    timings = {
        "total_s": t4 - t0,
        "setup_s": t1 - t0,
        "train_s": t2 - t1,
        "predict_s": t3 - t2,
        "umap_save_load_s": t4 - t3,
        "calibrate": calibrate,
        "n_train_cells": int(train.n_obs),
        "n_control_cells": int(controls.n_obs),
    }
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
