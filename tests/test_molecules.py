"""Molecules and doses: the encoder's maths, RDKit features, setup checks and a trained model."""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scdoloris import DolorisModel
from scdoloris.datasets import simulate
from scdoloris.module import (
    DoseGate,
    MoleculeEncoder,
    PerturbationEncoder,
    dose_prior_weights,
    encode_dose,
)

TINY = {"n_hidden": 32, "n_layers": 1, "n_cond": 16, "n_mask_hidden": 16, "n_graph_hidden": 8}
DOSES = (0.01, 0.1, 1.0)


# ---------------------------------------------------------------- maths
def test_dose_scale_is_logarithmic_unit_free_and_zero_at_zero():
    d = torch.tensor([0.0, 10.0, 100.0, 1000.0, 10000.0])
    nm = encode_dose(d, 10.0, 10000.0)
    um = encode_dose(d / 1000, 0.01, 10.0)  # the same doses in another unit
    torch.testing.assert_close(nm, um)
    assert nm[0] == 0 and abs(float(nm[-1]) - 1.0) < 1e-6
    assert torch.all(nm[1:] > nm[:-1])


def test_dose_gate_multiplies_the_embedding_by_a_sigmoid_of_emb_and_dose():
    torch.manual_seed(0)
    gate = DoseGate(3, n_hidden=5)
    emb, dose = torch.randn(4, 3), torch.rand(4)
    expected = emb * torch.sigmoid(gate.mlp(torch.cat([emb, dose[:, None]], 1)))
    torch.testing.assert_close(gate(emb, dose), expected)
    assert torch.all(gate(torch.zeros(2, 3), torch.rand(2)) == 0)


def test_dose_prior_interpolates_between_training_doses_per_token():
    inf = float("inf")
    # token 0 at doses 0.2 and 0.6; token 1 at dose 0.5
    level_token = torch.tensor([0, 0, 1])
    level_dose = torch.tensor([[0.2, 0.0, 0.6], [0.6, 0.2, inf], [0.5, 0.0, inf]])
    vocab = torch.tensor([[0, -1], [0, -1], [1, -1], [-1, -1], [0, 1]])
    dose = torch.tensor([0.4, 0.1, 0.25, 0.4, 0.9])
    w = dose_prior_weights(vocab, dose, level_token, level_dose)
    expected = torch.tensor(
        [
            [0.5, 0.5, 0.0],  # halfway between token 0's levels
            [0.5, 0.0, 0.0],  # below the lowest level: towards 0 effect at dose 0
            [0.0, 0.0, 0.5],
            [0.0, 0.0, 0.0],  # a control
            [0.0, 1.0, 1.0],  # above the highest levels: held there; both tokens add up
        ]
    )
    torch.testing.assert_close(w, expected)


