"""MuData input for DolorisModel: expression from one modality, conditions from any obs."""

from __future__ import annotations

from typing import Literal

import anndata as ad
import pandas as pd
from scvi.data import AnnDataManager
from scvi.data.fields import (
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalObsField,
    MuDataWrapper,
)

from .._constants import REGISTRY_KEYS
from .._fields import PerturbationTokenField, tokenize_column
from ._molecules import validate_dose_and_molecules

MuDataPerturbationTokenField = MuDataWrapper(PerturbationTokenField)


def obs_location(mdata, rna_modality: str, key: str | None) -> tuple[str | None, str | None]:
    """Where an obs column of a MuData lives: ``(modality or None for mdata.obs, column)``.

    Looked up in ``mdata.obs``, then in the expression modality's obs, then as
    ``"modality:column"``, then in the one other modality that has it.

    Examples
    --------
    >>> import mudata as md
    >>> rna = ad.AnnData(obs=pd.DataFrame({"cell_type": ["a"]}, index=["c1"]))
    >>> gdo = ad.AnnData(obs=pd.DataFrame({"guide": ["g1"]}, index=["c1"]))
    >>> mdata = md.MuData({"rna": rna, "gdo": gdo})
    >>> obs_location(mdata, "rna", "cell_type"), obs_location(mdata, "rna", "guide")
    (('rna', 'cell_type'), ('gdo', 'guide'))
    """
    if key is None:
        return rna_modality, None
    if key in mdata.obs:
        return None, key
    if key in mdata.mod[rna_modality].obs:
        return rna_modality, key
    if ":" in key:
        mod, column = key.split(":", 1)
        if mod in mdata.mod and column in mdata.mod[mod].obs:
            return mod, column
    holders = [m for m in mdata.mod if key in mdata.mod[m].obs]
    if len(holders) == 1:
        return holders[0], key
    if len(holders) > 1:
        raise ValueError(
            f"obs column {key!r} is in several modalities {holders}; name one as "
            f"'{holders[0]}:{key}'."
        )
    raise KeyError(
        f"{key!r} is not a column of mdata.obs (columns: {list(mdata.obs.columns)}) nor of any "
        f"modality's obs (e.g. {rna_modality!r}: {list(mdata.mod[rna_modality].obs.columns)})."
    )


def _check_modalities(mdata, modalities: set[str]) -> None:
    for mod in sorted(modalities):
        if not mdata.mod[mod].obs_names.equals(mdata.obs_names):
            raise ValueError(
                f"Modality {mod!r} does not hold the same cells in the same order as the MuData "
                f"({mdata.mod[mod].n_obs} vs {mdata.n_obs} cells). Keep the cells every "
                "modality has, e.g. `mu.pp.intersect_obs(mdata)` (muon), before the setup."
            )


def expression_view(mdata, rna_modality: str, keys: dict[str, str | None]) -> ad.AnnData:
    """An AnnData of the expression modality whose obs has the named columns (nothing copied).

    ``keys`` maps the names the model uses (the setup's keys) to MuData obs keys.
    """
    rna = mdata.mod[rna_modality]
    columns = {}
    for name, key in keys.items():
        if key is not None:
            mod, column = obs_location(mdata, rna_modality, key)
            frame = mdata.obs if mod is None else mdata.mod[mod].obs
            columns[name] = frame[column].to_numpy()
    obs = pd.DataFrame(columns, index=rna.obs_names)
    var = pd.DataFrame(index=rna.var_names)
    return ad.AnnData(X=rna.X, obs=obs, var=var, layers=dict(rna.layers))


