"""Gene graph, gene embeddings and the graph-attention perturbation encoder (GRAPE-style)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import k_hop_subgraph

from .._constants import PAD
from ._molecule_encoder import MoleculeEncoder


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


class GeneGraphEncoder(nn.Module):
    """Two graph-attention layers (2 heads, LayerNorm, ReLU) over the gene graph.

    Node features are the genes' fixed features (data-derived PCA embedding, user embeddings);
    the output is one vector per node. It does not depend on the cell, so it runs once per
    training step (or prediction batch), never once per cell. A node's output depends only on
    its ``n_hops``-hop in-neighbourhood (messages flow from ``edge_index[0]`` to
    ``edge_index[1]``), so the nodes a batch needs can be computed on that subgraph alone
    (:meth:`PerturbationEncoder.node_embeddings`).

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
        self.gat1 = GATConv(n_hidden, n_hidden // heads, heads=heads, add_self_loops=False)
        self.norm1 = nn.LayerNorm(n_hidden)
        self.gat2 = GATConv(n_hidden, n_hidden // heads, heads=heads, add_self_loops=False)
        self.norm2 = nn.LayerNorm(n_hidden)

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.input(features)
        h = torch.relu(self.norm1(self.gat1(h, edge_index)))
        return torch.relu(self.norm2(self.gat2(h, edge_index)))


class PerturbationEncoder(nn.Module):
    """Embedding of a combination of perturbation tokens: the SUM of its tokens' embeddings.

    A token's embedding is a learned vector (tokens seen in training) plus, for tokens that are
    nodes of the gene graph with features (measured genes, genes in user embeddings), an MLP of
    the node's graph-attention output. During training the learned part is dropped with
    probability ``token_dropout`` for tokens that have features, so that the graph part carries
    the signal needed for genes never seen in training.

    The graph (node features, edges, token-to-node map) is data-derived state held in buffers:
    build the encoder with the shapes, then fill it with :meth:`set_graph` (``load_state_dict``
    restores it after loading).

    With a :class:`~scdoloris.module.MoleculeEncoder`, molecule tokens add the embedding of
    their features (their learned part is dropped like a featured gene's in training) and, when
    cells have doses, each molecule token's embedding passes through the dose gate before the
    sum.

    Parameters
    ----------
    n_vocab
        Number of tokens seen in training (learned embeddings).
    n_nodes, n_node_features, n_edges
        Shapes of the gene graph.
    n_out
        Width of the perturbation embedding.
    n_hidden
        Width of the graph network.
    token_dropout
        Probability of dropping a featured token's learned part during training.
    molecules
        Optional encoder of molecule tokens (features and dose gate).

    Examples
    --------
    >>> enc = PerturbationEncoder(2, n_nodes=3, n_node_features=3, n_edges=3, n_out=4, n_hidden=8)
    >>> enc.set_graph(torch.eye(3), torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([0, 2]))
    >>> node_idx = torch.tensor([[0, 2], [2, -1]])
    >>> nodes = enc.node_embeddings(node_idx)  # only the nodes the batch references
    >>> enc(torch.tensor([[0, 1], [1, -1]]), node_idx, nodes).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        n_vocab: int,
        n_nodes: int,
        n_node_features: int,
        n_edges: int,
        n_out: int = 128,
        n_hidden: int = 64,
        token_dropout: float = 0.3,
        molecules: MoleculeEncoder | None = None,
    ):
        super().__init__()
        self.register_buffer("node_features", torch.zeros(n_nodes, n_node_features))
        self.register_buffer("edge_index", torch.zeros(2, n_edges, dtype=torch.long))
        self.register_buffer("vocab_to_node", torch.full((n_vocab,), PAD, dtype=torch.long))
        self.learned = nn.Embedding(max(n_vocab, 1), n_out)
        nn.init.normal_(self.learned.weight, std=0.1)
        self.graph = GeneGraphEncoder(max(n_node_features, 1), n_hidden)
        self.readout = nn.Sequential(nn.Linear(n_hidden, n_out), nn.SiLU(), nn.Linear(n_out, n_out))
        self.token_dropout = token_dropout
        self.molecules = molecules

    def set_graph(
        self, node_features: torch.Tensor, edge_index: torch.Tensor, vocab_to_node: torch.Tensor
    ) -> None:
        """Copy the data-derived graph into the buffers (shapes must match the constructor's)."""
        self.node_features.copy_(torch.as_tensor(node_features))
        self.edge_index.copy_(torch.as_tensor(edge_index))
        self.vocab_to_node.copy_(torch.as_tensor(vocab_to_node))

    @property
    def node_has_features(self) -> torch.Tensor:
        return self.node_features.abs().sum(-1) > 0

    def node_embeddings(self, node_idx: torch.Tensor | None = None) -> torch.Tensor | None:
        """The read-out of the graph network (one pass per batch; None without features).

        Parameters
        ----------
        node_idx
            The node indices of a batch's tokens (any shape, ``-1`` for none). Given, the
            graph network runs only on the subgraph these nodes' outputs depend on (their
            ``n_hops``-hop in-neighbourhood and the edges into it), and only their rows are
            filled (the other rows are zero); the referenced rows equal those of the pass over
            the whole graph. ``None`` (or no referenced node): every node.

        Returns
        -------
        Nodes x ``n_out`` embeddings, indexed by node; None when no node has features, or when
        ``node_idx`` references no node.
        """
        if self.node_features.numel() == 0 or not bool(self.node_has_features.any()):
            return None
        if node_idx is None:
            return self.readout(self.graph(self.node_features, self.edge_index))
        needed = node_idx[node_idx != PAD].unique()
        if needed.numel() == 0:
            return None
        subset, edges, position, _ = k_hop_subgraph(
            needed,
            self.graph.n_hops,
            self.edge_index,
            relabel_nodes=True,
            num_nodes=self.node_features.shape[0],
            # only the edges into the needed nodes and their in-neighbours (all hops' edges
            # since torch-geometric 2.7, hence its pin)
            directed=True,
        )
        h = self.graph(self.node_features[subset], edges)[position]
        out = self.readout(h)
        return out.new_zeros(self.node_features.shape[0], out.shape[1]).index_copy(0, needed, out)

    def forward(
        self,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor,
        nodes: torch.Tensor | None,
        mol_idx: torch.Tensor | None = None,
        dose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum of token embeddings.

        Parameters
        ----------
        vocab_idx
            Batch x max_tokens training-vocabulary indices, ``-1`` where the token is padding or
            not in the training vocabulary.
        node_idx
            Batch x max_tokens node indices, ``-1`` for padding or tokens without a node.
        nodes
            The output of :meth:`node_embeddings` (computed once per batch, for at least the
            nodes in ``node_idx``).
        mol_idx
            Batch x max_tokens rows of the molecule table, ``-1`` for tokens that are no
            molecule (needs ``molecules``).
        dose
            Each cell's dose on the model's scale; ``None``: molecule tokens are not gated.
        """
        in_vocab = vocab_idx >= 0  # not padding, not an unknown token
        emb = self.learned(vocab_idx.clamp_min(0)) * in_vocab.unsqueeze(-1)
        featured, extra = None, []
        if nodes is not None:
            safe = node_idx.clamp_min(0)
            featured = (node_idx != PAD) & self.node_has_features[safe]
            extra.append(nodes[safe] * featured.unsqueeze(-1))
        use_molecules = self.molecules is not None and mol_idx is not None
        if use_molecules:
            mol_emb, mol_featured = self.molecules(mol_idx)
            featured = mol_featured if featured is None else featured | mol_featured
            extra.append(mol_emb)
        if featured is not None and self.training and self.token_dropout > 0:
            drop = torch.rand(vocab_idx.shape, device=vocab_idx.device) < self.token_dropout
            emb = emb * (~(drop & featured)).unsqueeze(-1)
        for part in extra:
            emb = emb + part
        if use_molecules and dose is not None:
            gated = self.molecules.gate(emb, dose.reshape(-1, 1).expand(mol_idx.shape))
            emb = torch.where((mol_idx != PAD).unsqueeze(-1), gated, emb)
        return emb.sum(1)
