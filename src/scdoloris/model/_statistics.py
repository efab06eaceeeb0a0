"""Data-derived state of a Doloris model, computed once from the registered training data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

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


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


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
    means = np.asarray(_dense(onehot @ X), dtype=np.float64) / sizes[:, None]
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
    edges = [coexpression_edges(_dense(X[ctrl_rows]), coexpression_threshold)]
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


@dataclass
class CompositionalEffects:
    """Per-token effects on detection and on expressed values, for the additive prior.

    Attributes
    ----------
    control_expressed_mean
        Cell types x genes: mean of the non-zero values of control cells.
    control_detection_logit
        Cell types x genes: logit of the smoothed fraction of control cells expressing each gene.
    token_expressed_effect
        Tokens x genes: the change of the mean expressed value that each token causes.
    token_detection_effect
        Tokens x genes: the change of the detection logit that each token causes.
    """

    control_expressed_mean: np.ndarray
    control_detection_logit: np.ndarray
    token_expressed_effect: np.ndarray
    token_detection_effect: np.ndarray


def _expressed_stats(X, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of values, number of non-zero entries and number of cells over ``rows``."""
    sub = X[rows]
    if sparse.issparse(sub):
        total = np.asarray(sub.sum(0)).ravel()
        nnz = np.asarray((sub != 0).sum(0)).ravel()
    else:
        sub = np.asarray(sub)
        total, nnz = sub.sum(0), (sub != 0).sum(0)
    return total.astype(np.float64), nnz.astype(np.float64), float(len(rows))


def _logit(k: np.ndarray, n: float) -> np.ndarray:
    p = (k + 0.5) / (n + 1.0)
    return np.log(p) - np.log1p(-p)


def compositional_effects(
    X,
    tokens: np.ndarray,
    cell_type: np.ndarray,
    n_cell_types: int,
    n_vocab: int,
    ridge: float = 0.1,
    single_weight: float = 10.0,
) -> CompositionalEffects:
    """Estimate each token's effect on detection logits and expressed values.

    Every training condition (token set x cell type) gives its change from the controls of its
    cell type: of the detection logit, and of the mean over expressed (non-zero) entries. The
    changes of all conditions are fitted as sums of per-token effects by weighted ridge
    regression, single-token conditions weighted ``single_weight`` times more than combinations,
    so a token seen alone takes (almost) its own measured effect and a token seen only in
    combinations gets what the combinations imply.

    Parameters
    ----------
    X
        Cells x genes log-normalised expression.
    tokens
        Cells x max_tokens vocabulary indices (-1 for padding).
    cell_type
        Integer cell type of each cell.
    n_cell_types, n_vocab
        Numbers of cell types and tokens.
    ridge
        Ridge penalty of the fit.
    single_weight
        Weight of single-token conditions.
    """
    if sparse.issparse(X):
        X = X.tocsr()
    n_genes = X.shape[1]
    is_control = (tokens == -1).all(1)
    ctrl_mean = np.zeros((n_cell_types, n_genes))
    ctrl_logit = np.zeros((n_cell_types, n_genes))
    for ct in range(n_cell_types):
        rows = np.flatnonzero(is_control & (cell_type == ct))
        if len(rows) == 0:
            continue
        total, nnz, n = _expressed_stats(X, rows)
        ctrl_mean[ct] = np.where(nnz > 0, total / np.maximum(nnz, 1), 0.0)
        ctrl_logit[ct] = _logit(nnz, n)

    keys = [tuple(int(i) for i in r if i != -1) for r in tokens]
    groups: dict[tuple, list[int]] = {}
    for i, (k, ct) in enumerate(zip(keys, cell_type, strict=True)):
        if k:
            groups.setdefault((k, int(ct)), []).append(i)
    if not groups or n_vocab == 0:
        zeros = np.zeros((max(n_vocab, 0), n_genes), np.float32)
        return CompositionalEffects(
            ctrl_mean.astype(np.float32), ctrl_logit.astype(np.float32), zeros, zeros.copy()
        )
    design = np.zeros((len(groups), n_vocab))
    d_expr = np.zeros((len(groups), n_genes))
    d_logit = np.zeros((len(groups), n_genes))
    weights = np.zeros(len(groups))
    for j, ((k, ct), rows) in enumerate(groups.items()):
        design[j, list(k)] = 1.0
        total, nnz, n = _expressed_stats(X, np.asarray(rows))
        mean = np.where(nnz > 0, total / np.maximum(nnz, 1), ctrl_mean[ct])
        both = (nnz > 0) & (ctrl_mean[ct] > 0)
        d_expr[j] = np.where(both, mean - ctrl_mean[ct], 0.0)
        d_logit[j] = _logit(nnz, n) - ctrl_logit[ct]
        weights[j] = single_weight if len(k) == 1 else 1.0
    Aw = design * weights[:, None]
    gram = design.T @ Aw + ridge * np.eye(n_vocab)
    expr = np.linalg.solve(gram, Aw.T @ d_expr)
    logit = np.linalg.solve(gram, Aw.T @ d_logit)
    return CompositionalEffects(
        ctrl_mean.astype(np.float32),
        ctrl_logit.astype(np.float32),
        expr.astype(np.float32),
        logit.astype(np.float32),
    )


