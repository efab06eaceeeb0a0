"""Predictions that hold up downstream: the README's DE recipe on the Norman subset.

The five gene pairs whose singles are measured are held out of training (``norman_model``);
each is predicted from the control cells with ``include_controls=True`` and ranked with
scanpy's Wilcoxon test against the controls, as the README shows. The calibrated prediction
must be a population of plausible cells: no gene with one identical non-zero value in every
cell (the first blend gave silent genes such a value, which the rank test calls the most
significant), as many expressed genes per cell as real cells, and the real top-20 DE genes that
the model alone finds (within one gene of 20) and far more than the additive baseline.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scdoloris import baselines
from scdoloris.metrics import constant_genes, expressed_genes_ratio

pytestmark = pytest.mark.slow
PAIRS = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
SEEDS = (0, 1, 2)


def _top20(both: ad.AnnData, group: str) -> set[str]:
    """The README's recipe: Wilcoxon against the controls, the first 20 genes."""
    import scanpy as sc

    sc.tl.rank_genes_groups(both, "perturbation", reference="control", method="wilcoxon")
    return set(both.uns["rank_genes_groups"]["names"][group][:20])


def _dense(X) -> np.ndarray:
    return np.asarray(X.todense() if hasattr(X, "todense") else X)


def _with_controls(cells: ad.AnnData, controls: ad.AnnData, label: str) -> ad.AnnData:
    """``cells`` labelled ``label`` followed by the control cells (as include_controls=True)."""
    X = np.vstack([_dense(cells.X), _dense(controls.X)])
    obs = {"perturbation": [label] * cells.n_obs + ["control"] * controls.n_obs}
    both = ad.AnnData(X, obs=obs)
    both.obs_names = [f"c{i}" for i in range(both.n_obs)]
    both.var_names = controls.var_names
    both.uns["log1p"] = {"base": None}
    return both


@pytest.fixture(scope="module")
def recipe(norman, norman_split, norman_model):
    """Per held-out pair and prediction seed: the top-20 DE genes of the real cells and of each
    prediction, and the predicted cells (calibrated, model alone, additive baseline).

    Three prediction seeds: the calibrated cells and the model's differ by a gene or so of 20
    from seed to seed either way, so one seed cannot tell which finds more."""
    train, held = norman_split
    controls = norman[norman.obs["perturbation"] == "control"].copy()
    additive = baselines.Additive().fit(train, "perturbation", "control")
    out = {}
    for pair in PAIRS:  # the pairs norman_split holds out
        real = held[held.obs["perturbation"] == pair]
        real_top = _top20(_with_controls(real, controls, pair), pair)
        for seed in SEEDS:
            kw = {"include_controls": True, "seed": seed, "progress_bar": False}
            preds = {
                "calibrated": norman_model.predict(controls, pair, **kw),
                "alone": norman_model.predict(controls, pair, calibrate=False, **kw),
                "additive": _with_controls(additive.predict(controls, pair), controls, pair),
            }
            tops = {name: _top20(both, pair) for name, both in preds.items()}
            cells = {
                name: np.asarray(both[both.obs["perturbation"] == pair].X)
                for name, both in preds.items()
            }
            out[(pair, seed)] = {
                "tops": {**tops, "real": real_top},
                "cells": cells,
                "real": _dense(real.X),
            }
    return out


def test_no_gene_takes_one_value_in_every_predicted_cell(recipe):
    for key, r in recipe.items():
        assert constant_genes(r["cells"]["calibrated"]).size == 0, key
    # the additive baseline does: it moves every control cell's zeros by the same change
    assert any(constant_genes(r["cells"]["additive"]).size for r in recipe.values())


def test_predicted_cells_express_as_many_genes_as_real_cells(recipe):
    for key, r in recipe.items():
        ratio = expressed_genes_ratio(r["cells"]["calibrated"], r["real"])
        assert 0.67 <= ratio <= 1.5, (key, ratio)


def test_the_readme_recipe_finds_the_real_de_genes(recipe):
    # mean over the five pairs and three prediction seeds of the real top-20 genes found
    found = {
        name: np.mean([len(r["tops"][name] & r["tops"]["real"]) for r in recipe.values()])
        for name in ("calibrated", "alone", "additive")
    }
    # The blend moves gene means toward the baseline's, which costs the model alone's DE
    # ranking a fraction of a gene: measured -0.4 (CI machine) to +0.2 (dev machine) genes of
    # 20 here, -0.3 in `make bench` (norman_pairs). It must stay within one gene of the model
    # alone's; the constant-filled blend it replaced found 3.2 against the model's 11.8.
    assert found["calibrated"] >= found["alone"] - 1.0, found
    assert found["calibrated"] >= found["additive"] + 5.0, found
