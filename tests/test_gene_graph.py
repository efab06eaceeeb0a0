"""The gene-graph pass on the batch's subgraph equals the pass over the whole graph (issue #9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scdoloris.module import PerturbationEncoder


def random_encoder(seed: int = 0, n_nodes: int = 40, n_edges: int = 90) -> PerturbationEncoder:
    """An encoder on a random DIRECTED graph (self loops on all nodes), some nodes featureless."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    src = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    dst = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    loops = torch.arange(n_nodes)
    edges = torch.stack([torch.cat([src, loops]), torch.cat([dst, loops])])
    features = torch.randn(n_nodes, 5, generator=gen)
    features[-4:] = 0  # nodes without features (e.g. unmeasured perturbation tokens)
    enc = PerturbationEncoder(
        n_vocab=6, n_nodes=n_nodes, n_node_features=5, n_edges=edges.shape[1], n_out=8, n_hidden=8
    )
    enc.set_graph(features, edges, torch.tensor([0, 3, 7, 21, n_nodes - 1, -1]))
    return enc.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subgraph_pass_equals_full_pass_for_the_referenced_nodes(seed):
    enc = random_encoder(seed)
    node_idx = torch.tensor([[3, 7, -1], [21, -1, -1], [39, 3, -1], [-1, -1, -1]])
    vocab_idx = torch.tensor([[1, 2, -1], [3, -1, -1], [4, 1, -1], [-1, -1, -1]])
    needed = torch.tensor([3, 7, 21, 39])
    full = enc.node_embeddings()
    sub = enc.node_embeddings(node_idx)
    torch.testing.assert_close(sub[needed], full[needed], rtol=1e-5, atol=1e-6)
    others = torch.ones(full.shape[0], dtype=torch.bool)
    others[needed] = False
    assert bool((sub[others] == 0).all())
    torch.testing.assert_close(
        enc(vocab_idx, node_idx, sub), enc(vocab_idx, node_idx, full), rtol=1e-5, atol=1e-6
    )
    # the gradients of the graph network's weights agree too (the training path)
    grads = []
    for nodes_fn in (lambda: enc.node_embeddings(), lambda: enc.node_embeddings(node_idx)):
        enc.zero_grad(set_to_none=True)
        enc(vocab_idx, node_idx, nodes_fn()).square().sum().backward()
        grads.append([p.grad.clone() for p in enc.graph.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_nodes_beyond_two_hops_do_not_matter_and_no_node_means_no_pass():
    # a chain 0 -> 1 -> 2 -> 3 -> 4 with self loops: node 4 depends on nodes 2, 3 and 4 only
    enc = PerturbationEncoder(1, n_nodes=5, n_node_features=2, n_edges=9, n_out=4, n_hidden=8)
    edges = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4], [1, 2, 3, 4, 0, 1, 2, 3, 4]])
    features = torch.randn(5, 2)
    enc.set_graph(features, edges, torch.tensor([4]))
    node_idx = torch.tensor([[4]])
    before = enc.node_embeddings(node_idx)[4]
    features[:2] = torch.randn(2, 2) + 5.0
    enc.set_graph(features, edges, torch.tensor([4]))
    torch.testing.assert_close(enc.node_embeddings(node_idx)[4], before)
    torch.testing.assert_close(enc.node_embeddings()[4], before, rtol=1e-5, atol=1e-6)
    assert enc.node_embeddings(torch.tensor([[-1]])) is None


def test_training_loss_and_prediction_equal_the_full_graph_pass(monkeypatch, tiny_simulated_model):
    adata, model = tiny_simulated_model(n_cells=150, n_genes=40)
    model._fill_control_bank()
    module = model.module
    module.train()
    tensors = next(iter(model._make_data_loader(adata=adata, batch_size=32, shuffle=False)))
    encoders = [module.condition.perturbation, module.mask_condition.perturbation]

    def loss_and_grads():
        torch.manual_seed(0)
        module.zero_grad(set_to_none=True)
        _, _, loss = module(tensors)
        loss.loss.backward()
        grads = [p.grad.clone() for enc in encoders for p in enc.graph.parameters()]
        return loss.loss.detach(), grads

    model.is_trained_ = True
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:20].copy()
    pert = next(p for p in adata.obs["perturbation"].unique() if p != "ctrl")
    kw = {"n_steps": 2, "progress_bar": False, "return_probabilities": True}

    subgraph_loss, subgraph_grads = loss_and_grads()
    subgraph_pred = model.predict(ctrl, pert, **kw)
    module.train()
    for enc in encoders:  # the whole graph, whatever the batch references
        full = enc.node_embeddings
        monkeypatch.setattr(enc, "node_embeddings", lambda node_idx=None, full=full: full())
    full_loss, full_grads = loss_and_grads()
    full_pred = model.predict(ctrl, pert, **kw)
    torch.testing.assert_close(subgraph_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in full_grads)
    for a, b in zip(subgraph_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(subgraph_pred.X, full_pred.X, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        subgraph_pred.layers["expression_probability"],
        full_pred.layers["expression_probability"],
        rtol=1e-4,
        atol=1e-6,
    )
