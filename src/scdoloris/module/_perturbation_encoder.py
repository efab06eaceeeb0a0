"""The condition of the networks: the cell type plus the perturbation, a sum of token embeddings.

A perturbation string such as ``"KLF1+MAP2K6"`` is a set of tokens; its embedding is the sum of
its tokens' embeddings (:class:`PerturbationEncoder`): a learned vector for tokens perturbed in
training, the gene-graph network's output for genes, the molecule encoder's output for
molecules (dose-gated). The condition vector of the target and mask networks is the cell-type
embedding plus that sum, or plus a learned control token for no perturbation
(:class:`ConditionEncoder`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import k_hop_subgraph

from .._constants import PAD, UNKNOWN
from ._gene_graph import GeneGraphEncoder
from ._molecule_encoder import MoleculeEncoder

# the fraction of training tokens seen as unknown (no embedding, the unseen-token prior), so that
# a token the model knows nothing about is predicted as the generic perturbation
UNKNOWN_TOKEN_RATE = 0.1


def no_perturbation(
    vocab_idx: torch.Tensor, node_idx: torch.Tensor, mol_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Which cells have no token at all (control cells): cells x tokens indices to cells.

    Examples
    --------
    >>> no_perturbation(torch.tensor([[0, -1], [-1, -1], [-2, -1]]), torch.full((3, 2), -1)).tolist()
    [False, True, False]
    """
    none = (vocab_idx == PAD) & (node_idx == PAD)
    if mol_idx is not None:
        none = none & (mol_idx == PAD)
    return none.all(-1)


def unknown_token_dropout(
    vocab_idx: torch.Tensor,
    node_idx: torch.Tensor,
    mol_idx: torch.Tensor | None,
    rate: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace a random ``rate`` of the tokens by the unknown token (training only).

    A replaced token loses its vocabulary entry, gene node and molecule row: its embedding is
    nothing and the additive prior counts it as an unseen token, exactly as an unknown token at
    prediction, so that the networks learn what a perturbation does when nothing is known of it
    (the generic response of the training data).

    Examples
    --------
    >>> v, n, m = unknown_token_dropout(torch.tensor([[3, -1]]), torch.tensor([[7, -1]]), None, 1.0)
    >>> v.tolist(), n.tolist(), m
    ([[-2, -1]], [[-1, -1]], None)
    """
    drop = (torch.rand(vocab_idx.shape, device=vocab_idx.device) < rate) & (vocab_idx >= 0)
    vocab_idx = torch.where(drop, UNKNOWN, vocab_idx)
    node_idx = torch.where(drop, PAD, node_idx)
    if mol_idx is not None:
        mol_idx = torch.where(drop, PAD, mol_idx)
    return vocab_idx, node_idx, mol_idx


class ConditionEncoder(nn.Module):
    """Condition vector = cell-type embedding + (control token or perturbation embedding).

    With ``unknown_cell_type=True`` it also holds an "unknown cell type" embedding, used for
    the cells flagged by ``forward``'s ``unknown`` (see ``DolorisModule``'s
    ``cell_type_dropout``).
    """

    def __init__(
        self,
        n_cell_types: int,
        n_cond: int,
        perturbation: PerturbationEncoder,
        unknown_cell_type: bool = False,
    ):
        super().__init__()
        self.cell_type = nn.Embedding(n_cell_types, n_cond)
        self.control_token = nn.Parameter(torch.randn(n_cond) * 0.1)
        self.perturbation = perturbation
        if unknown_cell_type:
            self.unknown_cell_type = nn.Parameter(torch.randn(n_cond) * 0.1)

    def cell_type_embedding(
        self, cell_type: torch.Tensor, unknown: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each cell's cell-type embedding, or the unknown one where ``unknown`` is True."""
        emb = self.cell_type(cell_type)
        if unknown is None:
            return emb
        return torch.where(unknown.unsqueeze(-1), self.unknown_cell_type, emb)

    def forward(
        self,
        cell_type: torch.Tensor,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor,
        mol_idx: torch.Tensor | None = None,
        dose: torch.Tensor | None = None,
        unknown: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The condition of each cell (the graph pass only on the nodes the batch needs)."""
        nodes = self.perturbation.node_embeddings(node_idx)
        is_control = no_perturbation(vocab_idx, node_idx, mol_idx).unsqueeze(-1)
        pert = self.perturbation(vocab_idx, node_idx, nodes, mol_idx, dose)
        cell = self.cell_type_embedding(cell_type, unknown)
        return cell + torch.where(is_control, self.control_token, pert)

    def control(self, cell_type: torch.Tensor) -> torch.Tensor:
        """The condition of control cells: no perturbation encoder (and no graph pass) needed."""
        return self.cell_type(cell_type) + self.control_token


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
