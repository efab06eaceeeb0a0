"""The checks of ``setup_anndata`` and the view of a saved registration."""

from __future__ import annotations

import anndata as ad
import numpy as np

from .._anndata_utils import check_log_normalised, close_matches, did_you_mean, get_matrix
from .._fields import tokenize_column
from ._data import BACKED_CHUNK

COMMON_CONTROL_LABELS = ("ctrl", "control", "non-targeting", "NT", "unperturbed", "DMSO")


def print_saved_setup(registry: dict) -> None:
    """Print a saved registration (a model loaded without data): setup arguments, summary and
    data registry, as scvi-tools' ``view_anndata_setup`` does for a registered AnnData."""
    import rich
    import rich.console
    import rich.pretty  # noqa: F401  scvi-tools calls rich.pretty, which rich>=14 no longer imports
    from scvi.data import AnnDataManager
    from scvi.data._constants import _SCVI_VERSION_KEY

    rich.print(
        f"Anndata setup with scvi-tools version {registry[_SCVI_VERSION_KEY]}, saved with the "
        "model (no data attached: load with adata= to see the fields' details)."
    )
    rich.print()
    AnnDataManager.view_setup_method_args(registry)
    console = rich.console.Console()
    console.print(
        AnnDataManager._view_summary_stats(
            AnnDataManager._get_summary_stats_from_registry(registry)
        )
    )
    console.print(
        AnnDataManager._view_data_registry(
            AnnDataManager._get_data_registry_from_registry(registry)
        )
    )


def validate_setup(
    adata: ad.AnnData,
    perturbation_key: str,
    control_group: str,
    cell_type_key: str | None,
    layer: str | None,
    delimiter: str,
) -> None:
    """Check the inputs of setup_anndata; errors name the bad value and the fix."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError("The AnnData has no cells (n_obs == 0).")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"var_names has duplicates (e.g. {dup}). Run adata.var_names_make_unique()."
        )
    columns = [str(c) for c in adata.obs.columns]
    for what, key in (("perturbation_key", perturbation_key), ("cell_type_key", cell_type_key)):
        if key is not None and key not in adata.obs:
            raise KeyError(
                f"{what}={key!r} is not a column of adata.obs (columns: {columns})"
                + did_you_mean(key, columns)
            )
    column = adata.obs[perturbation_key]
    if column.isna().any():
        bad = column.index[column.isna()][:5].tolist()
        raise ValueError(
            f"obs[{perturbation_key!r}] has {int(column.isna().sum())} missing values (e.g. "
            f"cells {bad}). Fill them (the control label is {control_group!r}) or drop those cells."
        )
    labels = column.astype(str)
    tokens = tokenize_column(labels, control_group, delimiter, perturbation_key)
    is_control = np.array([len(t) == 0 for t in tokens])
    if not is_control.any():
        values = sorted(labels.unique().tolist())
        hints = close_matches(control_group, values) or [
            v for v in values if v.lower() in {c.lower() for c in COMMON_CONTROL_LABELS}
        ]
        raise ValueError(
            f"No control cells: no value of obs[{perturbation_key!r}] equals "
            f"control_group={control_group!r}"
            + (
                f". Did you mean control_group={hints[0]!r}?"
                if hints
                else f" (values: {values[:10]})."
            )
        )
    if cell_type_key is not None:
        ct = adata.obs[cell_type_key]
        if ct.isna().any():
            raise ValueError(
                f"obs[{cell_type_key!r}] has {int(ct.isna().sum())} missing values; fill or drop "
                "those cells."
            )
        ct = ct.astype(str).to_numpy()
        lacking = sorted(set(ct) - set(ct[is_control]))
        if lacking:
            raise ValueError(
                f"Cell types without control cells: {lacking}. Every cell type needs controls "
                "(the model learns its control distribution); drop those cells or add controls."
            )
    X = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"layer {layer!r}"
    if adata.isbacked:  # on disk: check in chunks of cells
        for start in range(0, adata.n_obs, BACKED_CHUNK):
            check_log_normalised(X[start : start + BACKED_CHUNK], where)
    else:
        check_log_normalised(X, where)
