"""What the model learns from its training data before any training: computed once, kept.

:meth:`ModelDataMixin._fit_module_data` reads the registered data and computes the module's
data-derived state (:class:`~scdoloris.module.ModuleData`: the scale, the control statistics,
the gene graph, the molecule table and the additive prior) and the model's own (the
vocabulary, the cell types, the bank of training masks). A backed (on-disk) AnnData gives
them from at most :data:`BACKED_CELLS_PER_CONDITION` cells of each condition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from .._constants import DEFAULT_CELL_TYPE, PAD, REGISTRY_KEYS
from .._perturbation import control_rows, format_tokens
from ..module import AdditivePrior, ModuleData, build_mask_bank
from ._molecules import dose_levels, dose_scale
from ._statistics import compute_statistics

BACKED_CHUNK = 20000
BACKED_CELLS_PER_CONDITION = 500
CONTROL_BANK_CELLS = 20000


class ModelDataMixin:
    """The data-derived state of :class:`~scdoloris.DolorisModel` (see the module docstring)."""

    def _fit_module_data(
        self,
        gene_embeddings: pd.DataFrame | None,
        gene_graph,
        n_gene_components: int,
        coexpression_threshold: float,
        per_cell_type: bool = False,
    ) -> tuple[ModuleData, dict]:
        """The module's data and its shapes (keyword arguments of the module); sets the
        model's vocabulary, cell types, molecules, doses, mask bank and the prior's fit."""
        manager = self.adata_manager
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        cell_type = np.asarray(manager.get_from_registry(REGISTRY_KEYS.CELL_TYPE_KEY)).ravel()
        vocabulary = list(manager.get_state_registry(REGISTRY_KEYS.TOKENS_KEY)["vocabulary"])
        cell_types = list(
            manager.get_state_registry(REGISTRY_KEYS.CELL_TYPE_KEY).categorical_mapping
        )
        genes = self.adata_var_names
        dose = self._registered_doses()
        raw_tokens = np.asarray(manager.get_from_registry(REGISTRY_KEYS.TOKENS_KEY))
        molecules = self._build_molecule_table(vocabulary, genes, gene_embeddings, raw_tokens, dose)
        self.vocabulary_ = vocabulary
        self.molecule_names_ = molecules.names
        self.dose_range_ = None
        tokens = self._registered_tokens()  # molecule tokens at dose 0 removed
        is_control = control_rows(tokens)
        dose_labels = self._dose_labels(tokens, dose)
        condition = np.char.add(
            np.array([",".join(map(str, r.astype(int))) for r in tokens]), cell_type.astype(str)
        )
        condition = np.char.add(condition, dose_labels)
        # a backed (on-disk) AnnData: the statistics come from at most
        # BACKED_CELLS_PER_CONDITION cells of each condition read into memory (x_max from a
        # pass over all cells); training reads its batches from disk
        if self.adata.isbacked:
            keep = _per_condition_sample(condition, BACKED_CELLS_PER_CONDITION)
            X = _read_rows(X, keep)
            cell_type, tokens, is_control = cell_type[keep], tokens[keep], is_control[keep]
            dose_labels = dose_labels[keep]
            condition, dose = condition[keep], None if dose is None else dose[keep]
        stats = compute_statistics(
            X,
            cell_type,
            len(cell_types),
            condition,
            is_control,
            pd.Index(genes),
            vocabulary,
            gene_embeddings=gene_embeddings,
            gene_graph=gene_graph,
            n_gene_components=n_gene_components,
            coexpression_threshold=coexpression_threshold,
        )
        if self.adata.isbacked:
            stats.x_max = _backed_max(manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        labels = np.array([format_tokens(self._row_tokens(r, vocabulary)) for r in tokens])
        labels = np.char.add(labels.astype(str), dose_labels)
        names = np.asarray(cell_types)[cell_type].astype(str)
        self.mask_bank_ = build_mask_bank(
            X, np.char.add(np.char.add(labels, " | "), names)
        ).to_dict()
        no_key = self.setup_args.get("cell_type_key") is None
        self.cell_types_ = [DEFAULT_CELL_TYPE] if no_key else [str(c) for c in cell_types]
        # cell types with perturbed training cells (the others take the unknown cell type)
        self.perturbed_cell_types_ = [
            self.cell_types_[c] for c in np.unique(cell_type[~is_control]).astype(int)
        ]
        self.node_names_ = stats.node_names
        is_molecule = molecules.vocab_to_molecule != PAD
        levels = None
        if dose is not None and is_molecule.any():
            self.dose_range_ = dose_scale(tokens, is_molecule, dose)
            levels = dose_levels(tokens, is_molecule, self._scale_doses(dose))
            levels = levels if len(levels) else None
        # an unseen gene token is expected to do what the seen tokens other than molecules do
        seen = np.asarray([t not in molecules.names for t in vocabulary], dtype=bool)
        prior = AdditivePrior.fit(
            X,
            tokens,
            cell_type,
            len(cell_types),
            len(vocabulary),
            stats.x_max,
            seen,
            levels,
            per_cell_type,
        )
        self.unseen_expressed_alpha_ = prior.unseen_expressed_alpha
        self.unseen_detection_alpha_ = prior.unseen_detection_alpha
        self.cell_type_temperature_ = prior.cell_type_temperature
        data = ModuleData(
            x_max=stats.x_max,
            sigma_data=stats.sigma_data,
            control_mean=stats.control_mean,
            control_std=stats.control_std,
            node_features=stats.node_features,
            edge_index=stats.edge_index,
            vocab_to_node=stats.vocab_to_node,
            prior=prior,
            perturbed_cell_type=np.isin(np.asarray(self.cell_types_), self.perturbed_cell_types_),
        )
        shapes = {
            "n_genes": len(genes),
            "n_cell_types": len(cell_types),
            "n_vocab": len(vocabulary),
            "graph_kwargs": {
                "n_nodes": len(stats.node_names),
                "n_node_features": stats.node_features.shape[1],
                "n_edges": stats.edge_index.shape[1],
                "n_gene_edges": int((stats.edge_index < len(genes)).all(0).sum()),
            },
        }
        if molecules.names:
            data.molecule_features = molecules.features
            data.molecule_has_features = molecules.has_features
            data.vocab_to_molecule = molecules.vocab_to_molecule
            data.dose_range = self.dose_range_ or (1.0, 1.0)
            shapes["molecule_kwargs"] = {
                "n_molecules": len(molecules.names),
                "n_features": molecules.n_features,
                "n_dose_levels": 0 if levels is None else len(levels),
            }
        return data, shapes

    def _fill_control_bank(self, max_cells: int = CONTROL_BANK_CELLS) -> None:
        """Give the module the registered control cells (at most ``max_cells``, drawn at random)."""
        manager = self.adata_manager
        rows = np.flatnonzero(control_rows(self._registered_tokens()))
        if len(rows) > max_cells:
            rows = np.sort(np.random.default_rng(0).choice(rows, max_cells, replace=False))
        sub = _read_rows(manager.get_from_registry(REGISTRY_KEYS.X_KEY), rows)
        sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
        cell_type = np.asarray(manager.get_from_registry(REGISTRY_KEYS.CELL_TYPE_KEY)).ravel()
        self.module.set_control_bank(
            torch.from_numpy(sub.astype(np.float32)),
            torch.from_numpy(cell_type[rows].astype(np.int64)),
        )

    @staticmethod
    def _row_tokens(row: np.ndarray, vocabulary: list[str]) -> tuple[str, ...]:
        return tuple(vocabulary[int(i)] for i in row if i != PAD)


def _per_condition_sample(condition: np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all cells of small conditions, ``max_cells`` of the larger ones."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(condition):
        rows = np.flatnonzero(condition == label)
        if len(rows) > max_cells:
            rows = rng.choice(rows, max_cells, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep))


def _read_rows(X, rows: np.ndarray):
    """Rows of an in-memory or backed matrix (sorted ``rows``), in memory."""
    if hasattr(X, "to_memory") or hasattr(X, "id"):  # backed sparse or h5py dense
        chunks = [X[rows[i : i + BACKED_CHUNK]] for i in range(0, len(rows), BACKED_CHUNK)]
        if not chunks:
            return X[rows]
        if sparse.issparse(chunks[0]):
            return sparse.vstack(chunks).tocsr()
        return np.concatenate([np.asarray(c) for c in chunks])
    return X[rows]


def _backed_max(X) -> float:
    """The largest value of a backed matrix, read in chunks of cells."""
    best = 0.0
    for start in range(0, X.shape[0], BACKED_CHUNK):
        chunk = X[start : start + BACKED_CHUNK]
        if chunk.shape[0]:
            best = max(best, float(chunk.max()))
    return best
