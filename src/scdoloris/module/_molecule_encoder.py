"""The molecule encoder: a molecule's feature vector through an MLP, gated by the dose."""

from __future__ import annotations

import torch
from torch import nn

from .._constants import PAD
from ._dose import DoseGate


class MoleculeEncoder(nn.Module):
    """Embeddings of molecule tokens from their features, and the dose gate they pass through.

    The feature table (one row per molecule the model knows: Morgan fingerprints, Uni-Mol or
    other vectors) is data-derived state held in buffers, like the gene graph of
    :class:`~scdoloris.module.PerturbationEncoder`, so a loaded model needs no training data.
    Features are standardised with the table's column means and standard deviations. Molecules
    without features (drugs known only by name) have a row too, flagged in ``has_features``:
    they are embedded by their learned token embedding only, but still dose-gated.

    Parameters
    ----------
    n_vocab
        Number of training tokens (for the token-to-molecule map).
    n_molecules
        Rows of the feature table.
    n_features
        Width of the feature vectors (0: molecules have no features, only learned embeddings).
    n_out
        Width of the embedding (the condition width).
    n_hidden
        Width of the MLP's hidden layer.

    Examples
    --------
    >>> enc = MoleculeEncoder(n_vocab=2, n_molecules=2, n_features=3, n_out=4)
    >>> enc.set_molecules(torch.eye(3)[:2], torch.tensor([True, True]), torch.tensor([-1, 0]))
    >>> emb, featured = enc(torch.tensor([[1, -1], [-1, -1]]))
    >>> emb.shape, featured.tolist()
    (torch.Size([2, 2, 4]), [[True, False], [False, False]])
    """

    def __init__(
        self, n_vocab: int, n_molecules: int, n_features: int, n_out: int = 128, n_hidden: int = 256
    ):
        super().__init__()
        self.register_buffer("features", torch.zeros(n_molecules, n_features))
        self.register_buffer("has_features", torch.zeros(n_molecules, dtype=torch.bool))
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("vocab_to_molecule", torch.full((n_vocab,), PAD, dtype=torch.long))
        self.mlp = (
            nn.Sequential(nn.Linear(n_features, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))
            if n_features > 0
            else None
        )
        self.gate = DoseGate(n_out, min(n_hidden, 4 * n_out))
        self.n_out = n_out
        self.extra_features: torch.Tensor | None = None  # rows for new molecules, never saved

    def set_molecules(
        self, features: torch.Tensor, has_features: torch.Tensor, vocab_to_molecule: torch.Tensor
    ) -> None:
        """Copy the feature table (raw values) and the token map; standardise on its rows."""
        features = torch.as_tensor(features, dtype=torch.float32)
        has_features = torch.as_tensor(has_features, dtype=torch.bool)
        self.features.copy_(features)
        self.has_features.copy_(has_features)
        self.vocab_to_molecule.copy_(torch.as_tensor(vocab_to_molecule))
        rows = features[has_features]
        if rows.shape[0] > 0 and rows.shape[1] > 0:
            std = rows.std(0, unbiased=False) if rows.shape[0] > 1 else torch.ones(rows.shape[1])
            self.feature_mean.copy_(rows.mean(0))
            self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def molecule_indices(self, vocab_idx: torch.Tensor) -> torch.Tensor:
        """Molecule rows of training tokens (``-1`` for padding and tokens that are no molecule)."""
        return torch.where(vocab_idx < 0, PAD, self.vocab_to_molecule[vocab_idx.clamp_min(0)])

    def forward(self, mol_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature embeddings of molecule tokens and whether each token has features.

        Parameters
        ----------
        mol_idx
            Cells x tokens rows of the feature table, ``-1`` where the token is no molecule.

        Returns
        -------
        Cells x tokens x n_out embeddings (zero where there are no features) and the cells x
        tokens boolean "has features".
        """
        features, has_features = self.features, self.has_features
        if self.extra_features is not None:
            extra = self.extra_features.to(features.device)
            features = torch.cat([features, extra])
            has_features = torch.cat([has_features, has_features.new_ones(extra.shape[0])])
        safe = mol_idx.clamp_min(0)
        featured = (mol_idx != PAD) & has_features[safe]
        if self.mlp is None:
            return mol_idx.new_zeros((*mol_idx.shape, self.n_out), dtype=torch.float32), featured
        x = (features[safe] - self.feature_mean) / self.feature_std
        return self.mlp(x) * featured.unsqueeze(-1), featured

    def set_extra_features(self, features: torch.Tensor | None) -> None:
        """Rows appended after the table for molecules it lacks (at prediction); None clears.

        They are a plain attribute, not a buffer: never saved, replaced by the next call.
        """
        if features is not None:
            features = torch.as_tensor(features, dtype=torch.float32).reshape(
                -1, self.features.shape[1]
            )
        self.extra_features = features
