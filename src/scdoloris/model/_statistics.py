"""The data's scale, the control cells' statistics and the gene graph, computed once from the
training data (the additive prior is fitted in ``module/_prior.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from .._anndata_utils import dense
from ..module._gene_graph import coexpression_edges, pca_gene_embedding

MAX_COEXPRESSION_CELLS = 5000


@dataclass
class DataStatistics:
    """Everything the module needs from the data: scale, control statistics and the gene graph.

    Attributes
    ----------
    x_max
        Maximum expression over training cells.
    sigma_data
        Standard deviation of all expression values (for the EDM preconditioning).
    control_mean, control_std
        Cell types x genes, over the control cells of each cell type.
    node_names
        Gene-graph nodes: the measured genes first (in ``var_names`` order), then perturbation
        tokens and user-embedded genes that are not measured.
    node_features
        Nodes x features: the PCA gene embedding (zeros for unmeasured nodes), then the user's
        gene embeddings (standardised; zeros where absent).
    edge_index
        ``(2, n_edges)``: co-expression edges among measured genes, the user's prior edges and a
        self loop on every node.
    vocab_to_node
        Node index of every training token.
    """

    x_max: float
    sigma_data: float
    control_mean: np.ndarray
    control_std: np.ndarray
    node_names: list[str]
    node_features: np.ndarray
    edge_index: np.ndarray
    vocab_to_node: np.ndarray


def _rows_mean_std(X, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sub = X[rows]
    if sparse.issparse(sub):
        mean = np.asarray(sub.mean(0)).ravel()
        sq = np.asarray(sub.multiply(sub).mean(0)).ravel()
    else:
        sub = np.asarray(sub, dtype=np.float64)
        mean, sq = sub.mean(0), (sub**2).mean(0)
    return mean, np.sqrt(np.maximum(sq - mean**2, 0.0))


def compute_statistics(
    X,
    cell_type: np.ndarray,
    n_cell_types: int,
    condition: np.ndarray,
    is_control: np.ndarray,
    var_names: pd.Index,
    vocabulary: list[str],
    gene_embeddings: pd.DataFrame | None = None,
    gene_graph: pd.DataFrame | np.ndarray | None = None,
    n_gene_components: int = 32,
    coexpression_threshold: float = 0.5,
    seed: int = 0,
) -> DataStatistics:
    """Compute :class:`DataStatistics` from the training data.

    Parameters
    ----------
    X
        Cells x genes log-normalised expression (dense or sparse).
    cell_type
        Integer cell-type code of each cell.
    n_cell_types
        Number of cell types.
    condition
        A label per cell of its condition (perturbation and cell type) for the pseudo-bulk PCA.
    is_control
        Whether each cell is a control cell.
    var_names
        The genes.
    vocabulary
        The perturbation tokens of the training data.
    gene_embeddings
        Optional user gene features, indexed by gene symbol.
    gene_graph
        Optional prior edges between gene symbols: two columns (source, target).
    n_gene_components
        Width K of the PCA gene embedding.
    coexpression_threshold
        ``|r|`` threshold of the co-expression graph.
    seed
        Seed of the subsample of control cells used for co-expression.
    """
    if sparse.issparse(X):
        X = X.tocsr()
    n_genes = len(var_names)
    x_max = float(X.max())
    n_entries = X.shape[0] * X.shape[1]
    if sparse.issparse(X):
        total, total_sq = float(X.sum()), float(X.multiply(X).sum())
    else:
        total, total_sq = (
            float(np.sum(X, dtype=np.float64)),
            float(np.sum(np.square(X, dtype=np.float64))),
        )
    sigma_data = float(np.sqrt(max(total_sq / n_entries - (total / n_entries) ** 2, 1e-12)))
    control_mean = np.zeros((n_cell_types, n_genes))
    control_std = np.zeros((n_cell_types, n_genes))
    for ct in range(n_cell_types):
        rows = np.flatnonzero(is_control & (cell_type == ct))
        if len(rows):
            control_mean[ct], control_std[ct] = _rows_mean_std(X, rows)

    # PCA over the pseudo-bulk means of the training conditions
    codes, uniques = pd.factorize(pd.Series(condition))
    onehot = sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(uniques), len(codes))
    )
    sizes = np.asarray(onehot.sum(1)).ravel()
    means = dense(onehot @ X, np.float64) / sizes[:, None]
    pca = pca_gene_embedding(means, n_gene_components)

    # nodes: measured genes, then tokens and user genes that are not measured
    genes = [str(g) for g in var_names]
    measured = set(genes)
    extra = [t for t in vocabulary if t not in measured]
    if gene_embeddings is not None:
        seen = measured | set(extra)
        extra += [str(g) for g in gene_embeddings.index if str(g) not in seen]
    node_names = genes + extra
    node_pos = {n: i for i, n in enumerate(node_names)}
    blocks = [np.vstack([pca, np.zeros((len(extra), n_gene_components), np.float32)])]
    if gene_embeddings is not None:
        emb = gene_embeddings.to_numpy(dtype=np.float64)
        emb = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
        user = np.zeros((len(node_names), emb.shape[1]), np.float32)
        user[[node_pos[str(g)] for g in gene_embeddings.index]] = emb
        blocks.append(user)
    node_features = np.hstack(blocks).astype(np.float32)

    # edges: co-expression among control cells, user's prior edges, self loops on all nodes
    ctrl_rows = np.flatnonzero(is_control)
    if len(ctrl_rows) > MAX_COEXPRESSION_CELLS:
        rng = np.random.default_rng(seed)
        ctrl_rows = np.sort(rng.choice(ctrl_rows, MAX_COEXPRESSION_CELLS, replace=False))
    edges = [coexpression_edges(dense(X[ctrl_rows]), coexpression_threshold)]
    if gene_graph is not None:
        pairs = np.asarray(gene_graph)[:, :2].astype(str)
        keep = [(node_pos[a], node_pos[b]) for a, b in pairs if a in node_pos and b in node_pos]
        if keep:
            e = np.array(keep, dtype=np.int64).T
            edges += [e, e[::-1]]
    loops = np.arange(len(node_names), dtype=np.int64)
    edges.append(np.stack([loops, loops]))
    edge_index = np.unique(np.hstack(edges), axis=1)

    vocab_to_node = np.array([node_pos[t] for t in vocabulary], dtype=np.int64)
    return DataStatistics(
        x_max=x_max,
        sigma_data=sigma_data,
        control_mean=control_mean.astype(np.float32),
        control_std=control_std.astype(np.float32),
        node_names=node_names,
        node_features=node_features,
        edge_index=edge_index,
        vocab_to_node=vocab_to_node,
    )
