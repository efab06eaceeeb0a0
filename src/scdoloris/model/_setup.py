"""Registering data with the model: ``setup_anndata``, its checks, and views of the setup."""

from __future__ import annotations

from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from scvi.data import AnnDataManager
from scvi.data._constants import _SETUP_ARGS_KEY
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField

from .._anndata_utils import (
    check_log_normalised,
    check_unique_var_names,
    close_matches,
    did_you_mean,
    get_matrix,
)
from .._constants import REGISTRY_KEYS
from .._fields import PerturbationTokenField, tokenize_column
from ._data import BACKED_CHUNK
from ._molecules import validate_dose_and_molecules

COMMON_CONTROL_LABELS = ("ctrl", "control", "non-targeting", "NT", "unperturbed", "DMSO")


class SetupMixin:
    """``setup_anndata`` and the views of the registration of :class:`~scdoloris.DolorisModel`."""

    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        perturbation_key: str,
        control_group: str = "ctrl",
        cell_type_key: str | None = None,
        layer: str | None = None,
        combination_delimiter: str = "+",
        dose_key: str | None = None,
        molecule_features: pd.DataFrame | Literal["morgan"] | None = None,
        **kwargs,
    ):
        """Register an AnnData of control and perturbed cells with the model.

        One perturbation column names every cell's perturbation, genetic or molecular: tokens
        joined by ``combination_delimiter`` (``"KLF1"``, ``"KLF1+MAP2K6"``, ``"panobinostat"``,
        ``"panobinostat+KLF1"``, ``"stim"``). Each token is read as

        * a **molecule** if it is a row of ``molecule_features`` (or, with ``"morgan"``, if it
          parses as SMILES and is not a measured gene): embedded from its features, and
          dose-gated when ``dose_key`` is given;
        * a **gene** if it is a measured gene (or in the model's ``gene_embeddings``): embedded
          through the gene graph;
        * anything else (a stimulation, a drug known only by name): a learned embedding, usable
          for perturbations seen in training. With ``dose_key``, such a token seen at a positive
          dose is a molecule without features: learned, and dose-gated.

        A combination is the sum of its tokens' embeddings, whatever their kinds.

        Parameters
        ----------
        adata
            Log-normalised expression (``sc.pp.normalize_total`` then ``sc.pp.log1p``) in ``X``
            or in ``layer``; dense or sparse.
        perturbation_key
            Column of ``adata.obs`` naming each cell's perturbation: ``"KLF1"``,
            ``"KLF1+MAP2K6"``, or the control label.
        control_group
            The label of control cells in ``obs[perturbation_key]``.
        cell_type_key
            Optional column of ``adata.obs`` with each cell's type (or any categorical
            covariate). Every cell type needs control cells.
        layer
            Layer with log-normalised expression; ``None`` uses ``adata.X``.
        combination_delimiter
            What joins the tokens of a combination.
        dose_key
            Optional numeric column of ``adata.obs`` with each cell's dose (0 for cells without
            a molecule), applied to every molecule token of the cell. A molecule at dose 0 is
            no perturbation (the cell counts as a control if nothing else perturbs it). Doses
            are in any unit; inside the model they are put on a log scale relative to the
            smallest and largest training dose (:func:`~scdoloris.module.encode_dose`).
        molecule_features
            How molecules are featurised: a pandas DataFrame indexed by molecule, written as in
            the perturbation column (names or SMILES), one numeric column per feature
            (fingerprints, Uni-Mol or other vectors; every row is kept with the model, so
            molecules never seen in training can be predicted); ``"morgan"``: RDKit Morgan
            fingerprints (radius 2, 2048 bits) of the tokens that are SMILES (needs the
            ``chem`` extra, ``pip install 'scdoloris[chem]'``; new SMILES are featurised at
            prediction too); ``None``: no features, molecules are learned per token and cannot
            be predicted unless seen in training.
        **kwargs
            Used by scvi-tools when transferring the setup to new data (``source_registry``).

        Notes
        -----
        Like every scvi-tools model this records the registration in ``adata.uns`` and adds
        ``obs['_scvi_labels']`` and ``obsm['_scdoloris_tokens']``; ``X``, ``var``, layers and
        the user's own columns are left as they are. A ``molecule_features`` DataFrame is kept
        in the registration (and saved with the model).

        Examples
        --------
        >>> DolorisModel.setup_anndata(adata, perturbation_key="perturbation",
        ...                            control_group="control")  # doctest: +SKIP
        >>> features = scdoloris.molecules.morgan_fingerprints(
        ...     dict(zip(adata.obs["perturbation"], adata.obs["smiles"])))  # doctest: +SKIP
        >>> DolorisModel.setup_anndata(adata, perturbation_key="perturbation",
        ...     cell_type_key="cell_type", dose_key="dose",
        ...     molecule_features=features)  # doctest: +SKIP
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if kwargs.get("source_registry") is None:
            validate_setup(
                adata, perturbation_key, control_group, cell_type_key, layer, combination_delimiter
            )
            validate_dose_and_molecules(
                adata.obs,
                adata.var_names,
                tokenize_column(
                    adata.obs[perturbation_key].astype(str), control_group, combination_delimiter
                ),
                dose_key,
                molecule_features,
            )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.CELL_TYPE_KEY, cell_type_key),
            PerturbationTokenField(
                REGISTRY_KEYS.TOKENS_KEY, perturbation_key, control_group, combination_delimiter
            ),
            NumericalObsField(REGISTRY_KEYS.DOSE_KEY, dose_key, required=False),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @property
    def setup_args(self) -> dict:
        """The arguments given to :meth:`setup_anndata`."""
        return dict(self.registry_[_SETUP_ARGS_KEY])

    @property
    def adata_var_names(self) -> list[str]:
        """The model's genes (of the expression modality, for a model set up with MuData)."""
        state = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
        return [str(g) for g in state["column_names"]]

    def view_anndata_setup(
        self, adata: ad.AnnData | None = None, hide_state_registries: bool = False
    ) -> None:
        """Print how the data were registered: the setup arguments, summary and data registry.

        On a model loaded without data it prints the registration saved with the model.

        Parameters
        ----------
        adata
            An AnnData set up for this model; default: the model's training data.
        hide_state_registries
            Leave out the details of each field (the vocabulary, the cell types, ...).

        Examples
        --------
        >>> model.view_anndata_setup()  # doctest: +SKIP
        >>> DolorisModel.load("doloris_model/").view_anndata_setup()  # doctest: +SKIP
        """
        import rich.pretty  # noqa: F401  scvi-tools calls rich.pretty, which rich>=14 no longer imports

        if adata is not None or self.adata is not None:
            return super().view_anndata_setup(adata, hide_state_registries)
        print_saved_setup(self.registry_)
        return None


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
    check_unique_var_names(adata)
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
