"""The gene graph: co-expression edges, data-derived gene embeddings and graph attention."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import GATConv


def coexpression_edges(X: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Edges between genes whose absolute Pearson correlation exceeds ``threshold``.

    Parameters
    ----------
    X
        Cells x genes (dense), e.g. the control cells.
    threshold
        Minimum ``|r|`` for an edge. Self loops are always kept; constant genes only get theirs.

    Returns
    -------
    An ``(2, n_edges)`` int64 array of (source, target) gene indices, both directions.

    Examples
    --------
    >>> X = np.array([[0.0, 0.0, 1.0], [1.0, 2.0, 1.0], [2.0, 4.1, 1.0]])
    >>> coexpression_edges(X).T.tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1], [2, 2]]
    """
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(0)
    norm = np.sqrt((Xc**2).sum(0))
    ok = norm > 0
    Z = np.zeros_like(Xc)
    Z[:, ok] = Xc[:, ok] / norm[ok]
    r = Z.T @ Z
    adj = np.abs(r) > threshold
    np.fill_diagonal(adj, True)
    return np.stack(np.nonzero(adj)).astype(np.int64)


def pca_gene_embedding(condition_means: np.ndarray, n_components: int = 32) -> np.ndarray:
    """Gene embeddings from a PCA over conditions of pseudo-bulk expression.

    Parameters
    ----------
    condition_means
        Conditions x genes: the mean expression of each training condition.
    n_components
        Embedding width K; columns beyond the rank of the data are zero.

    Returns
    -------
    Genes x K, scaled so that the largest absolute value is 1.

    Examples
    --------
    >>> pca_gene_embedding(np.array([[0.0, 1.0], [1.0, 0.0]]), 3).shape
    (2, 3)
    """
    C = np.asarray(condition_means, dtype=np.float64)
    C = C - C.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(C, full_matrices=False)
    k = min(n_components, len(s))
    emb = np.zeros((C.shape[1], n_components))
    emb[:, :k] = vt[:k].T * s[:k]
    scale = np.abs(emb).max()
    return (emb / scale if scale > 0 else emb).astype(np.float32)


class GATLayers(nn.Module):
    """Two graph-attention layers (``heads`` heads, concatenated), each with LayerNorm and ReLU.

    The stack of both graph networks: the perturbation encoder's
    (:class:`GeneGraphEncoder`) and the graph mask network's, which adds each layer's output to
    its input (``residual=True``).

    Examples
    --------
    >>> layers = GATLayers(8)
    >>> layers(torch.randn(3, 8), torch.tensor([[0, 1, 2], [0, 1, 2]])).shape
    torch.Size([3, 8])
    """

    def __init__(self, n_hidden: int, heads: int = 2, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.gat1 = GATConv(n_hidden, n_hidden // heads, heads=heads, add_self_loops=False)
        self.norm1 = nn.LayerNorm(n_hidden)
        self.gat2 = GATConv(n_hidden, n_hidden // heads, heads=heads, add_self_loops=False)
        self.norm2 = nn.LayerNorm(n_hidden)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for gat, norm in ((self.gat1, self.norm1), (self.gat2, self.norm2)):
            out = torch.relu(norm(gat(h, edge_index)))
            h = h + out if self.residual else out
        return h


class GeneGraphEncoder(nn.Module):
    """A linear input layer and :class:`GATLayers` over the gene graph.

    Node features are the genes' fixed features (data-derived PCA embedding, user embeddings);
    the output is one vector per node. It does not depend on the cell, so it runs once per
    training step (or prediction batch), never once per cell. A node's output depends only on
    its ``n_hops``-hop in-neighbourhood (messages flow from ``edge_index[0]`` to
    ``edge_index[1]``), so the nodes a batch needs can be computed on that subgraph alone
    (:meth:`~scdoloris.module.PerturbationEncoder.node_embeddings`).

    Examples
    --------
    >>> enc = GeneGraphEncoder(n_features=4, n_hidden=8)
    >>> enc(torch.randn(3, 4), torch.tensor([[0, 1, 2], [0, 1, 2]])).shape
    torch.Size([3, 8])
    """

    n_hops = 2
    """Graph layers: the depth of the in-neighbourhood a node's output depends on."""

    def __init__(self, n_features: int, n_hidden: int = 64, heads: int = 2):
        super().__init__()
        self.input = nn.Linear(n_features, n_hidden)
        self.layers = GATLayers(n_hidden, heads)

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.layers(self.input(features), edge_index)