def test_molecule_encoder_standardises_features_and_skips_featureless_rows():
    enc = MoleculeEncoder(n_vocab=3, n_molecules=3, n_features=2, n_out=4)
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0]])
    enc.set_molecules(features, torch.tensor([True, True, False]), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(enc.feature_mean, torch.tensor([2.0, 1.0]))
    emb, featured = enc(torch.tensor([[0, 2, -1]]))
    assert featured.tolist() == [[True, False, False]]
    assert torch.all(emb[0, 1:] == 0)
    enc.set_extra_features(torch.tensor([[2.0, 1.0]]))  # a molecule new to the table
    emb, featured = enc(torch.tensor([[3]]))
    assert featured.tolist() == [[True]]
    torch.testing.assert_close(emb[0, 0], enc.mlp(torch.zeros(2)))
    enc.set_extra_features(None)
    assert "extra_features" not in enc.state_dict()


def test_a_combination_of_molecules_is_the_sum_of_their_gated_tokens():
    torch.manual_seed(0)
    mols = MoleculeEncoder(n_vocab=2, n_molecules=2, n_features=3, n_out=4)
    mols.set_molecules(torch.randn(2, 3), torch.ones(2, dtype=torch.bool), torch.tensor([0, 1]))
    enc = PerturbationEncoder(2, 2, 1, 2, n_out=4, n_hidden=8, molecules=mols).eval()
    enc.set_graph(torch.zeros(2, 1), torch.tensor([[0, 1], [0, 1]]), torch.tensor([0, 1]))
    no_node = torch.full((1, 1), -1)
    dose = torch.tensor([0.3])

    def embed(vocab):
        v = torch.tensor([vocab])
        return enc(v, no_node.expand_as(v), None, v, dose)

    torch.testing.assert_close(embed([0, 1]), embed([0]) + embed([1]))
    assert not torch.allclose(embed([0]), enc(torch.tensor([[0]]), no_node, None, None, None))


# ---------------------------------------------------------------- RDKit features
def test_morgan_fingerprints_differ_between_molecules():
    pytest.importorskip("rdkit")
    from scdoloris.molecules import is_smiles, morgan_fingerprints

    fp = morgan_fingerprints(["CCO", "c1ccccc1O"])
    assert fp.shape == (2, 2048) and list(fp.index) == ["CCO", "c1ccccc1O"]
    assert set(np.unique(fp.to_numpy())) <= {0.0, 1.0}
    assert not np.array_equal(fp.iloc[0].to_numpy(), fp.iloc[1].to_numpy())
    named = morgan_fingerprints({"ethanol": "CCO"}, radius=1, n_bits=64)
    assert named.shape == (1, 64) and list(named.index) == ["ethanol"]
    assert is_smiles("CCO") and not is_smiles("KLF1") and not is_smiles("B cells")
    with pytest.raises(ValueError, match="'not a smiles'.*not a valid SMILES"):
        morgan_fingerprints(["not a smiles"])


def test_morgan_without_rdkit_names_the_chem_extra(monkeypatch):
    from scdoloris.molecules import morgan_fingerprints

    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(ImportError, match=r"scdoloris\[chem\]"):
        morgan_fingerprints(["CCO"])
    adata = _smiles_screen()
    with pytest.raises(ImportError, match=r"scdoloris\[chem\]"):
        DolorisModel.setup_anndata(
            adata, perturbation_key="perturbation", molecule_features="morgan"
        )


# ---------------------------------------------------------------- setup (small data)
def _smiles_screen(n_per: int = 20, n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    """Log-normalised toy data: controls, two molecules written as SMILES at two doses."""
    rng = np.random.default_rng(seed)
    labels = ["ctrl"] * 2 * n_per + ["CCO"] * 2 * n_per + ["c1ccccc1O"] * 2 * n_per
    dose = np.tile(np.repeat([0.1, 1.0], n_per), 3) * (np.array(labels) != "ctrl")
    counts = rng.poisson(1.5, size=(len(labels), n_genes)).astype(np.float32)
    X = np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": labels, "dose": dose}, index=[f"c{i}" for i in range(len(labels))]
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


@pytest.mark.filterwarnings("ignore:.*trained:UserWarning")
def test_morgan_setup_featurises_smiles_tokens_and_new_smiles_at_prediction():
    pytest.importorskip("rdkit")
    adata = _smiles_screen()
    DolorisModel.setup_anndata(
        adata, perturbation_key="perturbation", dose_key="dose", molecule_features="morgan"
    )
    model = DolorisModel(adata, **TINY)
    assert sorted(model.molecule_names_) == ["CCO", "c1ccccc1O"]
    assert model.module_kwargs_["molecule_kwargs"]["n_features"] == 2048
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:5].copy()
    kwargs = {"n_steps": 2, "progress_bar": False}
    new = model.predict(ctrl, "CC(=O)O", dose=0.5, **kwargs)  # acetic acid: never seen
    seen = model.predict(ctrl, "CCO", dose=0.5, **kwargs)
    assert new.n_obs == 5 and not np.array_equal(new.X, seen.X)
    assert list(new.obs.columns[:3]) == ["perturbation", "dose", "cell_type"]


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        ({"dose_key": "dosis"}, KeyError, "dose_key='dosis'"),
        ({"dose_key": "label"}, TypeError, "must be numeric"),
        ({"molecule_features": "maccs"}, ValueError, "'maccs' is not understood"),
        ({"molecule_features": np.zeros((2, 3))}, TypeError, "pandas DataFrame"),
        (
            {"molecule_features": pd.DataFrame({"f": [1.0]}, index=["aspirin"])},
            ValueError,
            "No perturbation token is a row of molecule_features",
        ),
        (
            {"molecule_features": pd.DataFrame({"f": [1.0, np.nan]}, index=["CCO", "x"])},
            ValueError,
            r"non-finite values for molecules \['x'\]",
        ),
        (
            {"molecule_features": pd.DataFrame({"f": [1.0, 2.0]}, index=["CCO", "g1"])},
            ValueError,
            "both measured genes and rows of molecule_features",
        ),
    ],
)
def test_setup_refuses_bad_doses_and_molecule_features(setup, error, match):
    adata = _smiles_screen()
    adata.obs["label"] = "x"
    adata.obs.loc[adata.obs_names[0], "perturbation"] = "g1"  # a measured gene as a token
    with pytest.raises(error, match=match):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation", **setup)


@pytest.mark.parametrize(("value", "match"), [(-1.0, "negative"), (np.nan, "missing")])
def test_setup_refuses_negative_and_missing_doses(value, match):
    adata = _smiles_screen()
    adata.obs.iloc[3, 1] = value
    with pytest.raises(ValueError, match=match):
        DolorisModel.setup_anndata(adata, perturbation_key="perturbation", dose_key="dose")