class MuDataMixin:
    """``setup_mudata`` and MuData input for :class:`~scdoloris.DolorisModel`."""

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_modality: str = "rna",
        *,
        perturbation_key: str,
        control_group: str = "ctrl",
        cell_type_key: str | None = None,
        layer: str | None = None,
        combination_delimiter: str = "+",
        dose_key: str | None = None,
        molecule_features: pd.DataFrame | Literal["morgan"] | None = None,
        **kwargs,
    ):
        """Register a MuData (expression plus, e.g., a guide modality) with the model.

        Expression is read from the ``rna_modality`` modality (log-normalised, in ``X`` or in
        ``layer``); the perturbation, cell-type and dose columns may live in ``mdata.obs``, in
        the expression modality's obs, or in another modality's obs (``"gdo:assigned_guide"``
        or a column name only one modality has). Every modality used must hold the same cells
        in the same order as the MuData. The keys mean what they mean in
        :meth:`~scdoloris.DolorisModel.setup_anndata`.

        Parameters
        ----------
        mdata
            The MuData.
        rna_modality
            The modality with the expression.
        perturbation_key, control_group, cell_type_key, layer, combination_delimiter
            As in :meth:`~scdoloris.DolorisModel.setup_anndata`.
        dose_key, molecule_features
            As in :meth:`~scdoloris.DolorisModel.setup_anndata`.
        **kwargs
            Used by scvi-tools when transferring the setup to new data.

        Examples
        --------
        >>> mdata = md.MuData({"rna": rna, "gdo": guides})  # doctest: +SKIP
        >>> DolorisModel.setup_mudata(mdata, rna_modality="rna",
        ...     perturbation_key="gdo:assigned_guide", control_group="NT")  # doctest: +SKIP
        >>> model = DolorisModel(mdata)  # doctest: +SKIP
        """
        from mudata import MuData

        from ._setup import validate_setup

        setup_method_args = cls._get_setup_method_args(**locals())
        if not isinstance(mdata, MuData):
            raise TypeError(
                f"setup_mudata takes a MuData, got {type(mdata).__name__}; use setup_anndata "
                "for an AnnData."
            )
        if rna_modality not in mdata.mod:
            raise KeyError(
                f"rna_modality={rna_modality!r} is not a modality of the MuData "
                f"(modalities: {list(mdata.mod)})."
            )
        where = {
            key: obs_location(mdata, rna_modality, key)
            for key in (perturbation_key, cell_type_key, dose_key)
        }
        _check_modalities(mdata, {rna_modality} | {m for m, _ in where.values() if m})
        if kwargs.get("source_registry") is None:
            keys = (perturbation_key, cell_type_key, dose_key)
            view = expression_view(mdata, rna_modality, {k: k for k in keys})
            validate_setup(
                view, perturbation_key, control_group, cell_type_key, layer, combination_delimiter
            )
            tokens = tokenize_column(
                view.obs[perturbation_key].astype(str), control_group, combination_delimiter
            )
            validate_dose_and_molecules(
                view.obs, view.var_names, tokens, dose_key, molecule_features
            )

        def field_args(key):
            mod, column = where[key]
            return column, mod

        ct_column, ct_mod = field_args(cell_type_key)
        pert_column, pert_mod = field_args(perturbation_key)
        dose_column, dose_mod = field_args(dose_key)
        fields = [
            MuDataLayerField(
                REGISTRY_KEYS.X_KEY,
                layer,
                mod_key=rna_modality,
                is_count_data=False,
                mod_required=True,
            ),
            MuDataCategoricalObsField(REGISTRY_KEYS.CELL_TYPE_KEY, ct_column, mod_key=ct_mod),
            MuDataPerturbationTokenField(
                REGISTRY_KEYS.TOKENS_KEY,
                pert_column,
                control_group,
                combination_delimiter,
                mod_key=pert_mod,
            ),
            MuDataNumericalObsField(
                REGISTRY_KEYS.DOSE_KEY, dose_column, mod_key=dose_mod, required=False
            ),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    def _expression_input(self, adata):
        """Prediction input as an AnnData: a MuData becomes a view of its expression modality."""
        if isinstance(adata, ad.AnnData):
            return adata
        from mudata import MuData

        if not isinstance(adata, MuData):
            raise TypeError(f"Expected an AnnData of control cells, got {type(adata).__name__}.")
        rna = self.setup_args.get("rna_modality")
        if rna is None:
            raise TypeError(
                "This model was set up with an AnnData; pass the expression AnnData of the "
                "control cells (e.g. mdata.mod['rna']), not a MuData."
            )
        if rna not in adata.mod:
            raise KeyError(f"The MuData has no modality {rna!r} (modalities: {list(adata.mod)}).")
        key = self.setup_args.get("cell_type_key")
        if key is not None:
            try:
                obs_location(adata, rna, key)
            except KeyError:
                key = None  # the cell type is then given with cell_type=
        return expression_view(adata, rna, {} if key is None else {key: key})
