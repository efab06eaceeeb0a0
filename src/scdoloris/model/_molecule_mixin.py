"""The molecule and dose side of DolorisModel: its molecule table, doses, and their checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .._constants import PAD, REGISTRY_KEYS
from ..molecules import is_smiles, morgan_fingerprints
from ._molecules import _is_morgan, effective_tokens, molecule_table


class MoleculeDoseMixin:
    """Molecules and doses of a :class:`~scdoloris.DolorisModel` (state and input checks).

    Saved state: ``molecule_names_`` (rows of the molecule table, in the module's buffers) and,
    for a model with doses, ``dose_range_`` (smallest positive and largest training dose).
    """

    # ------------------------------------------------------------------ state
    def _build_molecule_table(self, vocabulary, genes, gene_embeddings, tokens, dose):
        """The model's molecules (see :func:`~scdoloris.model._molecules.molecule_table`)."""
        gene_like = set(genes)
        if gene_embeddings is not None:
            gene_like |= {str(g) for g in gene_embeddings.index}
        dosed: set[str] = set()
        if dose is not None:
            positive = tokens[dose > 0]
            dosed = {vocabulary[int(i)] for i in np.unique(positive[positive != PAD])}
        table = self.setup_args.get("molecule_features")
        if isinstance(table, pd.DataFrame) and gene_embeddings is not None:
            clash = sorted(set(table.index.astype(str)) & set(vocabulary) & gene_like)
            if clash:
                raise ValueError(
                    f"Tokens {clash[:5]} are rows of both gene_embeddings and molecule_features; "
                    "a token must be a gene or a molecule. Drop them from one of the tables."
                )
        return molecule_table(vocabulary, gene_like, table, dosed)

    def _registered_doses(self) -> np.ndarray | None:
        """Each registered cell's dose (None without ``dose_key``)."""
        if self.setup_args.get("dose_key") is None:
            return None
        values = self.adata_manager.get_from_registry(REGISTRY_KEYS.DOSE_KEY)
        return np.asarray(values, dtype=np.float64).ravel()

    def _vocab_is_molecule(self) -> np.ndarray:
        molecules = set(getattr(self, "molecule_names_", []))
        return np.array([t in molecules for t in self.vocabulary_], dtype=bool)

    def _registered_tokens(self) -> np.ndarray:
        """The registered token matrix, molecule tokens given at dose 0 removed."""
        tokens = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.TOKENS_KEY))
        return effective_tokens(tokens, self._vocab_is_molecule(), self._registered_doses())

    def _dose_labels(self, tokens: np.ndarray, dose: np.ndarray | None) -> np.ndarray:
        """``" @ <dose>"`` for cells with a molecule token, ``""`` otherwise (condition labels)."""
        labels = np.full(tokens.shape[0], "", dtype=object)
        if dose is not None:
            is_molecule = self._vocab_is_molecule()
            rows = ((tokens != PAD) & is_molecule[np.clip(tokens, 0, None)]).any(1)
            labels[rows] = [f" @ {d:g}" for d in dose[rows]]
        return labels.astype(str)

    @property
    def _n_molecule_features(self) -> int:
        """Width of the molecule feature table (0: molecules are learned tokens, or none)."""
        return int(self.module_kwargs_.get("molecule_kwargs", {}).get("n_features", 0))

    @property
    def has_doses(self) -> bool:
        """Whether the model has molecule tokens with doses (``predict`` then needs ``dose=``)."""
        return getattr(self, "dose_range_", None) is not None

    def _scale_doses(self, dose: np.ndarray) -> np.ndarray:
        from ..module import encode_dose

        t = torch.as_tensor(np.asarray(dose, dtype=np.float64))
        return encode_dose(t, *self.dose_range_).numpy()

    # ------------------------------------------------------------------ prediction inputs
    def _molecule_row(
        self,
        token: str,
        new_molecules: dict[str, np.ndarray],
        molecule_features: pd.DataFrame | None,
    ) -> int:
        """Row of ``token`` in the molecule table, extended by molecules new to the model.

        A token without a row gets one from ``molecule_features`` (given to ``predict``) or, for
        a model set up with ``molecule_features="morgan"``, from its SMILES; the new rows are
        collected in ``new_molecules``. Returns ``-1`` when the token is no molecule.
        """
        names = list(getattr(self, "molecule_names_", []))
        if token in names:
            return names.index(token)
        if token in new_molecules:
            return len(names) + list(new_molecules).index(token)
        width = self._n_molecule_features
        if width == 0:
            return PAD
        row = None
        if molecule_features is not None and token in set(molecule_features.index.astype(str)):
            values = molecule_features.set_axis(molecule_features.index.astype(str))
            row = values.loc[token].to_numpy(dtype=np.float32).ravel()
            if row.size != width or not np.isfinite(row).all():
                raise ValueError(
                    f"molecule_features gives {token!r} {row.size} values (finite: "
                    f"{bool(np.isfinite(row).all())}); the model's molecules have {width} finite "
                    "features, as in the table given at setup."
                )
        elif _is_morgan(self.setup_args.get("molecule_features")):
            if token not in set(self.adata_var_names) and is_smiles(token):
                row = morgan_fingerprints([token]).to_numpy(dtype=np.float32)[0]
        if row is None:
            return PAD
        new_molecules[token] = row
        return len(names) + len(new_molecules) - 1

    def _unknown_token_hint(self) -> str:
        """What to do about a token the model cannot embed, for the model's kind of molecules."""
        if not getattr(self, "molecule_names_", None):
            return ""
        if self._n_molecule_features == 0:
            return (
                " This model learns one embedding per molecule (it was set up with "
                "molecule_features=None), so it cannot predict a molecule it was not trained "
                "on; set up with molecule_features (a DataFrame or 'morgan') to reach unseen "
                "molecules."
            )
        how = "a row of predict(molecule_features=...)"
        if _is_morgan(self.setup_args.get("molecule_features")):
            how = "a SMILES string (featurised with RDKit) or " + how
        return f" A molecule never seen by the model needs features: write it as {how}."

    def _condition_doses(self, dose, n_conditions: int) -> list[float | None]:
        """One dose (or None) per perturbation; errors name the bad value."""
        if dose is None:
            return [None] * n_conditions
        values = [dose] * n_conditions if np.ndim(dose) == 0 else list(dose)
        if len(values) != n_conditions:
            raise ValueError(
                f"Got {len(values)} doses for {n_conditions} perturbations; pass one dose, or one "
                "per perturbation."
            )
        out: list[float | None] = []
        for d in values:
            if d is None or (isinstance(d, float) and math.isnan(d)):
                out.append(None)
                continue
            try:
                d = float(d)
            except (TypeError, ValueError) as err:
                raise TypeError(f"A dose must be a number, got {d!r}.") from err
            if not math.isfinite(d) or d < 0:
                raise ValueError(f"Doses must be finite and >= 0 (0: no molecule), got {d}.")
            out.append(d)
        if any(d is not None for d in out) and not self.has_doses:
            raise ValueError(
                "This model has no doses (it was set up without dose_key, or no molecule was "
                "given at a dose): leave dose=None, or set up the training data with dose_key=."
            )
        return out

    def _check_molecule_doses(
        self, names: Sequence[str], mol_rows: Sequence[Sequence[int]], doses: Sequence
    ) -> None:
        """A model with doses needs a dose for every perturbation with a molecule."""
        if not self.has_doses:
            return
        for name, rows, dose in zip(names, mol_rows, doses, strict=True):
            if dose is None and any(r != PAD for r in rows):
                low, high = self.dose_range_
                raise ValueError(
                    f"{name!r} has a molecule: pass its dose, e.g. predict(..., dose=...) "
                    f"(training doses from {low:g} to {high:g}; 0 means no molecule)."
                )