def shrunk_mean_effect(effects: np.ndarray) -> tuple[np.ndarray, float]:
    """The effect to expect of a token never seen in training: the seen tokens' mean, shrunk.

    With nothing known of a new token, the best guess of its effect is a multiple ``alpha`` of
    the seen tokens' mean effect: ``alpha`` near 1 when the seen tokens act alike (a screen
    whose perturbations mostly hit one pathway), near 0 when their effects differ or cancel.
    ``alpha`` is fitted by leave-one-out on the seen tokens themselves: each token's effect is
    predicted by the mean of the others, and ``alpha`` is the least-squares scale of those
    predictions, ``sum_k <e_k, m_-k> / sum_k |m_-k|^2``, clipped to [0, 1]. No held-out data
    is used; with fewer than two tokens ``alpha`` is 0.

    Parameters
    ----------
    effects
        Tokens x genes: the seen tokens' effects (e.g. on expressed values).

    Returns
    -------
    ``(alpha * mean effect, alpha)``.

    Examples
    --------
    >>> effect, alpha = shrunk_mean_effect(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    >>> effect.tolist(), alpha
    ([1.0, 0.0], 1.0)
    >>> shrunk_mean_effect(np.array([[1.0, 0.0], [-1.0, 0.0]]))[1]
    0.0
    >>> effect, alpha = shrunk_mean_effect(np.array([[2.0], [0.0], [0.0]]))
    >>> round(alpha, 4), effect.round(4).tolist()
    (0.0, [0.0])
    """
    E = np.asarray(effects, dtype=np.float64)
    n = E.shape[0]
    if n < 2:
        return np.zeros(E.shape[1], dtype=np.float32), 0.0
    loo = (E.sum(0, keepdims=True) - E) / (n - 1)
    denominator = float((loo**2).sum())
    alpha = float(np.clip((E * loo).sum() / denominator, 0.0, 1.0)) if denominator > 0 else 0.0
    return (alpha * E.mean(0)).astype(np.float32), alpha


TRANSFER_TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, np.inf)


def transfer_weights(distance: np.ndarray, temperature: float) -> np.ndarray:
    """Weights of source cell types for one target: ``softmax(-distance / temperature)``.

    ``temperature=inf`` gives equal weights (the pooled average).

    Examples
    --------
    >>> transfer_weights(np.array([0.0, 1.0]), np.inf).tolist()
    [0.5, 0.5]
    >>> transfer_weights(np.array([0.0, 1.0]), 1.0).round(3).tolist()
    [0.731, 0.269]
    """
    d = np.asarray(distance, dtype=np.float64)
    if not np.isfinite(temperature):
        return np.full(d.shape, 1.0 / len(d))
    logits = -(d - d.min()) / temperature
    w = np.exp(logits)
    return w / w.sum()


