"""The public data loaders, on small fake data sets with the columns of the real ones.

No download and no pertpy import: a fake ``pertpy`` module is put in ``sys.modules``.
"""

from __future__ import annotations

import sys
import types

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scdoloris.datasets import adamson_2016, norman_2019, srivatsan_2020_sciplex3
from scdoloris.datasets._loaders import (
    _harmonise_adamson,
    _harmonise_norman,
    _harmonise_sciplex3,
    _is_integral,
)

SCHEMA = ["perturbation", "cell_type", "dose", "smiles"]


def _counts(n_obs: int, n_vars: int = 6, seed: int = 0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    return sparse.csr_matrix(rng.poisson(2.0, size=(n_obs, n_vars)).astype(np.float32))


def _adata(obs: dict, counts: bool = True) -> ad.AnnData:
    obs_df = pd.DataFrame(obs, index=[f"cell{i}" for i in range(len(next(iter(obs.values()))))])
    x = _counts(len(obs_df))
    adata = ad.AnnData(x, obs=obs_df)
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    if not counts:  # pertpy's processed Norman: log-normalised X, counts in a layer
        adata.layers["counts"] = x.copy()
        adata.X = x.log1p() * 1.3
    return adata


def fake_norman() -> ad.AnnData:
    """pertpy.data.norman_2019: "perturbation_name" ("control", "A+B") plus the raw guide columns."""
    return _adata(
        {
            "guide_identity": [
                "NegCtrl10_NegCtrl0__NegCtrl10_NegCtrl0",
                "KLF1_NegCtrl0__KLF1_NegCtrl0",
                "KLF1_MAP2K6__KLF1_MAP2K6",
                "MAP2K6_KLF1__MAP2K6_KLF1",
                "CEBPE_RUNX1T1__CEBPE_RUNX1T1",
                "NegCtrl0_CEBPE__NegCtrl0_CEBPE",
            ],
            "guide_ids": ["", "KLF1", "KLF1,MAP2K6", "KLF1,MAP2K6", "CEBPE,RUNX1T1", "CEBPE"],
            "guide_merged": [
                "ctrl",
                "KLF1+ctrl",
                "KLF1+MAP2K6",
                "MAP2K6+KLF1",
                "CEBPE+RUNX1T1",
                "ctrl+CEBPE",
            ],
            "perturbation_name": pd.Categorical(
                ["control", "KLF1", "KLF1+MAP2K6", "MAP2K6+KLF1", "CEBPE+RUNX1T1", "CEBPE"]
            ),
            "gemgroup": [1, 1, 2, 2, 3, 3],
            "good_coverage": [True] * 6,
            "gene_program": ["Ctrl", "Pro-growth", "Pro-growth", "Pro-growth", "Granulocyte", "G"],
        },
        counts=False,
    )


def fake_adamson() -> ad.AnnData:
    """pertpy.data.adamson_2016_upr_perturb_seq: scPerturb layout, guide-level "perturbation"."""
    return _adata(
        {
            "perturbation": [
                "62(mod)_pBA581",
                "63(mod)_pBA580",
                "Gal4-4(mod)_pBA582",
                "DDIT3_pDS263",
                "SPI1_pDS255",
                "*",
                np.nan,
                "DDIT3_pDS264",
            ],
            "read count": np.arange(8, dtype=float) * 10,
            "UMI count": np.arange(8, dtype=float),
            "tissue_type": ["cell_line"] * 8,
            "cell_line": ["K562"] * 8,
            "celltype": ["lymphoblasts"] * 8,
            "perturbation_type": ["CRISPR"] * 8,
            "organism": ["human"] * 8,
        }
    )


def fake_sciplex3(unit: str | list[str] = "nM") -> ad.AnnData:
    """pertpy.data.srivatsan_2020_sciplex3: scPerturb layout ("perturbation", "dose_value")."""
    return _adata(
        {
            "perturbation": pd.Categorical(
                [
                    "control",
                    "(+)-JQ1",
                    "Dacinostat (LAQ824)",
                    "Dacinostat (LAQ824)",
                    "control",
                    "Tanespimycin (17-AAG)",
                ]
            ),
            "dose_value": [0.0, 10.0, 100.0, 10000.0, 0.0, 1000.0],
            "dose_unit": unit,
            "cell_line": ["A549", "K562", "MCF7", "A549", "MCF7", "K562"],
            "celltype": ["alveolar basal epithelial cells", "lymphoblasts"] * 3,
            "time": [24.0] * 6,
            "replicate": ["rep1", "rep2"] * 3,
            "perturbation_type": ["drug"] * 6,
        }
    )


def _snapshot(adata: ad.AnnData) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    return adata.obs.copy(), adata.X.toarray().copy(), list(adata.uns.keys())


def _assert_unchanged(adata: ad.AnnData, snapshot) -> None:
    obs, x, uns_keys = snapshot
    pd.testing.assert_frame_equal(adata.obs, obs)
    np.testing.assert_array_equal(adata.X.toarray(), x)
    assert list(adata.uns.keys()) == uns_keys


def _assert_schema(adata: ad.AnnData) -> None:
    for column in SCHEMA:
        assert column in adata.obs.columns
    assert adata.obs["dose"].dtype == np.float64
    for column in ("perturbation", "cell_type", "smiles"):
        assert all(isinstance(v, str) for v in adata.obs[column].astype(str))
    assert "scdoloris_dataset" in adata.uns


@pytest.fixture
def fake_pertpy(monkeypatch):
    """A fake pertpy in sys.modules whose loaders return the fake data sets and log their calls."""
    calls: list[tuple[str, dict]] = []

    def loader(name, factory):
        def load(**kwargs):
            calls.append((name, kwargs))
            return factory()

        return load

    data = types.ModuleType("pertpy.data")
    data.norman_2019 = loader("norman_2019", fake_norman)
    data.adamson_2016_upr_perturb_seq = loader("adamson_2016_upr_perturb_seq", fake_adamson)
    data.srivatsan_2020_sciplex3 = loader("srivatsan_2020_sciplex3", fake_sciplex3)
    module = types.ModuleType("pertpy")
    module.data = data
    monkeypatch.setitem(sys.modules, "pertpy", module)
    return calls


# ---- Norman ------------------------------------------------------------------------------------
def test_norman_loader_schema(fake_pertpy):
    adata = norman_2019()
    assert fake_pertpy == [("norman_2019", {})]
    _assert_schema(adata)
    assert adata.obs["perturbation"].astype(str).tolist() == [
        "ctrl",
        "KLF1",
        "KLF1+MAP2K6",
        "KLF1+MAP2K6",
        "CEBPE+RUNX1T1",
        "CEBPE",
    ]
    assert set(adata.obs["cell_type"].astype(str)) == {"K562"}
    assert (adata.obs["dose"] == 0.0).all()
    assert set(adata.obs["smiles"].astype(str)) == {""}
    record = adata.uns["scdoloris_dataset"]
    assert record["name"] == "norman_2019"
    assert record["source"] == "pertpy.data.norman_2019"
    assert record["X_is_raw_counts"] is False
    assert record["counts_layer"] == "counts"
    assert record["columns"]["perturbation"] == "perturbation_name"
    assert record["control_labels"] == ["control"]
    assert record["n_cells_dropped"] == 0
    # The original columns are all kept.
    for column in ("perturbation_name", "guide_ids", "guide_merged", "guide_identity", "gemgroup"):
        assert column in adata.obs.columns


def test_norman_loader_passes_kwargs(fake_pertpy):
    norman_2019(some_option=3)
    assert fake_pertpy == [("norman_2019", {"some_option": 3})]


def test_harmonise_norman_does_not_modify_input():
    adata = fake_norman()
    snapshot = _snapshot(adata)
    out = _harmonise_norman(adata)
    _assert_unchanged(adata, snapshot)
    assert "perturbation" not in adata.obs.columns
    assert out is not adata


@pytest.mark.parametrize("column", ["guide_ids", "guide_merged"])
def test_harmonise_norman_other_label_columns(column):
    full = fake_norman()
    adata = ad.AnnData(full.X, obs=full.obs[[column, "gemgroup"]].copy())
    out = _harmonise_norman(adata)
    assert out.obs["perturbation"].astype(str).tolist() == [
        "ctrl",
        "KLF1",
        "KLF1+MAP2K6",
        "KLF1+MAP2K6",
        "CEBPE+RUNX1T1",
        "CEBPE",
    ]
    assert out.uns["scdoloris_dataset"]["columns"]["perturbation"] == column


def test_harmonise_norman_scperturb_layout_keeps_original_column():
    adata = _adata(
        {
            "perturbation": ["control", "CBL_UBASH3A", "UBASH3A_CBL", "KLF1"],
            "cell_line": ["K562"] * 4,
            "celltype": ["lymphoblasts"] * 4,
        }
    )
    out = _harmonise_norman(adata)
    assert out.obs["perturbation"].astype(str).tolist() == [
        "ctrl",
        "CBL+UBASH3A",
        "CBL+UBASH3A",
        "KLF1",
    ]
    assert out.obs["perturbation_original"].tolist() == adata.obs["perturbation"].tolist()
    assert out.uns["scdoloris_dataset"]["preserved_columns"] == {
        "perturbation": "perturbation_original"
    }
    assert out.uns["scdoloris_dataset"]["columns"]["cell_type"] == "cell_line"
    assert out.uns["scdoloris_dataset"]["X_is_raw_counts"] is True
    assert out.uns["scdoloris_dataset"]["counts_layer"] == ""


def test_harmonise_norman_missing_column_lists_columns():
    adata = _adata({"guide_identity": ["A_B__A_B"], "gemgroup": [1]})
    with pytest.raises(KeyError, match="perturbation_name") as info:
        _harmonise_norman(adata)
    assert "guide_identity" in str(info.value) and "gemgroup" in str(info.value)


# ---- Adamson -----------------------------------------------------------------------------------
def test_adamson_loader_schema(fake_pertpy):
    adata = adamson_2016()
    assert fake_pertpy == [("adamson_2016_upr_perturb_seq", {})]
    _assert_schema(adata)
    # "*" and the missing label are dropped.
    assert adata.n_obs == 6
    assert adata.obs["perturbation"].astype(str).tolist() == [
        "ctrl",
        "ctrl",
        "ctrl",
        "DDIT3",
        "SPI1",
        "DDIT3",
    ]
    assert adata.obs["perturbation_original"].tolist() == [
        "62(mod)_pBA581",
        "63(mod)_pBA580",
        "Gal4-4(mod)_pBA582",
        "DDIT3_pDS263",
        "SPI1_pDS255",
        "DDIT3_pDS264",
    ]
    assert set(adata.obs["cell_type"].astype(str)) == {"K562"}
    assert (adata.obs["dose"] == 0.0).all()
    assert set(adata.obs["smiles"].astype(str)) == {""}
    record = adata.uns["scdoloris_dataset"]
    assert record["name"] == "adamson_2016"
    assert record["source"] == "pertpy.data.adamson_2016_upr_perturb_seq"
    assert record["X_is_raw_counts"] is True
    assert record["columns"] == {
        "perturbation": "perturbation",
        "cell_type": "cell_line",
        "dose": "",
        "smiles": "",
    }
    assert record["control_labels"] == ["62(mod)_pBA581", "63(mod)_pBA580", "Gal4-4(mod)_pBA582"]
    assert record["n_cells_dropped"] == 2
    assert record["dropped_labels"] == ["*", "<missing>"]
    for column in ("read count", "UMI count", "celltype", "organism"):
        assert column in adata.obs.columns


def test_harmonise_adamson_does_not_modify_input():
    adata = fake_adamson()
    snapshot = _snapshot(adata)
    out = _harmonise_adamson(adata)
    _assert_unchanged(adata, snapshot)
    assert out.n_obs == 6 and adata.n_obs == 8


def test_harmonise_adamson_geo_layout_without_cell_line():
    adata = _adata({"guide identity": ["ATF6_pMJ144-2", "62(mod)_pBA581", "ERN1_pDS123"]})
    out = _harmonise_adamson(adata)
    assert out.obs["perturbation"].astype(str).tolist() == ["ATF6", "ctrl", "ERN1"]
    assert set(out.obs["cell_type"].astype(str)) == {"K562"}
    assert out.uns["scdoloris_dataset"]["columns"]["perturbation"] == "guide identity"


# ---- sci-Plex 3 --------------------------------------------------------------------------------
def test_sciplex3_loader_schema(fake_pertpy):
    adata = srivatsan_2020_sciplex3()
    assert fake_pertpy == [("srivatsan_2020_sciplex3", {})]
    _assert_schema(adata)
    assert adata.obs["perturbation"].astype(str).tolist() == [
        "ctrl",
        "(plus)-JQ1",
        "Dacinostat (LAQ824)",
        "Dacinostat (LAQ824)",
        "ctrl",
        "Tanespimycin (17-AAG)",
    ]
    assert adata.obs["cell_type"].astype(str).tolist() == [
        "A549",
        "K562",
        "MCF7",
        "A549",
        "MCF7",
        "K562",
    ]
    np.testing.assert_array_equal(adata.obs["dose"], [0.0, 10.0, 100.0, 10000.0, 0.0, 1000.0])
    assert set(adata.obs["smiles"].astype(str)) == {""}
    record = adata.uns["scdoloris_dataset"]
    assert record["name"] == "srivatsan_2020_sciplex3"
    assert record["source"] == "pertpy.data.srivatsan_2020_sciplex3"
    assert record["dose_unit"] == "nM"
    assert record["X_is_raw_counts"] is True
    assert record["columns"] == {
        "perturbation": "perturbation",
        "cell_type": "cell_line",
        "dose": "dose_value",
        "smiles": "",
    }
    assert record["control_labels"] == ["control"]
    assert record["renamed_perturbations"] == {"(+)-JQ1": "(plus)-JQ1"}
    assert record["drugs_without_smiles"] == [
        "(plus)-JQ1",
        "Dacinostat (LAQ824)",
        "Tanespimycin (17-AAG)",
    ]
    assert record["preserved_columns"] == {"perturbation": "perturbation_original"}
    for column in ("perturbation_original", "dose_value", "dose_unit", "celltype", "time"):
        assert column in adata.obs.columns


def test_sciplex3_loader_smiles_mapping(fake_pertpy):
    smiles = {
        "(+)-JQ1": "CC1=C(SC2=C1C(=NC(C3=NN=C(N32)C)CC(=O)OC(C)(C)C)C4=CC=C(C=C4)Cl)C",
        "Dacinostat (LAQ824)": "C1=CC=C2C(=C1)C(=CN2)CCN(CCO)CC3=CC=C(C=C3)C=CC(=O)NO",
        "control": "CS(C)=O",  # the vehicle keeps "" whatever the mapping says
    }
    adata = srivatsan_2020_sciplex3(smiles=smiles)
    got = adata.obs["smiles"].astype(str).tolist()
    assert got[0] == got[4] == ""
    assert got[1] == smiles["(+)-JQ1"]  # found under the original name
    assert got[2] == got[3] == smiles["Dacinostat (LAQ824)"]
    assert got[5] == ""
    assert adata.uns["scdoloris_dataset"]["drugs_without_smiles"] == ["Tanespimycin (17-AAG)"]


def test_harmonise_sciplex3_raw_layout_with_smiles_column():
    adata = _adata(
        {
            "product_name": ["Vehicle", "DMSO", "Belinostat (PXD101)", "Belinostat (PXD101)"],
            "dose": ["0", "0", "10", "10000"],
            "cell_type": ["A549", "A549", "MCF7", "K562"],
            "SMILES": ["CS(C)=O", "CS(C)=O", "O=C(/C=C/c1cccc(S(=O)(=O)Nc2ccccc2)c1)NO", np.nan],
        }
    )
    snapshot = _snapshot(adata)
    out = _harmonise_sciplex3(adata)
    _assert_unchanged(adata, snapshot)
    assert out.obs["perturbation"].astype(str).tolist() == [
        "ctrl",
        "ctrl",
        "Belinostat (PXD101)",
        "Belinostat (PXD101)",
    ]
    np.testing.assert_array_equal(out.obs["dose"], [0.0, 0.0, 10.0, 10000.0])
    assert out.obs["smiles"].astype(str).tolist() == [
        "",
        "",
        "O=C(/C=C/c1cccc(S(=O)(=O)Nc2ccccc2)c1)NO",
        "",
    ]
    record = out.uns["scdoloris_dataset"]
    assert record["control_labels"] == ["DMSO", "Vehicle"]
    assert record["dose_unit"] == ""
    assert record["columns"]["smiles"] == "SMILES"
    # Original columns that share a schema name are kept under "<name>_original".
    assert record["preserved_columns"] == {
        "cell_type": "cell_type_original",
        "dose": "dose_original",
    }
    assert out.obs["dose_original"].tolist() == ["0", "0", "10", "10000"]


def test_harmonise_sciplex3_mixed_units_raise():
    adata = fake_sciplex3(unit=["nM", "nM", "uM", "nM", "nM", "nM"])
    with pytest.raises(ValueError, match="mixes dose units"):
        _harmonise_sciplex3(adata)


def test_harmonise_sciplex3_missing_dose_column_lists_columns():
    adata = _adata({"perturbation": ["control", "X"], "cell_line": ["A549", "A549"]})
    with pytest.raises(KeyError, match="dose_value") as info:
        _harmonise_sciplex3(adata)
    assert "cell_line" in str(info.value)


# ---- shared ------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [norman_2019, adamson_2016, srivatsan_2020_sciplex3])
def test_missing_pertpy_raises_install_hint(monkeypatch, loader):
    monkeypatch.setitem(sys.modules, "pertpy", None)
    with pytest.raises(ImportError, match=r'pip install pertpy "statsmodels<0\.15"'):
        loader()


def test_loaded_data_round_trips_through_h5ad(fake_pertpy, tmp_path):
    for i, loader in enumerate([norman_2019, adamson_2016, srivatsan_2020_sciplex3]):
        adata = loader()
        path = tmp_path / f"d{i}.h5ad"
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
        assert (
            back.obs["perturbation"].astype(str).tolist()
            == adata.obs["perturbation"].astype(str).tolist()
        )
        assert back.uns["scdoloris_dataset"]["name"] == adata.uns["scdoloris_dataset"]["name"]


def test_is_integral():
    assert _is_integral(np.array([[0, 3], [1, 2]]))
    assert _is_integral(sparse.csr_matrix(np.array([[0.0, 3.0], [1.0, 0.0]])))
    assert not _is_integral(np.array([[0.5, 3.0]]))
    assert not _is_integral(np.array([[-1.0, 3.0]]))
    assert not _is_integral(np.array([[np.nan, 3.0]]))