def test_morgan_needs_smiles_tokens():
    pytest.importorskip("rdkit")
    adata = _smiles_screen()
    adata.obs["perturbation"] = adata.obs["perturbation"].map(
        {"ctrl": "ctrl", "CCO": "ethanol", "c1ccccc1O": "phenol"}
    )
    with pytest.raises(ValueError, match="no token parses as SMILES.*morgan_fingerprints"):
        DolorisModel.setup_anndata(
            adata, perturbation_key="perturbation", molecule_features="morgan"
        )


@pytest.mark.filterwarnings("ignore:.*trained:UserWarning")
def test_learned_molecules_cannot_reach_unseen_ones_and_say_so():
    adata = _smiles_screen()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", dose_key="dose")
    model = DolorisModel(adata, **TINY)
    assert model.molecule_names_ == ["CCO", "c1ccccc1O"]  # learned, dose-gated molecules
    assert model.module_kwargs_.get("molecule_kwargs", {}).get("n_features", 0) == 0
    ctrl = adata[:3].copy()
    with pytest.raises(ValueError, match="cannot predict a molecule it was not trained on"):
        model.predict(ctrl, "CC(=O)O", dose=0.1, progress_bar=False)
    with pytest.raises(ValueError, match="'CCO' has a molecule: pass its dose"):
        model.predict(ctrl, "CCO", progress_bar=False)
    with pytest.raises(ValueError, match=r"2 doses for 1 perturbations"):
        model.predict(ctrl, "CCO", dose=[0.1, 0.2], progress_bar=False)
    with pytest.raises(ValueError, match="finite and >= 0"):
        model.predict(ctrl, "CCO", dose=-0.1, progress_bar=False)


def test_a_molecule_at_dose_zero_in_training_is_a_control():
    adata = _smiles_screen()
    zero = adata.obs_names[(adata.obs["perturbation"] == "CCO").to_numpy()][:5]
    adata.obs.loc[zero, "dose"] = 0.0
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", dose_key="dose")
    model = DolorisModel(adata, **TINY)
    tokens = model._registered_tokens()
    is_zero = adata.obs_names.isin(zero)
    assert (tokens[is_zero] == -1).all() and (tokens[~is_zero & (adata.obs["dose"] > 0)] >= 0).any()
    assert model.dose_range_ == (0.1, 1.0)
    conditions = {c.split(" | ")[0] for c in model.mask_bank_["conditions"]}
    assert {"CCO @ 0.1", "CCO @ 1", "ctrl"} <= conditions


@pytest.mark.filterwarnings("ignore:.*trained:UserWarning")
def test_a_model_without_doses_refuses_a_dose():
    adata = _smiles_screen()
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation")
    model = DolorisModel(adata, **TINY)
    assert not model.has_doses and model.molecule_names_ == []  # names are learned tokens
    with pytest.raises(ValueError, match="has no doses"):
        model.predict(adata[:3].copy(), "CCO", dose=0.1, progress_bar=False)


# ---------------------------------------------------------------- a trained model (simulated)
@pytest.fixture(scope="module")
def drug_screen():
    """Simulated screen: 2 genes knocked out and 2 drugs at 3 doses, log-normalised."""
    import scanpy as sc

    adata = simulate(
        n_cells=1500, n_genes=100, n_cell_types=1, n_single=2, n_pairs=0, n_drugs=2, doses=DOSES
    )
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture(scope="module")
def drug_model(drug_screen):
    import scvi

    drugs = list(drug_screen.uns["simulation"]["drugs"])
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.normal(size=(3, 16)), index=[*drugs, "unseen_drug"])
    adata = drug_screen.copy()
    scvi.settings.seed = 0
    DolorisModel.setup_anndata(
        adata,
        perturbation_key="perturbation",
        cell_type_key="cell_type",
        dose_key="dose",
        molecule_features=features,
    )
    model = DolorisModel(adata, n_hidden=128, n_layers=2, n_cond=32, n_mask_hidden=64)
    model.train(max_steps=300, batch_size=128, enable_progress_bar=False)
    return model


def _controls(adata):
    return adata[adata.obs["perturbation"] == "ctrl"].copy()


