"""Loaders for the public data sets of the Doloris paper, harmonised to one ``obs`` schema.

Every loader downloads its data through :mod:`pertpy` (an optional dependency: ``pip install
pertpy "statsmodels<0.15"``) and returns an :class:`~anndata.AnnData` whose ``obs`` carries, next
to all of the data set's own columns:

``"perturbation"``
    The perturbed genes or the drug, with combinations joined by ``"+"`` in sorted order
    (``"KLF1+MAP2K6"``) and control cells written ``"ctrl"``.
``"cell_type"``
    The cell line (or cell type) as a string; a constant when the experiment used one cell line.
``"dose"``
    A float: the drug dose for drugs (in the unit recorded in ``uns``), 0 for genetic
    perturbations and for controls.
``"smiles"``
    The SMILES string of the drug, ``""`` when there is none (genetic data, controls, unknown
    drugs).

A data set column that already has one of these names is kept under ``"<name>_original"``.
``X`` is left as the data set gives it (raw counts or normalised values);
``uns["scdoloris_dataset"]`` records the data set's name, the pertpy function, whether ``X`` holds
raw counts, which original columns were mapped and which labels were read as controls.

The harmonising steps (``_harmonise_norman``, ``_harmonise_adamson``, ``_harmonise_sciplex3``)
are pure functions of an AnnData object, so that they can be checked on small objects without a
download.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._perturbation import normalize_perturbation

__all__ = ["norman_2019", "adamson_2016", "srivatsan_2020_sciplex3"]

CONTROL = "ctrl"
UNS_KEY = "scdoloris_dataset"
SCHEMA_COLUMNS = ("perturbation", "cell_type", "dose", "smiles")
_INSTALL_HINT = 'pip install pertpy "statsmodels<0.15"'
_COUNTS_LAYERS = ("counts", "count", "raw_counts")

# ---- Norman et al. 2019 (pertpy.data.norman_2019) ---------------------------------------------
# Perturbation columns in order of preference; Norman's gene symbols contain none of "+", ","
# and "_", so every one of these characters is read as a combination delimiter:
# "perturbation_name" ("KLF1+MAP2K6", "control"), "guide_ids" ("KLF1,MAP2K6", "" for controls),
# "guide_merged" ("ctrl+CEBPE", "ctrl"), "perturbation" (scPerturb: "CBL_UBASH3A", "control").
_NORMAN_PERTURBATION = ("perturbation_name", "guide_ids", "guide_merged", "perturbation")
_NORMAN_DELIMITERS = re.compile(r"[+,_]")
_NORMAN_CONTROLS = ("control", "ctrl", "", "non-targeting", "nontargeting", "negctrl", "nt")
_NORMAN_CONTROL_PATTERN = re.compile(r"^negctrl\d*$", re.IGNORECASE)
_NORMAN_CELL_LINE = "K562"

# ---- Adamson et al. 2016, UPR Perturb-seq (pertpy.data.adamson_2016_upr_perturb_seq) ----------
# scPerturb renamed the GEO "guide identity" to "perturbation": one sgRNA construct per cell,
# "<target>_<plasmid>" ("DDIT3_pDS263"); the non-targeting constructs are "62(mod)_pBA581",
# "63(mod)_pBA580" and "Gal4-4(mod)_pBA582"; "*" and missing values mark cells without a
# confidently assigned guide.
_ADAMSON_PERTURBATION = ("perturbation", "guide identity", "guide_identity", "perturbation_name")
_ADAMSON_PLASMID = re.compile(r"^(?P<target>.+?)_p[A-Za-z]+\d[\w.\-]*$")
_ADAMSON_CONTROLS = ("control", "ctrl", "", "non-targeting", "nontargeting")
_ADAMSON_UNASSIGNED = ("*",)
_ADAMSON_CELL_LINE = "K562"

# ---- Srivatsan et al. 2020, sci-Plex 3 (pertpy.data.srivatsan_2020_sciplex3) -------------------
# scPerturb renamed "product_name" to "perturbation" (vehicle written "control"), "dose" to
# "dose_value" (with "dose_unit" = "nM") and "cell_type" to "cell_line"; the file has no SMILES.
_SCIPLEX_PERTURBATION = ("perturbation", "product_name", "condition")
_SCIPLEX_CONTROLS = ("control", "ctrl", "", "vehicle", "dmso")
_SCIPLEX_DOSE = ("dose_value", "dose")
_SCIPLEX_DOSE_UNIT = ("dose_unit",)
_SCIPLEX_CELL_TYPE = ("cell_line", "cell_type")
_SCIPLEX_SMILES = ("SMILES", "smiles", "canonical_smiles")


# ------------------------------------------------------------------------------------------------
# Public loaders
# ------------------------------------------------------------------------------------------------
def norman_2019(**kwargs: Any) -> ad.AnnData:
    """Load Norman et al. 2019 (CRISPRa of single genes and gene pairs in K562 cells).

    This function **downloads data**: it calls :func:`pertpy.data.norman_2019`, which needs
    internet access on the first call and then reads the file pertpy cached in
    ``scanpy.settings.datasetdir`` (``./data`` in the working directory unless changed).

    Parameters
    ----------
    **kwargs
        Passed on to :func:`pertpy.data.norman_2019` (which takes none in pertpy 1.0).

    Returns
    -------
    The data set with the harmonised ``obs`` columns:
    ``"perturbation"`` (``"ctrl"``, ``"KLF1"``, ``"KLF1+MAP2K6"``; read from
    ``obs["perturbation_name"]``, or from ``"guide_ids"``, ``"guide_merged"`` or
    ``"perturbation"`` when that column is absent), ``"cell_type"`` (the ``"cell_line"`` column
    if there is one, else ``"K562"``), ``"dose"`` (0) and ``"smiles"`` (``""``). ``X`` is as
    pertpy gives it (log-normalised in pertpy's processed file, with counts in a layer);
    ``uns["scdoloris_dataset"]`` says whether ``X`` holds raw counts and names an integral
    counts layer (``"counts_layer"``) when there is one.

    Raises
    ------
    ImportError
        If pertpy is not installed.
    KeyError
        If no known perturbation column is present.

    Examples
    --------
    >>> from scdoloris.datasets import norman_2019
    >>> adata = norman_2019()  # doctest: +SKIP
    >>> adata.obs["perturbation"].value_counts().head()  # doctest: +SKIP
    """
    pertpy = _import_pertpy()
    return _harmonise_norman(pertpy.data.norman_2019(**kwargs), copy=False)


def adamson_2016(**kwargs: Any) -> ad.AnnData:
    """Load Adamson et al. 2016, the UPR Perturb-seq screen (CRISPRi of 82 genes in K562 cells).

    This function **downloads data** (about 0.5 GB): it calls
    :func:`pertpy.data.adamson_2016_upr_perturb_seq` (the scPerturb file
    ``AdamsonWeissman2016_GSM2406681_10X010``), which needs internet access on the first call and
    then reads the file pertpy cached in ``scanpy.settings.datasetdir`` (``./data`` in the
    working directory unless changed).

    Guides are merged to their target gene: the sgRNA construct ``"DDIT3_pDS263"`` becomes
    ``"DDIT3"``, and the non-targeting constructs (``"62(mod)_pBA581"``, ``"63(mod)_pBA580"``,
    ``"Gal4-4(mod)_pBA582"``: every target ending in ``"(mod)"``) become ``"ctrl"``. Cells without
    an assigned guide (label ``"*"`` or missing) are dropped; their number is recorded in
    ``uns["scdoloris_dataset"]["n_cells_dropped"]``.

    Parameters
    ----------
    **kwargs
        Passed on to :func:`pertpy.data.adamson_2016_upr_perturb_seq` (which takes none in
        pertpy 1.0).

    Returns
    -------
    The data set with the harmonised ``obs`` columns:
    ``"perturbation"`` (gene or ``"ctrl"``), ``"cell_type"`` (the ``"cell_line"`` column,
    ``"K562"``), ``"dose"`` (0) and ``"smiles"`` (``""``); the original guide labels stay in
    ``obs["perturbation_original"]``. ``X`` holds the raw UMI counts of the scPerturb file.

    Raises
    ------
    ImportError
        If pertpy is not installed.
    KeyError
        If no known perturbation column is present.

    Examples
    --------
    >>> from scdoloris.datasets import adamson_2016
    >>> adata = adamson_2016()  # doctest: +SKIP
    >>> adata.obs["perturbation"].nunique()  # doctest: +SKIP
    """
    pertpy = _import_pertpy()
    return _harmonise_adamson(pertpy.data.adamson_2016_upr_perturb_seq(**kwargs), copy=False)


def srivatsan_2020_sciplex3(
    *, smiles: Mapping[str, str] | None = None, **kwargs: Any
) -> ad.AnnData:
    """Load sci-Plex 3 of Srivatsan et al. 2020 (188 drugs at 4 doses in A549, K562, MCF7).

    This function **downloads data** (several GB, about 650,000 cells): it calls
    :func:`pertpy.data.srivatsan_2020_sciplex3` (the scPerturb file
    ``SrivatsanTrapnell2020_sciplex3``), which needs internet access on the first call and then
    reads the file pertpy cached in ``scanpy.settings.datasetdir`` (``./data`` in the working
    directory unless changed).

    Each cell received one drug (or the vehicle), so drug names are never split; the ``"+"`` of a
    name such as ``"(+)-JQ1"`` is written ``"plus"`` (``"(plus)-JQ1"``) so that ``"+"`` keeps
    meaning a combination; the renamed drugs are listed in
    ``uns["scdoloris_dataset"]["renamed_perturbations"]``.

    Parameters
    ----------
    smiles
        Optional SMILES string per drug, keyed by the harmonised drug name (or the original
        one). The scPerturb file has no SMILES column, so without this mapping ``"smiles"`` is
        ``""``; a SMILES column in the data (``"SMILES"``, ``"smiles"``) is used otherwise.
    **kwargs
        Passed on to :func:`pertpy.data.srivatsan_2020_sciplex3` (which takes none in
        pertpy 1.0).

    Returns
    -------
    The data set with the harmonised ``obs`` columns:
    ``"perturbation"`` (drug name, vehicle as ``"ctrl"``), ``"cell_type"`` (the ``"cell_line"``
    column: ``"A549"``, ``"K562"``, ``"MCF7"``), ``"dose"`` (from ``"dose_value"``, in the unit
    of the ``"dose_unit"`` column, nM in the scPerturb file; 0 for the vehicle) and
    ``"smiles"``. The unit is stored in ``uns["scdoloris_dataset"]["dose_unit"]``. ``X`` holds
    the raw UMI counts of the scPerturb file.

    Raises
    ------
    ImportError
        If pertpy is not installed.
    KeyError
        If no known perturbation, dose or cell line column is present.
    ValueError
        If the ``"dose_unit"`` column mixes several units.

    Examples
    --------
    >>> from scdoloris.datasets import srivatsan_2020_sciplex3
    >>> adata = srivatsan_2020_sciplex3()  # doctest: +SKIP
    >>> adata.uns["scdoloris_dataset"]["dose_unit"]  # doctest: +SKIP
    'nM'
    """
    pertpy = _import_pertpy()
    return _harmonise_sciplex3(
        pertpy.data.srivatsan_2020_sciplex3(**kwargs), smiles=smiles, copy=False
    )


# ------------------------------------------------------------------------------------------------
# Harmonising steps (pure functions of an AnnData object)
# ------------------------------------------------------------------------------------------------
def _harmonise_norman(adata: ad.AnnData, *, copy: bool = True) -> ad.AnnData:
    """Add the harmonised schema to pertpy's Norman 2019 data (see :func:`norman_2019`).

    With ``copy=True`` (the default) the input is left untouched.
    """
    obs = adata.obs
    pert_col = _find_column(obs, _NORMAN_PERTURBATION, "norman_2019", "the perturbation")
    labels, keep, info = _harmonise_labels(
        obs[pert_col],
        split=lambda label: _NORMAN_DELIMITERS.split(label),
        is_control=_control_test(_NORMAN_CONTROLS, _NORMAN_CONTROL_PATTERN),
    )
    return _finish_genetic(
        adata,
        copy,
        keep,
        "norman_2019",
        "pertpy.data.norman_2019",
        labels,
        pert_col,
        info,
        _NORMAN_CELL_LINE,
    )


def _finish_genetic(
    adata: ad.AnnData,
    copy: bool,
    keep: np.ndarray,
    name: str,
    source: str,
    labels,
    pert_col: str,
    info: dict,
    default_cell_line: str,
) -> ad.AnnData:
    """The schema of a genetic screen: no dose, no SMILES, the cell line as cell type."""
    obs = adata.obs
    cell_col = _find_column(obs, ("cell_line",), name, "the cell line", required=False)
    return _finish(
        adata,
        copy=copy,
        keep=keep,
        name=name,
        source=source,
        perturbation=labels,
        cell_type=_string_column(obs, cell_col, default_cell_line),
        dose=np.zeros(adata.n_obs),
        smiles=np.full(adata.n_obs, "", dtype=object),
        columns={"perturbation": pert_col, "cell_type": cell_col or "", "dose": "", "smiles": ""},
        extra={**info, "dose_unit": "", "cell_type_default": default_cell_line},
    )


def _harmonise_adamson(adata: ad.AnnData, *, copy: bool = True) -> ad.AnnData:
    """Add the harmonised schema to pertpy's Adamson 2016 UPR Perturb-seq data.

    See :func:`adamson_2016`. With ``copy=True`` (the default) the input is left untouched.
    """
    obs = adata.obs
    pert_col = _find_column(obs, _ADAMSON_PERTURBATION, "adamson_2016", "the perturbation")
    labels, keep, info = _harmonise_labels(
        obs[pert_col],
        split=lambda label: [_adamson_target(part) for part in label.split("+")],
        is_control=_control_test(_ADAMSON_CONTROLS, re.compile(r"\(mod\)$", re.IGNORECASE)),
        unassigned=_ADAMSON_UNASSIGNED,
    )
    return _finish_genetic(
        adata,
        copy,
        keep,
        "adamson_2016",
        "pertpy.data.adamson_2016_upr_perturb_seq",
        labels,
        pert_col,
        info,
        _ADAMSON_CELL_LINE,
    )


def _harmonise_sciplex3(
    adata: ad.AnnData, *, smiles: Mapping[str, str] | None = None, copy: bool = True
) -> ad.AnnData:
    """Add the harmonised schema to pertpy's sci-Plex 3 data (see :func:`srivatsan_2020_sciplex3`).

    With ``copy=True`` (the default) the input is left untouched.
    """
    name = "srivatsan_2020_sciplex3"
    obs = adata.obs
    pert_col = _find_column(obs, _SCIPLEX_PERTURBATION, name, "the drug")
    dose_col = _find_column(obs, _SCIPLEX_DOSE, name, "the dose")
    cell_col = _find_column(obs, _SCIPLEX_CELL_TYPE, name, "the cell line")
    unit_col = _find_column(obs, _SCIPLEX_DOSE_UNIT, name, "the dose unit", required=False)
    smiles_col = _find_column(obs, _SCIPLEX_SMILES, name, "the SMILES", required=False)

    renamed: dict[str, str] = {}

    def split(label: str) -> list[str]:
        # One drug per cell: never split, but keep "+" free for combinations.
        if "+" in label:
            renamed[label.strip()] = label.strip().replace("+", "plus")
        return [label.replace("+", "plus")]

    labels, keep, info = _harmonise_labels(
        obs[pert_col], split=split, is_control=_control_test(_SCIPLEX_CONTROLS)
    )
    control = labels == CONTROL
    treated = keep & ~control

    raw_dose = pd.to_numeric(pd.Series(np.asarray(obs[dose_col], dtype=object)), errors="coerce")
    dose = np.where(control, 0.0, raw_dose.to_numpy(dtype=float))
    unit = ""
    if unit_col is not None:
        units = _present_strings(np.asarray(obs[unit_col], dtype=object)[treated])
        if len(units) > 1:
            raise ValueError(
                f"{name}: the column {unit_col!r} mixes dose units {units}; convert the doses "
                "to one unit before harmonising."
            )
        unit = units[0] if units else ""

    drug_smiles = np.full(adata.n_obs, "", dtype=object)
    if smiles_col is not None:
        column = np.asarray(obs[smiles_col], dtype=object)
        drug_smiles[:] = [v.strip() if isinstance(v, str) else "" for v in column]
        drug_smiles[np.isin(drug_smiles, ["nan", "None", "NaN"])] = ""
    if smiles is not None:
        original = np.asarray(obs[pert_col], dtype=object)
        for i in np.flatnonzero(treated):
            found = smiles.get(labels[i], smiles.get(str(original[i]).strip()))
            if found is not None:
                drug_smiles[i] = str(found)
    drug_smiles[control] = ""
    without = sorted({str(labels[i]) for i in np.flatnonzero(treated) if drug_smiles[i] == ""})

    return _finish(
        adata,
        copy=copy,
        keep=keep,
        name=name,
        source="pertpy.data.srivatsan_2020_sciplex3",
        perturbation=labels,
        cell_type=_string_column(obs, cell_col, "unknown"),
        dose=dose,
        smiles=drug_smiles,
        columns={
            "perturbation": pert_col,
            "cell_type": cell_col,
            "dose": dose_col,
            "smiles": smiles_col or "",
        },
        extra={
            **info,
            "dose_unit": unit,
            "dose_unit_column": unit_col or "",
            "n_treated_cells_without_dose": int(np.isnan(dose[treated]).sum()),
            "renamed_perturbations": dict(sorted(renamed.items())),
            "drugs_without_smiles": without,
        },
    )


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def _import_pertpy():
    """Import pertpy, or raise an ImportError with the install command."""
    try:
        import pertpy
    except ImportError as err:
        raise ImportError(
            "Loading the public data sets needs pertpy, which is not installed. Install it with "
            f"`{_INSTALL_HINT}`."
        ) from err
    return pertpy


def _find_column(
    obs: pd.DataFrame, candidates: Sequence[str], dataset: str, what: str, required: bool = True
) -> str | None:
    """Return the first candidate present in ``obs`` (KeyError listing the columns if required)."""
    for column in candidates:
        if column in obs.columns:
            return column
    if required:
        raise KeyError(
            f"{dataset}: found no column for {what} in adata.obs; looked for "
            f"{list(candidates)}, the columns present are {list(map(str, obs.columns))}. "
            "The data set layout may have changed: rename the column and use the harmonising "
            "function of scdoloris.datasets._loaders."
        )
    return None


def _control_test(
    labels: Iterable[str], pattern: re.Pattern[str] | None = None
) -> Callable[[str], bool]:
    lowered = {label.strip().lower() for label in labels}

    def is_control(value: str) -> bool:
        value = value.strip()
        return value.lower() in lowered or bool(pattern is not None and pattern.search(value))

    return is_control


def _adamson_target(construct: str) -> str:
    """``"DDIT3_pDS263"`` -> ``"DDIT3"``; a label without a plasmid suffix is kept."""
    construct = construct.strip()
    match = _ADAMSON_PLASMID.match(construct)
    return match.group("target") if match else construct


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _harmonise_labels(
    column: pd.Series,
    *,
    split: Callable[[str], list[str]],
    is_control: Callable[[str], bool],
    unassigned: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Map raw perturbation labels to the schema (``"ctrl"``, sorted ``"A+B"``).

    Works on the unique labels. Returns the new labels (object array, ``""`` for dropped cells),
    the mask of kept cells (label neither missing nor in ``unassigned``) and a record of the
    control and dropped labels.
    """
    values = np.asarray(column, dtype=object)
    codes, uniques = pd.factorize(pd.Series(values), use_na_sentinel=True)
    mapped: list[str] = []
    controls: list[str] = []
    dropped: list[str] = []
    unassigned_set = {u.strip() for u in unassigned}
    for raw in uniques:
        if _is_missing(raw) or str(raw).strip() in unassigned_set:
            dropped.append(str(raw))
            mapped.append("")
            continue
        label = str(raw)
        if is_control(label):
            controls.append(label)
            mapped.append(CONTROL)
            continue
        parts = [part.strip() for part in split(label)]
        parts = [CONTROL if part and is_control(part) else part for part in parts]
        try:
            new = normalize_perturbation("+".join(parts))
        except ValueError as err:
            raise ValueError(f"Cannot read the perturbation label {label!r}: {err}") from err
        if new == CONTROL:
            controls.append(label)
        mapped.append(new)
    mapped_arr = np.asarray(mapped + [""], dtype=object)  # code -1 (missing) -> ""
    labels = mapped_arr[codes]
    keep = (codes >= 0) & (labels != "")
    n_missing = int((codes < 0).sum())
    if n_missing:
        dropped.append("<missing>")
    info = {
        "control_labels": sorted(set(controls)),
        "dropped_labels": sorted(set(dropped)),
        "n_cells_dropped": int((~keep).sum()),
    }
    return labels, keep, info


def _present_strings(values: np.ndarray) -> list[str]:
    return sorted({str(v).strip() for v in values if not _is_missing(v) and str(v).strip()})


def _string_column(obs: pd.DataFrame, column: str | None, default: str) -> np.ndarray:
    if column is None:
        return np.full(len(obs), default, dtype=object)
    values = np.asarray(obs[column], dtype=object)
    return np.asarray([default if _is_missing(v) else str(v) for v in values], dtype=object)


def _is_integral(matrix: Any, chunk: int = 5_000_000) -> bool:
    """Whether every stored value is a finite, non-negative integer (raw counts)."""
    if matrix is None:
        return False
    if sparse.issparse(matrix):
        values = np.asarray(matrix.data)
        if values.size == 0:
            return True
    else:
        values = np.asarray(matrix)
    if values.size == 0:
        return True
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return bool(values.min() >= 0)
    if not np.issubdtype(values.dtype, np.floating):
        return False
    flat = values.reshape(-1)
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        if not np.all(np.isfinite(part)) or np.any(part < 0) or np.any(part != np.round(part)):
            return False
    return True


def _free_name(obs: pd.DataFrame, column: str) -> str:
    name = f"{column}_original"
    while name in obs.columns:
        name = f"{name}_"
    return name


def _finish(
    adata: ad.AnnData,
    *,
    copy: bool,
    keep: np.ndarray,
    name: str,
    source: str,
    perturbation: np.ndarray,
    cell_type: np.ndarray,
    dose: np.ndarray,
    smiles: np.ndarray,
    columns: dict[str, str],
    extra: dict[str, Any],
) -> ad.AnnData:
    """Subset to the kept cells, write the schema columns and the ``uns`` record."""
    if keep.all():
        out = adata.copy() if copy else adata
    else:
        out = adata[keep].copy()
    obs = out.obs
    preserved: dict[str, str] = {}
    for column in SCHEMA_COLUMNS:
        if column in obs.columns:
            preserved[column] = _free_name(obs, column)
            obs.rename(columns={column: preserved[column]}, inplace=True)
    obs["perturbation"] = pd.Categorical(perturbation[keep].astype(str))
    obs["cell_type"] = pd.Categorical(cell_type[keep].astype(str))
    obs["dose"] = np.asarray(dose, dtype=np.float64)[keep]
    obs["smiles"] = pd.Categorical(smiles[keep].astype(str))

    counts_layer = ""
    for layer in _COUNTS_LAYERS:
        if layer in out.layers and _is_integral(out.layers[layer]):
            counts_layer = layer
            break
    out.uns[UNS_KEY] = {
        "name": name,
        "source": source,
        "X_is_raw_counts": _is_integral(out.X),
        "counts_layer": counts_layer,
        "columns": columns,
        "preserved_columns": preserved,
        **extra,
    }
    return out
