"""The mask network: the probability that each gene is expressed (non-zero) in a cell."""

from __future__ import annotations

import torch
from torch import nn

from ._gene_graph import GATLayers


class MaskNetwork(nn.Module):
    """MLP over the control-state input and the condition, giving one logit per gene.

    ``logits = MLP([control_state, cond]) + w * control_state + b`` with a per-gene scale ``w``
    and bias ``b``, so that a gene detected in the control cell starts out more likely to be
    detected in its prediction. Trained with binary cross-entropy against ``1[x != 0]``.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_cond
        Width of the condition vector.
    n_hidden
        Width of the hidden layer.

    Examples
    --------
    >>> net = MaskNetwork(n_genes=4, n_cond=3, n_hidden=8)
    >>> net(torch.zeros(2, 4), torch.zeros(2, 3)).shape
    torch.Size([2, 4])
    """

    def __init__(self, n_genes: int, n_cond: int, n_hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(n_genes + n_cond, n_hidden),
            nn.LayerNorm(n_hidden),
            nn.SiLU(),
            nn.Linear(n_hidden, n_hidden),
            nn.SiLU(),
            nn.Linear(n_hidden, n_genes),
        )
        self.state_scale = nn.Parameter(torch.ones(n_genes))
        self.bias = nn.Parameter(torch.zeros(n_genes))

    def forward(self, control_state: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.mlp(torch.cat([control_state, cond], dim=-1))
        return h + self.state_scale * control_state + self.bias


class GeneGraphMaskNetwork(nn.Module):
    """Graph-attention mask network over the genes of each cell (the ablation "graph mask
    network", ``scdoloris.ablations``).

    Each gene of a cell is a node with features: a learned gene embedding plus a projection of
    its fixed gene features, plus an encoding of its control-state value, plus the condition
    (cell type and perturbation, added to every node). Perturbed genes that are measured have
    their node replaced by a learned knockout token (:func:`knocked_genes`). Two residual
    graph-attention layers (:class:`~scdoloris.module.GATLayers`) over the gene graph and a
    per-gene read-out give logits, to which ``w * control_state + b`` is added.
    Unlike the perturbation encoder this depends on the cell, so it runs on the batch's
    ``cells x genes`` nodes at once (one graph of ``batch * genes`` nodes).

    Parameters
    ----------
    n_genes, n_gene_features, n_edges
        Genes, width of the fixed gene features and edges of the gene graph.
    n_cond
        Width of the condition vector.
    n_hidden
        Width of the node vectors.
    heads
        Attention heads.

    Examples
    --------
    >>> net = GeneGraphMaskNetwork(n_genes=4, n_gene_features=2, n_edges=4, n_cond=3, n_hidden=8)
    >>> net.set_graph(torch.zeros(4, 2), torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    >>> net(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        n_genes: int,
        n_gene_features: int,
        n_edges: int,
        n_cond: int,
        n_hidden: int = 32,
        heads: int = 2,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.register_buffer("gene_features", torch.zeros(n_genes, max(n_gene_features, 1)))
        self.register_buffer("edge_index", torch.zeros(2, n_edges, dtype=torch.long))
        self.gene_embedding = nn.Embedding(n_genes, n_hidden)
        self.feature_proj = nn.Linear(max(n_gene_features, 1), n_hidden)
        self.value_encoder = nn.Sequential(
            nn.Linear(1, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden)
        )
        self.cond_proj = nn.Linear(n_cond, n_hidden)
        self.knockout_token = nn.Parameter(torch.randn(n_hidden) * 0.1)
        self.layers = GATLayers(n_hidden, heads, residual=True)
        self.readout = nn.Linear(n_hidden, 1)
        self.state_scale = nn.Parameter(torch.ones(n_genes))
        self.bias = nn.Parameter(torch.zeros(n_genes))

    def set_graph(self, gene_features: torch.Tensor, edge_index: torch.Tensor) -> None:
        """Copy the fixed gene features and the gene graph (measured genes only)."""
        self.gene_features.copy_(torch.as_tensor(gene_features).reshape(self.gene_features.shape))
        self.edge_index.copy_(torch.as_tensor(edge_index))

    def forward(
        self, control_state: torch.Tensor, cond: torch.Tensor, knocked: torch.Tensor
    ) -> torch.Tensor:
        b, g = control_state.shape
        gene = self.gene_embedding.weight + self.feature_proj(self.gene_features)
        h = gene + self.value_encoder(control_state.unsqueeze(-1)) + self.cond_proj(cond)[:, None]
        h = torch.where(knocked.unsqueeze(-1), self.knockout_token, h).reshape(b * g, -1)
        e = self.edge_index.shape[1]
        offsets = (torch.arange(b, device=h.device) * g).repeat_interleave(e)
        edges = self.edge_index.repeat(1, b) + offsets
        h = self.layers(h, edges)
        logits = self.readout(h).reshape(b, g)
        return logits + self.state_scale * control_state + self.bias


def knocked_genes(node_idx: torch.Tensor, n_genes: int) -> torch.Tensor:
    """Cells x genes boolean: which measured genes each cell's perturbation targets.

    Examples
    --------
    >>> knocked_genes(torch.tensor([[1, -1], [5, 0]]), 3).tolist()
    [[False, True, False], [True, False, False]]
    """
    knocked = torch.zeros(node_idx.shape[0], n_genes + 1, dtype=torch.bool, device=node_idx.device)
    target = torch.where((node_idx >= 0) & (node_idx < n_genes), node_idx, n_genes)
    knocked.scatter_(1, target, True)
    return knocked[:, :n_genes]
