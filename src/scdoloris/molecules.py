"""Molecule features from SMILES: RDKit Morgan fingerprints (the optional ``chem`` extra).

Doloris encodes a molecule from a feature vector (see :doc:`/guide/data`). These helpers compute
the offline default, Morgan (ECFP-like) fingerprints, from SMILES strings. RDKit is an optional
dependency: install it with ``pip install 'scdoloris[chem]'``. Everything else in scdoloris
works without it, with features passed as a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["is_smiles", "morgan_fingerprints"]

CHEM_EXTRA_HINT = "install the optional chem extra: pip install 'scdoloris[chem]' (it adds RDKit)"


def _rdkit():
    """Import RDKit (silenced) or raise an ImportError naming the ``chem`` extra."""
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdFingerprintGenerator
    except ImportError as err:
        raise ImportError(
            f"Molecule features from SMILES need RDKit: {CHEM_EXTRA_HINT}. Or pass "
            "molecule_features= as a pandas DataFrame of your own vectors, indexed by molecule."
        ) from err
    RDLogger.DisableLog("rdApp.*")
    return Chem, rdFingerprintGenerator


def is_smiles(token: str) -> bool:
    """Whether ``token`` parses as a SMILES string with RDKit (white space never does).

    Short gene-like strings can be valid SMILES (``"NO"``, ``"CS"``); the model therefore never
    reads a measured gene as a molecule.

    Examples
    --------
    >>> is_smiles("CC(=O)Oc1ccccc1C(=O)O")
    True
    >>> is_smiles("KLF1")
    False
    """
    Chem, _ = _rdkit()
    token = str(token)
    if not token or any(c.isspace() for c in token):
        return False
    return Chem.MolFromSmiles(token) is not None


def morgan_fingerprints(
    smiles: Sequence[str] | Mapping[str, str] | pd.Series,
    radius: int = 2,
    n_bits: int = 2048,
) -> pd.DataFrame:
    """Morgan fingerprints (radius 2, 2048 bits by default) of molecules given as SMILES.

    Parameters
    ----------
    smiles
        SMILES strings, or a mapping (dict or Series) from a molecule's name to its SMILES.
        The result is indexed by the SMILES in the first case and by the names in the second,
        so that it can be passed to ``setup_anndata(molecule_features=...)`` whichever of the
        two the perturbation column holds.
    radius
        Radius of the circular substructures (2 gives ECFP4-like fingerprints).
    n_bits
        Length of the bit vector.

    Returns
    -------
    A float32 DataFrame of 0/1 bits, one row per molecule and one column per bit.

    Raises
    ------
    ImportError
        Without RDKit (the ``chem`` extra).
    ValueError
        For a string that is not valid SMILES (naming it).

    Examples
    --------
    >>> fp = morgan_fingerprints({"ethanol": "CCO", "phenol": "c1ccccc1O"})
    >>> fp.shape
    (2, 2048)
    """
    Chem, generators = _rdkit()
    if isinstance(smiles, str):
        raise TypeError("Pass a list of SMILES strings (or a name -> SMILES mapping), not a str.")
    if isinstance(smiles, pd.Series):
        pairs = [(str(k), str(v)) for k, v in smiles.items()]
    elif isinstance(smiles, Mapping):
        pairs = [(str(k), str(v)) for k, v in smiles.items()]
    else:
        pairs = [(str(s), str(s)) for s in smiles]
    table: dict[str, str] = {}
    for name, value in pairs:
        if table.setdefault(name, value) != value:
            raise ValueError(
                f"Molecule {name!r} has two SMILES, {table[name]!r} and {value!r}; give one."
            )
    names, values = list(table), list(table.values())
    if radius < 0 or n_bits < 1:
        raise ValueError(f"radius must be >= 0 and n_bits >= 1, got {radius} and {n_bits}.")
    generator = generators.GetMorganGenerator(radius=int(radius), fpSize=int(n_bits))
    rows = np.zeros((len(values), int(n_bits)), dtype=np.float32)
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        mol = None if any(c.isspace() for c in value) else Chem.MolFromSmiles(value)
        if mol is None:
            raise ValueError(
                f"{value!r} (molecule {name!r}) is not a valid SMILES string. Fix or drop it, or "
                "pass your own molecule_features DataFrame for molecules without SMILES."
            )
        rows[i] = generator.GetFingerprintAsNumPy(mol)
    index = pd.Index(names, name="molecule")
    return pd.DataFrame(rows, index=index, columns=[f"bit{j}" for j in range(int(n_bits))])
