"""Which tokens are molecules, their feature table, and the dose levels of the additive prior."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._constants import PAD
from ..molecules import is_smiles, morgan_fingerprints

MORGAN = "morgan"
MAX_DOSE_LEVELS = 12


def _is_morgan(molecule_features) -> bool:
    return isinstance(molecule_features, str) and molecule_features == MORGAN


@dataclass
class MoleculeTable:
    """The molecules a model knows.

    Attributes
    ----------
    names
        One name per row: molecule tokens as written in the perturbation column (names or
        SMILES), then the other rows of a user's feature table.
    features
        Rows x features (raw values; zeros for molecules without features).
    has_features
        Whether each row has features (False for drugs known only by name).
    vocab_to_molecule
        Row of each training token, ``-1`` for tokens that are no molecule.
    """

    names: list[str]
    features: np.ndarray
    has_features: np.ndarray
    vocab_to_molecule: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])


def check_molecule_features(molecule_features, tokens: Collection[str], genes: Collection[str]):
    """Validate ``setup_anndata(molecule_features=...)``; errors name the bad value and the fix."""
    if molecule_features is None:
        return
    if isinstance(molecule_features, str):
        if molecule_features != MORGAN:
            raise ValueError(
                f"molecule_features={molecule_features!r} is not understood: pass 'morgan' (RDKit "
                "Morgan fingerprints of SMILES tokens), a pandas DataFrame indexed by molecule, "
                "or None (learned per-molecule embeddings)."
            )
        smiles = smiles_tokens(tokens, genes)  # raises an ImportError naming the chem extra
        if not smiles:
            raise ValueError(
                "molecule_features='morgan' needs molecules written as SMILES in the "
                f"perturbation column, but no token parses as SMILES (e.g. {sorted(tokens)[:5]}). "
                "If the column holds drug names, pass a DataFrame instead, e.g. "
                "scdoloris.molecules.morgan_fingerprints(dict(zip(names, smiles)))."
            )
        return
    if not isinstance(molecule_features, pd.DataFrame):
        raise TypeError(
            "molecule_features must be a pandas DataFrame indexed by molecule (as written in the "
            f"perturbation column), 'morgan' or None; got {type(molecule_features).__name__}."
        )
    index = molecule_features.index.astype(str)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"molecule_features has repeated index entries (e.g. {dup}).")
    if molecule_features.shape[1] == 0:
        raise ValueError("molecule_features has no columns; give one column per feature.")
    try:
        values = molecule_features.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            "molecule_features must hold numbers only (one column per feature); "
            f"converting it failed: {err}"
        ) from err
    if not np.isfinite(values).all():
        bad = index[~np.isfinite(values).all(1)][:5].tolist()
        raise ValueError(
            f"molecule_features has non-finite values for molecules {bad}; fill or drop them."
        )
    clash = sorted(set(index) & set(tokens) & set(genes))
    if clash:
        raise ValueError(
            f"Tokens {clash[:5]} are both measured genes and rows of molecule_features; a token "
            "must be one or the other. Rename the molecules in the perturbation column and the "
            "table."
        )


def smiles_tokens(tokens: Collection[str], genes: Collection[str]) -> list[str]:
    """Tokens read as molecules with ``molecule_features='morgan'``: SMILES, not measured genes."""
    genes = set(genes)
    return sorted(t for t in set(tokens) if t not in genes and is_smiles(t))


def molecule_table(
    vocabulary: Sequence[str],
    genes: Collection[str],
    molecule_features,
    dosed: Collection[str] = (),
) -> MoleculeTable:
    """Build the molecule table of a model.

    Parameters
    ----------
    vocabulary
        Training tokens.
    genes
        Tokens that are genes (measured or with gene embeddings): never molecules.
    molecule_features
        The setup argument: a DataFrame indexed by molecule, ``"morgan"`` or None.
    dosed
        Training tokens given at a positive dose; those without features (and not genes) become
        molecules known only by name.
    """
    genes = set(genes)
    if isinstance(molecule_features, pd.DataFrame):
        table = molecule_features.copy()
        table.index = table.index.astype(str)
    elif _is_morgan(molecule_features):
        table = morgan_fingerprints(smiles_tokens(vocabulary, genes))
    else:
        table = pd.DataFrame(index=pd.Index([], dtype=str))
    names = list(table.index)
    features = table.to_numpy(dtype=np.float32).reshape(len(names), table.shape[1])
    known = set(names)
    by_name = [t for t in vocabulary if t in set(dosed) and t not in known and t not in genes]
    names += by_name
    features = np.vstack([features, np.zeros((len(by_name), features.shape[1]), np.float32)])
    has_features = np.arange(len(names)) < len(names) - len(by_name)
    row = {n: i for i, n in enumerate(names)}
    vocab_to_molecule = np.array([row.get(t, PAD) for t in vocabulary], dtype=np.int64)
    return MoleculeTable(names, features, has_features, vocab_to_molecule)


def effective_tokens(tokens: np.ndarray, is_molecule: np.ndarray, dose: np.ndarray | None):
    """Token matrix with molecule tokens given at dose 0 removed (they mean "no molecule").

    Examples
    --------
    >>> effective_tokens(np.array([[0, 1], [0, 1]]), np.array([False, True]), np.array([1.0, 0]))
    array([[ 0,  1],
           [ 0, -1]])
    """
    tokens = np.asarray(tokens).astype(np.int64)
    if dose is None or not is_molecule.any():
        return tokens
    molecule = (tokens != PAD) & is_molecule[np.clip(tokens, 0, None)]
    return np.where(molecule & (np.asarray(dose) <= 0)[:, None], PAD, tokens)


def dose_scale(
    tokens: np.ndarray, is_molecule: np.ndarray, dose: np.ndarray
) -> tuple[float, float]:
    """Smallest positive and largest dose of cells with a molecule token (1, 1 if none)."""
    molecule = ((tokens != PAD) & is_molecule[np.clip(tokens, 0, None)]).any(1)
    positive = np.asarray(dose)[molecule & (np.asarray(dose) > 0)]
    if positive.size == 0:
        return 1.0, 1.0
    return float(positive.min()), float(positive.max())


@dataclass
class DoseLevels:
    """The (molecule token, training dose) levels of the dose-aware additive prior.

    Attributes
    ----------
    token
        Vocabulary index of each level's token.
    dose
        Levels x 3 on the model's dose scale: the level's dose, the token's next lower level
        (0 for the lowest) and next higher level (``inf`` for the highest).
    cell_level
        Cells x tokens: the level of each molecule token of each cell (``-1`` elsewhere).
    """

    token: np.ndarray
    dose: np.ndarray
    cell_level: np.ndarray

    def __len__(self) -> int:
        return len(self.token)


def dose_levels(
    tokens: np.ndarray,
    is_molecule: np.ndarray,
    scaled_dose: np.ndarray,
    max_levels: int = MAX_DOSE_LEVELS,
) -> DoseLevels:
    """Group each molecule token's cells by dose into at most ``max_levels`` levels.

    Distinct doses are levels of their own (sci-Plex: 4 doses per drug); beyond ``max_levels``
    the doses are grouped by quantiles and a level sits at its cells' mean dose.

    Examples
    --------
    >>> lv = dose_levels(np.array([[0], [0], [0], [-1]]), np.array([True]),
    ...                  np.array([0.5, 1.0, 0.5, 0.0]))
    >>> lv.dose.tolist(), lv.cell_level.ravel().tolist()
    ([[0.5, 0.0, 1.0], [1.0, 0.5, inf]], [0, 1, 0, -1])
    """
    tokens = np.asarray(tokens)
    scaled_dose = np.asarray(scaled_dose, dtype=np.float64)
    cell_level = np.full(tokens.shape, PAD, dtype=np.int64)
    level_token: list[int] = []
    level_dose: list[list[float]] = []
    for v in np.flatnonzero(is_molecule):
        rows, cols = np.nonzero(tokens == v)
        keep = scaled_dose[rows] > 0
        rows, cols = rows[keep], cols[keep]
        if rows.size == 0:
            continue
        d = np.round(scaled_dose[rows], 9)
        values = np.unique(d)
        if values.size > max_levels:
            edges = np.quantile(d, np.linspace(0, 1, max_levels + 1)[1:-1])
            group = np.searchsorted(edges, d, side="right")
            present = np.unique(group)
            group = np.searchsorted(present, group)
            values = np.array([d[group == g].mean() for g in range(present.size)])
        else:
            group = np.searchsorted(values, d)
        first = len(level_token)
        cell_level[rows, cols] = first + group
        lows = np.concatenate([[0.0], values[:-1]])
        highs = np.concatenate([values[1:], [np.inf]])
        for x, lo, hi in zip(values, lows, highs, strict=True):
            level_token.append(int(v))
            level_dose.append([float(x), float(lo), float(hi)])
    return DoseLevels(
        np.asarray(level_token, dtype=np.int64),
        np.asarray(level_dose, dtype=np.float32).reshape(-1, 3),
        cell_level,
    )


def validate_dose_and_molecules(
    obs: pd.DataFrame,
    var_names: Collection[str],
    tokens: Sequence[tuple[str, ...]],
    dose_key: str | None,
    molecule_features,
) -> None:
    """Check ``dose_key`` and ``molecule_features`` of a setup; errors name the value and the fix."""
    if dose_key is not None:
        if dose_key not in obs:
            raise KeyError(
                f"dose_key={dose_key!r} is not a column of obs (columns: {list(obs.columns)})."
            )
        column = obs[dose_key]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise TypeError(
                f"obs[{dose_key!r}] must be numeric (one dose per cell, 0 for cells without a "
                f"molecule), not {column.dtype}. Convert it first, e.g. "
                f"adata.obs[{dose_key!r}] = pd.to_numeric(adata.obs[{dose_key!r}])."
            )
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            bad = column.index[~np.isfinite(values)][:5].tolist()
            raise ValueError(
                f"obs[{dose_key!r}] has {int((~np.isfinite(values)).sum())} missing or infinite "
                f"doses (e.g. cells {bad}). Give cells without a molecule dose 0."
            )
        if (values < 0).any():
            raise ValueError(
                f"obs[{dose_key!r}] has negative doses (minimum {values.min():g}); doses must be "
                ">= 0 (0: no molecule)."
            )
    all_tokens = {t for ts in tokens for t in ts}
    check_molecule_features(molecule_features, all_tokens, var_names)
    if isinstance(molecule_features, pd.DataFrame):
        index = set(molecule_features.index.astype(str))
        if not index & all_tokens:
            raise ValueError(
                "No perturbation token is a row of molecule_features (tokens e.g. "
                f"{sorted(all_tokens)[:5]}, rows e.g. {sorted(index)[:5]}). Index the table by the "
                "molecules as the perturbation column writes them (names or SMILES)."
            )
