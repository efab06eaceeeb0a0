"""The batch form of ``DolorisModel.predict``: a DataFrame of conditions in, one AnnData out."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

CONDITION_COLUMNS = ("perturbation", "dose", "cell_type")


def _optional(values: pd.Series) -> list:
    """Column values with missing entries as None."""
    return [None if pd.isna(v) else v for v in values.tolist()]


def predict_table(model, adata_ctrl, table: pd.DataFrame, cell_type, dose, options) -> ad.AnnData:
    """Predict every row of ``table`` (perturbation, optional dose and cell type) from the controls.

    Rows sharing a cell type are predicted together (one encoding of the controls); the blocks
    come back in the order of the rows, ``obs`` always has a ``dose`` column (NaN without a
    dose) and ``uns["scdoloris"]["conditions"]`` lists the rows.

    Parameters
    ----------
    model
        A trained :class:`~scdoloris.DolorisModel`.
    adata_ctrl
        The control cells, as for ``predict``.
    table
        The conditions: a ``perturbation`` column, optional ``dose`` and ``cell_type`` columns.
    cell_type, dose
        ``predict``'s arguments; only allowed when the table lacks the column.
    options
        The other arguments of ``predict`` (:class:`~._prediction.PredictOptions`).
    """
    columns = [str(c) for c in table.columns]
    unknown = sorted(set(columns) - set(CONDITION_COLUMNS))
    if "perturbation" not in columns or unknown:
        raise ValueError(
            "A table of conditions needs a 'perturbation' column and may have 'dose' and "
            f"'cell_type' columns; got columns {columns}."
        )
    if len(table) == 0:
        raise ValueError("Pass at least one perturbation (the table of conditions is empty).")
    for name, value in (("cell_type", cell_type), ("dose", dose)):
        if name in columns and value is not None:
            raise ValueError(
                f"Give {name} either as a column of the table or as the argument, not both."
            )
    perturbations = table["perturbation"]
    if perturbations.isna().any():
        raise ValueError(
            "The table's 'perturbation' column has missing values; write controls as the "
            "control label."
        )
    perturbations = perturbations.astype(str).tolist()
    n_rows = len(perturbations)
    doses = _optional(table["dose"]) if "dose" in columns else [dose] * n_rows
    cell_types = _optional(table["cell_type"]) if "cell_type" in columns else [cell_type] * n_rows
    groups: dict = {}
    for row, ct in enumerate(cell_types):
        groups.setdefault(None if ct is None else str(ct), []).append(row)

    blocks: dict[int, ad.AnnData] = {}
    uns: dict = {}
    for ct, rows in groups.items():
        pred = model.predict(
            adata_ctrl,
            [perturbations[r] for r in rows],
            cell_type=ct,
            dose=[doses[r] for r in rows],
            **options.kwargs(include_controls=False),
        )
        uns = uns or dict(pred.uns["scdoloris"])
        n = pred.n_obs // len(rows)
        for k, r in enumerate(rows):
            blocks[r] = pred[k * n : (k + 1) * n]
    out = ad.concat([blocks[r] for r in range(n_rows)], merge="same")
    out.obs_names = [f"pred-{i}" for i in range(out.n_obs)]
    if "dose" not in out.obs:
        out.obs.insert(1, "dose", np.nan)
    for key in ("perturbation", "cell_type"):
        out.obs[key] = pd.Categorical(out.obs[key].astype(str))
    names = [str(blocks[r].obs["perturbation"].iloc[0]) for r in range(n_rows)]
    uns.pop("mask_matched_conditions", None)
    uns.pop("doses", None)
    uns["perturbations"] = names
    uns["conditions"] = {
        "perturbation": names,
        "dose": [np.nan if d is None else float(d) for d in doses],
        "cell_type": ["" if ct is None else str(ct) for ct in cell_types],
    }
    out.uns["scdoloris"] = uns
    if options.include_controls:
        out = _append_controls(model, out, adata_ctrl, groups, options.layer)
    return out


def _append_controls(model, pred: ad.AnnData, adata_ctrl, groups: dict, layer) -> ad.AnnData:
    """The input cells after the predicted blocks, labelled with their cell type: the table's
    one cell type, else the input's cell-type column."""
    adata = model._expression_input(adata_ctrl)
    X = model._read_controls(adata, layer)
    cell_type = next(iter(groups)) if len(groups) == 1 else None
    key = model.setup_args.get("cell_type_key")
    if cell_type is None and len(groups) > 1 and (key is None or key not in adata.obs):
        raise ValueError(
            "include_controls with a table of several cell types labels the input cells by the "
            f"input's cell-type column {key!r}, which it lacks; predict each cell type "
            "separately instead."
        )
    _, names = model._cell_type_codes(adata, cell_type)
    return model._with_controls(pred, X, np.asarray(adata.obs_names, dtype=object), names)
