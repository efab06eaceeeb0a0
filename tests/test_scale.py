"""Large inputs: prediction reads sparse and backed inputs in batches, same result (issue #9)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from scdoloris import DolorisModel, ablations
from scdoloris.datasets import simulate


@pytest.fixture(scope="module")
def tiny():
    adata = simulate(n_cells=200, n_genes=60, seed=0)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    DolorisModel.setup_anndata(adata, perturbation_key="perturbation", control_group="ctrl")
    model = DolorisModel(
        adata, n_hidden=16, n_layers=1, n_cond=8, n_graph_hidden=8, n_mask_hidden=8
    )
    model.train(max_epochs=1, max_steps=2, batch_size=32, enable_progress_bar=False)
    ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()
    pert = next(p for p in adata.obs["perturbation"].unique() if p != "ctrl")
    return model, ctrl, pert


@pytest.mark.parametrize("mask", ["coupled", "coherent", "bernoulli"])
def test_predict_sparse_backed_dense_agree(tiny, tmp_path, mask):
    model, ctrl, pert = tiny
    kw = {"n_steps": 2, "batch_size": 7, "progress_bar": False}
    dense = ctrl.copy()
    dense.X = ctrl.X.toarray()
    path = tmp_path / "ctrl.h5ad"
    ctrl.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with ablations.variant(mask=mask).applied(model):  # "coupled" is the method's
        ref = model.predict(dense, [pert, "ctrl"], return_probabilities=True, **kw)
        out = model.predict(ctrl, [pert, "ctrl"], return_probabilities=True, **kw)
        from_disk = model.predict(backed, [pert, "ctrl"], **kw)
    np.testing.assert_array_equal(out.X, ref.X)
    np.testing.assert_array_equal(
        out.layers["expression_probability"], ref.layers["expression_probability"]
    )
    np.testing.assert_array_equal(from_disk.X, ref.X)
    assert ref.n_obs == 2 * ctrl.n_obs


def test_denoiser_split_input_equals_the_concatenated_layer():
    import torch

    from scdoloris.module._denoiser import Denoiser, sinusoidal_embedding

    torch.manual_seed(0)
    net = Denoiser(n_genes=7, n_hidden=16, n_layers=2, n_cond=3, n_heads=2)
    x, c = torch.randn(5, 7), torch.rand(5, 7)
    t, cond = torch.tensor([3, 3, 9, 3, 9]), torch.randn(5, 3)

    def reference(control):
        h = net.input(torch.cat([x, control], -1))
        emb = net.time_mlp(sinusoidal_embedding(t, 16)) + net.cond_proj(cond)
        for block in net.blocks:
            h = block(h, emb)
        return net.heads[1](torch.nn.functional.silu(net.out_norm(h)))

    with torch.no_grad():
        expected = reference(c)
        torch.testing.assert_close(net(x, c, t, cond, head=1), expected)
        proj = net.project_control(c)
        torch.testing.assert_close(net(x, c, t, cond, head=1, control_proj=proj), expected)
        torch.testing.assert_close(net(x, None, t, cond, head=1), reference(torch.zeros_like(c)))
