"""The scvi-tools field that registers perturbations as padded matrices of gene tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi.data.fields import ObsmField

from ._constants import PAD, TOKENS_OBSM_KEY
from ._perturbation import parse_perturbation


def tokenize_column(
    values: pd.Series | Sequence[str],
    control_group: str | Sequence[str],
    delimiter: str,
    column: str = "perturbation",
) -> list[tuple[str, ...]]:
    """Parse every perturbation string of a column; errors name the offending row."""
    series = pd.Series(values)
    out: list[tuple[str, ...]] = []
    for name, value in series.items():
        if not isinstance(value, str):
            raise TypeError(
                f"obs[{column!r}] has a value that is not a string at obs name {name!r}: "
                f"{value!r}. Perturbations must be strings such as 'KLF1' or 'KLF1+MAP2K6'; "
                "fill or drop missing values first (e.g. `adata = adata[adata.obs[key].notna()]`)."
            )
        out.append(parse_perturbation(value, control_group, delimiter))
    return out


def token_matrix(tokens: list[tuple[str, ...]], vocabulary: Sequence[str], width: int = 0):
    """Cells x max_tokens float32 matrix of vocabulary indices, padded with -1.

    Examples
    --------
    >>> token_matrix([("A",), ("A", "B"), ()], ["A", "B"])
    array([[ 0., -1.],
           [ 0.,  1.],
           [-1., -1.]], dtype=float32)
    """
    index = {t: i for i, t in enumerate(vocabulary)}
    width = max([width, 1] + [len(t) for t in tokens])
    mat = np.full((len(tokens), width), PAD, dtype=np.float32)
    for i, toks in enumerate(tokens):
        mat[i, : len(toks)] = [index[t] for t in toks]
    return mat


class PerturbationTokenField(ObsmField):
    """Registers ``obs[perturbation_key]`` as token indices in ``obsm['_scdoloris_tokens']``.

    The vocabulary (every token in the registered data, sorted) is part of the field's state
    registry, so it is saved with the model. On transfer to new data the source vocabulary is
    kept and new tokens are appended, so no unseen category ever breaks the transfer.
    """

    VOCAB_KEY = "vocabulary"

    def __init__(
        self,
        registry_key: str,
        perturbation_key: str,
        control_group: str | Sequence[str],
        delimiter: str,
    ):
        super().__init__(registry_key, TOKENS_OBSM_KEY, correct_data_format=True)
        self.perturbation_key = perturbation_key
        self.control_group = control_group
        self.delimiter = delimiter

    def _write(self, adata: AnnData, vocabulary: list[str], width: int = 0) -> list[str]:
        column = adata.obs[self.perturbation_key]
        if column.notna().all():  # numbers as labels (e.g. guide ids) are read as strings
            column = column.astype(str)
        tokens = tokenize_column(
            column,
            self.control_group,
            self.delimiter,
            self.perturbation_key,
        )
        known = set(vocabulary)
        vocabulary = list(vocabulary) + sorted({t for ts in tokens for t in ts} - known)
        adata.obsm[TOKENS_OBSM_KEY] = token_matrix(tokens, vocabulary, width)
        return vocabulary

    def _setup_column_names(self, adata: AnnData) -> np.ndarray:
        """Column names of the token matrix: its positions (scvi-tools would log that it
        generates them)."""
        return np.arange(self.get_field_data(adata).shape[1])

    def get_summary_stats(self, state_registry: dict) -> dict:
        """The number of distinct tokens and the most tokens one cell combines."""
        return {
            "n_perturbation_tokens": len(state_registry[self.VOCAB_KEY]),
            "max_tokens_per_cell": len(state_registry[self.COLUMN_NAMES_KEY]),
        }

    def register_field(self, adata: AnnData) -> dict:
        vocabulary = self._write(adata, [])
        state = super().register_field(adata)
        state[self.VOCAB_KEY] = vocabulary
        return state

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        width = len(state_registry[self.COLUMN_NAMES_KEY])
        vocabulary = self._write(adata_target, state_registry[self.VOCAB_KEY], width)
        n_cols = adata_target.obsm[TOKENS_OBSM_KEY].shape[1]
        if n_cols > width:
            raise ValueError(
                f"obs[{self.perturbation_key!r}] combines up to {n_cols} perturbations in one "
                f"cell, more than the {width} seen when the model was set up."
            )
        return {self.COLUMN_NAMES_KEY: np.arange(width), self.VOCAB_KEY: vocabulary}