def fit_transfer_temperature(
    effects: np.ndarray, measured: np.ndarray, distance: np.ndarray
) -> float:
    """The temperature of :func:`transfer_weights` that best predicts measured effects.

    Leave one cell type out: each effect a token has in a cell type where it was measured is
    predicted from the token's effects in the other cell types where it was measured, weighted
    by :func:`transfer_weights` of their distances; the temperature of
    :data:`TRANSFER_TEMPERATURES` with the smallest squared error wins (``inf``, the pooled
    average, when no token was measured in two cell types; ties go to the larger).

    Parameters
    ----------
    effects
        Cell types x tokens x genes.
    measured
        Cell types x tokens, boolean.
    distance
        Cell types x cell types, scaled (e.g. by the median distance).
    """
    errors = dict.fromkeys(TRANSFER_TEMPERATURES, 0.0)
    cases = 0
    for c in range(measured.shape[0]):
        for k in np.flatnonzero(measured[c]):
            others = np.flatnonzero(measured[:, k])
            others = others[others != c]
            if len(others) == 0:
                continue
            cases += 1
            for temperature in TRANSFER_TEMPERATURES:
                w = transfer_weights(distance[c, others], temperature)
                guess = np.tensordot(w, effects[others, k], axes=1)
                errors[temperature] += float(((effects[c, k] - guess) ** 2).sum())
    if cases == 0:
        return float(np.inf)
    # ties (e.g. every held-out effect has one source) go to the larger temperature
    return float(min(reversed(TRANSFER_TEMPERATURES), key=errors.get))


def cell_type_effects(
    X,
    tokens: np.ndarray,
    cell_type: np.ndarray,
    n_cell_types: int,
    n_vocab: int,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each token's effects per cell type, transferred to cell types where it was never seen.

    Where a token was measured in a cell type, its effect there is
    :func:`compositional_effects` fitted on that cell type's cells alone. Elsewhere it is the
    average of its effects in the cell types where it was measured, weighted by how close their
    control cells are (:func:`transfer_weights` of the Euclidean distance between the cell
    types' mean control expression, divided by the median such distance), with the
    temperature fitted by leave-one-cell-type-out (:func:`fit_transfer_temperature`). The
    pooled fit of :func:`compositional_effects` shares one effect across all cell types,
    whatever their likeness; this lets a held-out monocyte type take its response mostly from
    other monocytes.

    Parameters
    ----------
    X, tokens, cell_type, n_cell_types, n_vocab
        As in :func:`compositional_effects`.
    **kwargs
        Passed to :func:`compositional_effects`.

    Returns
    -------
    ``(expressed, detection, temperature)``: cell types x tokens x genes effects on expressed
    values and detection logits, and the fitted temperature.
    """
    if sparse.issparse(X):
        X = X.tocsr()
    n_genes = X.shape[1]
    expressed = np.zeros((n_cell_types, n_vocab, n_genes), np.float32)
    detection = np.zeros_like(expressed)
    measured = np.zeros((n_cell_types, n_vocab), bool)
    control_means = np.zeros((n_cell_types, n_genes))
    is_control = (tokens == -1).all(1)
    for c in range(n_cell_types):
        rows = np.flatnonzero(cell_type == c)
        if len(rows) == 0:
            continue
        ctrl = rows[is_control[rows]]
        if len(ctrl):
            control_means[c] = np.asarray(X[ctrl].mean(0)).ravel()
        used = np.unique(tokens[rows])
        measured[c, used[used >= 0]] = True
        eff = compositional_effects(
            X[rows], tokens[rows], np.zeros(len(rows), int), 1, n_vocab, **kwargs
        )
        expressed[c] = eff.token_expressed_effect
        detection[c] = eff.token_detection_effect
    diff = control_means[:, None, :] - control_means[None, :, :]
    distance = np.sqrt((diff**2).sum(-1))
    off_diagonal = distance[~np.eye(n_cell_types, dtype=bool)]
    scale = np.median(off_diagonal) if off_diagonal.size and np.median(off_diagonal) > 0 else 1.0
    distance = distance / scale
    temperature = fit_transfer_temperature(expressed, measured, distance)
    for c in range(n_cell_types):
        for k in np.flatnonzero(~measured[c]):
            sources = np.flatnonzero(measured[:, k])
            if len(sources) == 0:
                continue
            w = transfer_weights(distance[c, sources], temperature)
            expressed[c, k] = np.tensordot(w, expressed[sources, k], axes=1)
            detection[c, k] = np.tensordot(w, detection[sources, k], axes=1)
    return expressed, detection, temperature