def test_a_larger_dose_gives_a_larger_predicted_shift(drug_model, drug_screen):
    """The mean shift from control, along the drug's response (its real top-dose shift)."""
    ctrl = _controls(drug_screen)
    mean_ctrl = ctrl.X.toarray().mean(0)
    obs = drug_screen.obs
    for drug in drug_screen.uns["simulation"]["drugs"]:
        real = [
            drug_screen[(obs["perturbation"] == drug) & (obs["dose"] == d)].X.toarray().mean(0)
            - mean_ctrl
            for d in DOSES
        ]
        response = real[-1] / np.linalg.norm(real[-1])
        assert real[0] @ response < real[1] @ response < real[2] @ response  # the data's premise
        table = pd.DataFrame({"perturbation": drug, "dose": DOSES})
        # the model's own dose response (the calibration may lean on a baseline)
        pred = drug_model.predict(ctrl, table, n_steps=20, progress_bar=False, calibrate=False)
        shift = [(pred[pred.obs["dose"] == d].X.mean(0) - mean_ctrl) @ response for d in DOSES]
        assert shift[0] < shift[1] < shift[2], (drug, shift)
        assert shift[2] > 0.5 * (real[2] @ response)


def test_dose_zero_is_the_control(drug_model, drug_screen):
    ctrl = _controls(drug_screen)[:30]
    drug = next(iter(drug_screen.uns["simulation"]["drugs"]))
    zero = drug_model.predict(ctrl, drug, dose=0.0, n_steps=5, seed=1, progress_bar=False)
    control = drug_model.predict(ctrl, "ctrl", n_steps=5, seed=1, progress_bar=False)
    np.testing.assert_array_equal(zero.X, control.X)


def test_table_of_conditions_gives_one_anndata_in_row_order(drug_model, drug_screen):
    ctrl = _controls(drug_screen)[:20]
    drug_a, drug_b = list(drug_screen.uns["simulation"]["drugs"])
    gene = drug_screen.uns["simulation"]["singles"][0]
    table = pd.DataFrame(
        {
            "perturbation": [drug_a, f"{drug_a}+{drug_b}", gene, f"{gene}+{drug_b}", "unseen_drug"],
            "dose": [0.1, 0.5, np.nan, 1.0, 0.2],
            "cell_type": ["type_0"] * 5,
        }
    )
    pred = drug_model.predict(ctrl, table, n_steps=5, progress_bar=False)
    assert pred.n_obs == 5 * ctrl.n_obs
    assert list(pred.obs.columns) == [
        "perturbation",
        "dose",
        "cell_type",
        "control_cell",
        "predicted",
    ]
    blocks = pred.obs["perturbation"].astype(str).to_numpy().reshape(5, -1)[:, 0]
    assert list(blocks) == [
        drug_a,
        "+".join(sorted([drug_a, drug_b])),
        gene,
        "+".join(sorted([gene, drug_b])),
        "unseen_drug",
    ]
    doses = pred.obs["dose"].to_numpy().reshape(5, -1)[:, 0]
    np.testing.assert_array_equal(np.isnan(doses), [False, False, True, False, False])
    assert pred.obs_names.is_unique and list(pred.obs["cell_type"].unique()) == ["type_0"]
    single = drug_model.predict(ctrl, drug_a, dose=0.1, n_steps=5, progress_bar=False)
    np.testing.assert_array_equal(pred.X[: ctrl.n_obs], single.X)
    with pytest.raises(ValueError, match="'perturbation' column"):
        drug_model.predict(ctrl, table.rename(columns={"perturbation": "drug"}))


def test_molecules_new_to_the_model_need_features(drug_model, drug_screen):
    ctrl = _controls(drug_screen)[:10]
    with pytest.raises(ValueError, match="Unknown perturbation token 'aspirin'.*needs features"):
        drug_model.predict(ctrl, "aspirin", dose=0.1, progress_bar=False)
    extra = pd.DataFrame(np.ones((1, 16)), index=["aspirin"])
    pred = drug_model.predict(
        ctrl, "aspirin", dose=0.1, molecule_features=extra, n_steps=3, progress_bar=False
    )
    assert pred.n_obs == 10
    with pytest.raises(ValueError, match="the model's molecules have 16"):
        drug_model.predict(
            ctrl, "aspirin", dose=0.1, molecule_features=extra.iloc[:, :3], progress_bar=False
        )


def test_save_load_keeps_molecules_and_doses(drug_model, drug_screen, tmp_path):
    ctrl = _controls(drug_screen)[:15]
    drug = next(iter(drug_screen.uns["simulation"]["drugs"]))
    drug_model.save(tmp_path / "m")
    loaded = DolorisModel.load(tmp_path / "m")
    assert loaded.has_doses and loaded.molecule_names_ == drug_model.molecule_names_
    for pert in (drug, "unseen_drug"):
        a = drug_model.predict(ctrl, pert, dose=0.3, n_steps=5, seed=4, progress_bar=False)
        b = loaded.predict(ctrl, pert, dose=0.3, n_steps=5, seed=4, progress_bar=False)
        np.testing.assert_array_equal(a.X, b.X)
