"""Tests of the perturbation-screen simulator ``scdoloris.datasets.simulate``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from scdoloris._perturbation import normalize_perturbation
from scdoloris.datasets import simulate

SMALL = {"n_cells": 600, "n_genes": 200, "n_single": 6, "n_pairs": 4, "n_drugs": 1}


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return simulate(**SMALL, seed=3)


@pytest.fixture(scope="module")
def large_lognorm() -> ad.AnnData:
    """Enough cells per condition to recover the truth, normalised and log-transformed."""
    adata = simulate(n_genes=500, n_single=8, n_pairs=8, n_drugs=2, cells_per_condition=450, seed=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.X = adata.X.toarray()
    return adata


def _mean_shift(adata: ad.AnnData, perturbation: str, cell_type: str, dose=None) -> np.ndarray:
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    mask = (pert == perturbation) & (ct == cell_type)
    if dose is not None:
        mask &= np.isclose(adata.obs["dose"].to_numpy(), dose)
    ctrl = (pert == "ctrl") & (ct == cell_type)
    assert mask.sum() > 0
    return adata.X[mask].mean(0) - adata.X[ctrl].mean(0)


def _observed_shifts(adata: ad.AnnData, perturbation: str) -> np.ndarray:
    types = adata.uns["simulation"]["cell_types"]
    return np.stack([_mean_shift(adata, perturbation, t) for t in types])


def test_counts_are_raw_and_realistic(small):
    X = small.X
    assert sparse.isspmatrix_csr(X) or isinstance(X, sparse.csr_array)
    assert X.dtype == np.float32
    assert np.all(X.data >= 0)
    np.testing.assert_array_equal(X.data, np.round(X.data))
    assert (small.layers["counts"] != X).nnz == 0
    n_counts = small.obs["n_counts"].to_numpy()
    np.testing.assert_allclose(n_counts, np.asarray(X.sum(axis=1)).ravel())
    assert 1500 < np.median(n_counts) < 6000


@pytest.mark.parametrize("seed", [0, 1])
def test_zero_fraction_realistic(seed):
    # With ~3000 UMIs per cell, the zero fraction grows with the number of genes.
    fractions = []
    for n_genes in (500, 2000):
        X = simulate(n_cells=400, n_genes=n_genes, seed=seed).X
        fractions.append(1.0 - X.nnz / np.prod(X.shape))
    assert all(0.5 < f < 0.98 for f in fractions)
    assert fractions[1] > fractions[0]


def test_obs_var_layout(small):
    obs = small.obs
    assert small.n_obs == SMALL["n_cells"]
    for col in ("perturbation", "cell_type", "dose", "perturbation_type", "smiles", "n_counts"):
        assert col in obs
    assert list(obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    assert set(obs["perturbation_type"].unique()) == {"control", "single", "pair", "drug"}
    assert small.var_names[0] == "G0000" and small.var_names.is_unique

    truth = small.uns["simulation"]
    ptype = obs["perturbation_type"].astype(str).to_numpy()
    pert = obs["perturbation"].astype(str).to_numpy()
    assert set(pert[ptype == "control"]) == {"ctrl"}
    assert set(pert[ptype == "single"]) == set(truth["singles"])
    assert set(pert[ptype == "pair"]) == set(truth["pairs"])
    assert set(pert[ptype == "drug"]) == set(truth["drugs"])
    # Perturbed genes are simulated genes; pairs are in normalised "A+B" form.
    assert set(truth["singles"]) <= set(small.var_names)
    for pair in truth["pairs"]:
        assert normalize_perturbation(pair) == pair
        assert set(pair.split("+")) <= set(truth["singles"])
        assert truth["interactions"][pair] in {"additive", "synergistic", "buffering", "epistatic"}
    assert len(truth["no_effect"]) == round(0.2 * SMALL["n_single"])
    # Doses: 0 except for drug cells, which carry the drug's SMILES.
    dose = obs["dose"].to_numpy()
    assert np.all(dose[ptype != "drug"] == 0)
    assert set(np.round(dose[ptype == "drug"], 6)) == {0.01, 0.1, 1.0}
    smiles = obs["smiles"].astype(str).to_numpy()
    assert np.all(smiles[ptype != "drug"] == "")
    for name, info in truth["drugs"].items():
        assert set(smiles[pert == name]) == {info["smiles"]}
        assert info["ec50"].shape == (3,) and info["shifts"].shape == (3, 3, SMALL["n_genes"])
    # The control gets about three times as many cells as another condition (a drug at one dose
    # is one condition).
    counts = obs.groupby(["perturbation", "dose"], observed=True).size()
    assert counts[("ctrl", 0.0)] > 2 * counts.drop(("ctrl", 0.0)).max()


def test_no_effect_truth_is_zero(small):
    truth = small.uns["simulation"]
    for gene in truth["no_effect"]:
        assert np.all(truth["shifts"][gene] == 0)
    for gene in set(truth["singles"]) - set(truth["no_effect"]):
        idx = small.var_names.get_loc(gene)
        assert np.all(truth["shifts"][gene][:, idx] < -1.0)  # knocked down


def test_seed_reproducible():
    a = simulate(**SMALL, seed=7)
    b = simulate(**SMALL, seed=7)
    c = simulate(**SMALL, seed=8)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    for key, value in a.uns["simulation"]["shifts"].items():
        np.testing.assert_array_equal(value, b.uns["simulation"]["shifts"][key])
    assert a.X.shape == c.X.shape
    assert (a.X != c.X).nnz > 0


def test_cells_per_condition():
    adata = simulate(n_genes=100, n_single=3, n_pairs=1, cells_per_condition=30, seed=1)
    counts = adata.obs["perturbation"].value_counts()
    assert counts["ctrl"] == 90
    assert (counts.drop("ctrl") == 30).all()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_pairs"):
        simulate(n_genes=100, n_single=3, n_pairs=10, frac_no_effect=0.0)
    with pytest.raises(ValueError, match="frac_no_effect"):
        simulate(frac_no_effect=1.5)


def test_pair_interactions_recoverable(large_lognorm):
    adata = large_lognorm
    truth = adata.uns["simulation"]
    shifts = truth["shifts"]
    ctrl = adata.obs["perturbation"].to_numpy() == "ctrl"
    detected = adata.X[ctrl].mean(0) > 0.5
    errors: dict[str, list[float]] = {}
    for pair in truth["pairs"]:
        a, b = pair.split("+")
        # Shifts vs the control of the same cell type, averaged over cell types, on the
        # downstream genes that the truth moves (the knocked-down targets add up trivially).
        observed = _observed_shifts(adata, pair).mean(0)
        obs_a = _observed_shifts(adata, a).mean(0)
        obs_b = _observed_shifts(adata, b).mean(0)
        moved = np.zeros(adata.n_vars, dtype=bool)
        for key in (pair, a, b):
            moved |= np.abs(shifts[key].mean(0)) > 0.2
        moved[[adata.var_names.get_loc(a), adata.var_names.get_loc(b)]] = False
        moved &= detected  # log1p squeezes the shifts of barely detected genes
        observed, obs_a, obs_b = observed[moved], obs_a[moved], obs_b[moved]
        predicted = obs_a + obs_b
        # L2 error of the additive prediction relative to the size of the single shifts.
        scale = np.sqrt(np.sum(obs_a**2) + np.sum(obs_b**2))
        kind = truth["interactions"][pair]
        errors.setdefault(kind, []).append(np.linalg.norm(observed - predicted) / scale)
        if kind == "additive":
            assert np.corrcoef(observed, predicted)[0, 1] > 0.8
    assert set(errors) == {"additive", "synergistic", "buffering", "epistatic"}
    additive = max(errors["additive"])
    assert additive < 0.45
    others = [e for kind, errs in errors.items() if kind != "additive" for e in errs]
    assert np.median(others) > 1.2 * additive
    assert np.mean(others) > 1.5 * additive


def test_no_effect_indistinguishable_from_control(large_lognorm):
    adata = large_lognorm
    truth = adata.uns["simulation"]
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    for gene in truth["no_effect"]:
        for t in truth["cell_types"]:
            shift = _mean_shift(adata, gene, t)
            # Null: a random control subset of the same size against the other control cells.
            ctrl = np.flatnonzero((pert == "ctrl") & (ct == t))
            n = int(((pert == gene) & (ct == t)).sum())
            pick = rng.permutation(ctrl)
            null = adata.X[pick[:n]].mean(0) - adata.X[pick[n:]].mean(0)
            assert np.sqrt(np.mean(shift**2)) < 1.5 * np.sqrt(np.mean(null**2))
            assert np.abs(shift).max() < 0.6
    # Perturbations with an effect stand out clearly.
    effective = [g for g in truth["singles"] if g not in set(truth["no_effect"])]
    no_effect_max = max(np.abs(_observed_shifts(adata, g)).max() for g in truth["no_effect"])
    assert all(np.abs(_observed_shifts(adata, g)).max() > 2 * no_effect_max for g in effective)


def test_dose_response_monotone(large_lognorm):
    adata = large_lognorm
    truth = adata.uns["simulation"]
    assert len(truth["drugs"]) == 2
    for name, info in truth["drugs"].items():
        affected = np.abs(info["effect"]).max(0) > 0.2
        observed = [
            np.mean(
                [
                    np.abs(_mean_shift(adata, name, t, dose)[affected]).mean()
                    for t in truth["cell_types"]
                ]
            )
            for dose in truth["doses"]
        ]
        assert np.all(np.diff(observed) > 0), (name, observed)
        true = [np.abs(s[:, affected]).mean() for s in info["shifts"]]
        assert np.all(np.diff(true) > 0)


def test_h5ad_round_trip(small, tmp_path):
    path = tmp_path / "sim.h5ad"
    small.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != small.X).nnz == 0
    truth, back_truth = small.uns["simulation"], back.uns["simulation"]
    assert set(back_truth) == set(truth)
    for key, value in truth["shifts"].items():
        np.testing.assert_array_equal(back_truth["shifts"][key], value)
    assert dict(back_truth["interactions"]) == truth["interactions"]
    for name, info in truth["drugs"].items():
        np.testing.assert_allclose(back_truth["drugs"][name]["ec50"], info["ec50"])
        assert back_truth["drugs"][name]["smiles"] == info["smiles"]
    assert list(back_truth["no_effect"]) == list(truth["no_effect"])
    assert back_truth["params"]["seed"] == 3


def test_fast_enough():
    import time

    start = time.perf_counter()
    adata = simulate(n_cells=5000, n_genes=1000, seed=0)
    assert time.perf_counter() - start < 5.0
    assert adata.shape == (5000, 1000)
