"""DolorisModel: the user-facing scvi-tools model (AnnData in, AnnData out)."""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import signal
import warnings
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from scipy import sparse
from scvi.data import AnnDataManager
from scvi.data._constants import _MODEL_NAME_KEY, _SCVI_VERSION_KEY, _SETUP_ARGS_KEY
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.model.base._save_load import _initialize_model, _load_saved_files
from tqdm.auto import tqdm

from .. import __version__
from .._anndata_utils import (
    aligned_rows,
    check_log_normalised,
    close_matches,
    get_matrix,
    prediction_anndata,
)
from .._constants import DEFAULT_CELL_TYPE, PAD, REGISTRY_KEYS, UNKNOWN
from .._fields import PerturbationTokenField, tokenize_column
from .._logging import quiet
from .._perturbation import format_tokens, parse_perturbation
from .._threads import predict_threads, resolve_num_threads, torch_threads
from ..module import DolorisModule
from ..module._doloris import CELL_TYPE_DROPOUT
from ..module._mask_sampler import CoherentMaskSampler, MaskBank, build_mask_bank
from ..module._residual import residual_expression
from ..train import DolorisTrainingPlan
from ._calibration import Calibration, ConditionKey, condition_kind
from ._conditions import predict_table
from ._inner_validation import InnerValidationMixin
from ._molecule_mixin import MoleculeDoseMixin
from ._molecules import dose_levels, dose_scale, validate_dose_and_molecules
from ._mudata_mixin import MuDataMixin
from ._presets import PRESETS
from ._statistics import (
    cell_type_effects,
    compositional_effects,
    compute_statistics,
    shrunk_mean_effect,
)

logger = logging.getLogger(__name__)

# The version of the saved files. Bump it whenever a save holds something an older scdoloris
# cannot read (e.g. a new key of module_kwargs_, a keyword argument of DolorisModule): older
# versions then refuse the file with a clear message instead of failing inside. load() reads
# every format up to this one. 1: the first; 2: module_kwargs_ records cell_type_dropout
# (an unknown keyword argument of a format-1 reader's DolorisModule).
FILE_FORMAT = 2
EXIT_SIGTERM = 128 + signal.SIGTERM  # the shell's status of a process stopped by SIGTERM
MASK_MODES = ("coherent", "coupled", "bernoulli", "none")
DEFAULT_TRAIN_STEPS = 2000
COMMON_CONTROL_LABELS = ("ctrl", "control", "non-targeting", "NT", "unperturbed", "DMSO")


class DolorisModel(
    InnerValidationMixin,
    MoleculeDoseMixin,
    MuDataMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Doloris: dual conditional diffusion implicit bridges for unpaired perturbation data.

    A source diffusion model of control cells and a target diffusion model of perturbed cells
    share one Gaussian latent space. A control cell is encoded by the source model (DDIM run
    backwards) and decoded by the target model under a perturbation; a mask network decides which
    genes are expressed. See :class:`~scdoloris.module.DolorisModule` for the maths.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (control and perturbed cells).
    registry
        Used by :meth:`load`; leave as None.
    preset
        ``"default"`` (CPU-friendly widths) or ``"paper"`` (the paper's widths); explicit keyword
        arguments override the preset.
    gene_embeddings
        Optional gene features indexed by gene symbol (GO, STRING or scGPT vectors, ...). Genes in
        it become predictable even if they were never perturbed in training. Never downloaded.
    gene_graph
        Optional prior gene network: a DataFrame or array whose first two columns are gene
        symbols (source, target); added to the co-expression graph.
    n_gene_components
        Width K of the data-derived gene embedding (PCA over the training conditions' means).
    coexpression_threshold
        Genes whose control-cell expression correlates with ``|r|`` above this are linked.
    **module_kwargs
        Passed to :class:`~scdoloris.module.DolorisModule` (``n_hidden``, ``n_layers``,
        ``share_trunk``, ``use_control_state``, ``use_mask``, ``n_timesteps``, ...).

    Examples
    --------
    >>> import scanpy as sc, scdoloris
    >>> adata = scdoloris.datasets.simulate(n_cells=600, n_genes=100, seed=0)  # doctest: +SKIP
    >>> sc.pp.normalize_total(adata); sc.pp.log1p(adata)  # doctest: +SKIP
    >>> scdoloris.DolorisModel.setup_anndata(adata, perturbation_key="perturbation",
    ...                                      cell_type_key="cell_type")  # doctest: +SKIP
    >>> model = scdoloris.DolorisModel(adata)  # doctest: +SKIP
    >>> model.train(max_epochs=5)  # doctest: +SKIP
    >>> ctrl = adata[adata.obs["perturbation"] == "ctrl"]  # doctest: +SKIP
    >>> pred = model.predict(ctrl, perturbation=["G0001", "G0001+G0002"])  # doctest: +SKIP
    """

    _module_cls = DolorisModule
    _training_plan_cls = DolorisTrainingPlan

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        preset: Literal["default", "paper"] = "default",
        gene_embeddings: pd.DataFrame | None = None,
        gene_graph: pd.DataFrame | np.ndarray | None = None,
        n_gene_components: int = 32,
        coexpression_threshold: float = 0.5,
        **module_kwargs,
    ):
        super().__init__(adata, registry=registry)
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        self.init_params_ = self._get_init_params(locals())
        # what the inner validation's model is built with (not saved: a loaded model keeps the
        # calibration it was trained with)
        self._init_arguments = {
            "preset": preset,
            "gene_embeddings": gene_embeddings,
            "gene_graph": gene_graph,
            "n_gene_components": n_gene_components,
            "coexpression_threshold": coexpression_threshold,
            "module_kwargs": dict(module_kwargs),
        }
        # the user's embeddings live on in the module's buffers: do not pickle them twice
        self.init_params_["non_kwargs"]["gene_embeddings"] = None
        self.init_params_["non_kwargs"]["gene_graph"] = None
        self.scdoloris_version_ = __version__
        self.file_format_ = FILE_FORMAT
        if adata is None:  # DolorisModel.load builds the module from the saved attributes
            self.module = None
            return
        if gene_embeddings is not None and not isinstance(gene_embeddings, pd.DataFrame):
            raise TypeError(
                "gene_embeddings must be a pandas DataFrame indexed by gene symbol, got "
                f"{type(gene_embeddings).__name__}."
            )

        manager = self.adata_manager
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        cell_type = np.asarray(manager.get_from_registry(REGISTRY_KEYS.CELL_TYPE_KEY)).ravel()
        vocabulary = list(manager.get_state_registry(REGISTRY_KEYS.TOKENS_KEY)["vocabulary"])
        cell_types = list(
            manager.get_state_registry(REGISTRY_KEYS.CELL_TYPE_KEY).categorical_mapping
        )
        genes = self.adata_var_names
        dose = self._registered_doses()
        raw_tokens = np.asarray(manager.get_from_registry(REGISTRY_KEYS.TOKENS_KEY))
        molecules = self._build_molecule_table(vocabulary, genes, gene_embeddings, raw_tokens, dose)
        self.vocabulary_ = vocabulary
        self.molecule_names_ = molecules.names
        self.dose_range_ = None
        tokens = self._registered_tokens()  # molecule tokens at dose 0 removed
        is_control = (tokens == PAD).all(1)
        dose_labels = self._dose_labels(tokens, dose)
        condition = np.char.add(
            np.array([",".join(map(str, r.astype(int))) for r in tokens]), cell_type.astype(str)
        )
        condition = np.char.add(condition, dose_labels)
        # a backed (on-disk) AnnData: the data statistics come from at most
        # BACKED_CELLS_PER_CONDITION cells of each condition read into memory (x_max from a
        # pass over all cells); training reads its batches from disk
        if self.adata.isbacked:
            keep = _per_condition_sample(condition, BACKED_CELLS_PER_CONDITION)
            X = _read_rows(X, keep)
            cell_type, tokens, is_control = cell_type[keep], tokens[keep], is_control[keep]
            condition, dose_labels = condition[keep], dose_labels[keep]
            dose = None if dose is None else dose[keep]
        stats = compute_statistics(
            X,
            cell_type,
            len(cell_types),
            condition,
            is_control,
            pd.Index(genes),
            vocabulary,
            gene_embeddings=gene_embeddings,
            gene_graph=gene_graph,
            n_gene_components=n_gene_components,
            coexpression_threshold=coexpression_threshold,
        )
        if self.adata.isbacked:
            stats.x_max = _backed_max(manager.get_from_registry(REGISTRY_KEYS.X_KEY))
        labels = np.array([format_tokens(self._row_tokens(r, vocabulary)) for r in tokens])
        labels = np.char.add(labels.astype(str), dose_labels)
        self.mask_bank_ = build_mask_bank(
            X,
            np.char.add(
                np.char.add(labels.astype(str), " | "),
                np.asarray(cell_types)[cell_type].astype(str),
            ),
        ).to_dict()
        no_key = self.registry_[_SETUP_ARGS_KEY].get("cell_type_key") is None
        self.cell_types_ = [DEFAULT_CELL_TYPE] if no_key else [str(c) for c in cell_types]
        # cell types with perturbed training cells (predict(start="auto") bridges only these)
        self.perturbed_cell_types_ = [
            self.cell_types_[c] for c in np.unique(cell_type[~is_control]).astype(int)
        ]
        self.node_names_ = stats.node_names
        is_molecule = molecules.vocab_to_molecule != PAD
        levels = None
        if dose is not None and is_molecule.any():
            self.dose_range_ = dose_scale(tokens, is_molecule, dose)
            levels = dose_levels(tokens, is_molecule, self._scale_doses(dose))
        self.module_kwargs_ = {
            "n_genes": len(genes),
            "n_cell_types": len(cell_types),
            "n_vocab": len(vocabulary),
            "n_nodes": len(stats.node_names),
            "n_node_features": stats.node_features.shape[1],
            "n_edges": stats.edge_index.shape[1],
            "n_gene_edges": int((stats.edge_index < len(genes)).all(0).sum()),
            # recorded so that a saved model keeps it if the default changes
            "cell_type_dropout": CELL_TYPE_DROPOUT,
            **PRESETS[preset],
            **module_kwargs,
        }
        if molecules.names:
            self.module_kwargs_["n_molecules"] = len(molecules.names)
            self.module_kwargs_["n_molecule_features"] = molecules.n_features
        if levels is not None and len(levels):
            self.module_kwargs_["n_dose_levels"] = len(levels)
        self.module = DolorisModule(**self.module_kwargs_)
        self.module.set_statistics(
            stats.x_max,
            stats.sigma_data,
            torch.from_numpy(stats.control_mean),
            torch.from_numpy(stats.control_std),
            torch.from_numpy(stats.node_features),
            torch.from_numpy(stats.edge_index),
            torch.from_numpy(stats.vocab_to_node),
        )
        if self.module.cell_type_dropout > 0:
            perturbed = self._perturbed_cell_type_mask()
            self.module.perturbed_cell_type.copy_(torch.from_numpy(perturbed))
        # the additive prior; a molecule token at each training dose is a token of its own
        n_vocab = len(vocabulary)
        prior_tokens = tokens
        if levels is not None and len(levels):
            prior_tokens = np.where(levels.cell_level >= 0, n_vocab + levels.cell_level, tokens)
        n_prior = n_vocab + (len(levels) if levels is not None else 0)
        effects = compositional_effects(X, prior_tokens, cell_type, len(cell_types), n_prior)
        # what an unseen gene token is expected to do: the shrunk mean effect of the seen
        # tokens other than molecules (genes, measured or not, and any other learned token, e.g.
        # a stimulation: nothing in a label tells an unmeasured gene from a stimulation)
        seen_not_molecule = np.asarray([t not in molecules.names for t in vocabulary], dtype=bool)
        unseen_expr, self.unseen_expressed_alpha_ = shrunk_mean_effect(
            effects.token_expressed_effect[:n_vocab][seen_not_molecule]
        )
        unseen_logit, self.unseen_detection_alpha_ = shrunk_mean_effect(
            effects.token_detection_effect[:n_vocab][seen_not_molecule]
        )
        # per cell type, transferred to the cell types where a token was never measured
        typed, self.cell_type_temperature_ = {}, None
        if self.module.typed_expressed_effect.shape[0] > 0:
            typed_expr, typed_logit, self.cell_type_temperature_ = cell_type_effects(
                X, prior_tokens, cell_type, len(cell_types), n_prior
            )
            typed = {
                "typed_expressed_effect": torch.from_numpy(typed_expr[:, :n_vocab]),
                "typed_detection_effect": torch.from_numpy(typed_logit[:, :n_vocab]),
            }
        self.module.set_effects(
            torch.from_numpy(effects.control_expressed_mean),
            torch.from_numpy(effects.control_detection_logit),
            torch.from_numpy(effects.token_expressed_effect[:n_vocab]),
            torch.from_numpy(effects.token_detection_effect[:n_vocab]),
            torch.from_numpy(unseen_expr),
            torch.from_numpy(unseen_logit),
            **typed,
        )
        if molecules.names:
            self.module.set_molecules(
                torch.from_numpy(molecules.features),
                torch.from_numpy(molecules.has_features),
                torch.from_numpy(molecules.vocab_to_molecule),
                *(self.dose_range_ or (1.0, 1.0)),
            )
        if levels is not None and len(levels):
            self.module.set_dose_effects(
                torch.from_numpy(levels.token),
                torch.from_numpy(levels.dose),
                torch.from_numpy(effects.token_expressed_effect[n_vocab:]),
                torch.from_numpy(effects.token_detection_effect[n_vocab:]),
            )
        self._model_summary_string = self._summary()

    def _summary(self) -> str:
        """The model's summary (``print(model)``), from its saved state: the same after load."""
        featured = self.module.condition.perturbation.node_has_features
        n_mol = int(self._vocab_is_molecule().sum())
        preset = self.init_params_["non_kwargs"].get("preset", "default")
        return (
            f"DolorisModel: {len(self.adata_var_names)} genes, {len(self.cell_types_)} cell "
            f"type(s), {len(self.vocabulary_)} perturbation tokens"
            + (f" ({n_mol} molecules{' with doses' if self.has_doses else ''})" if n_mol else "")
            + f", gene graph of {len(self.node_names_)} nodes "
            f"({int(featured.sum())} with features) and {self.module_kwargs_['n_edges']} edges; "
            f"preset={preset!r}, {sum(p.numel() for p in self.module.parameters()):,} parameters."
        )

    @staticmethod
    def _row_tokens(row: np.ndarray, vocabulary: list[str]) -> tuple[str, ...]:
        return tuple(vocabulary[int(i)] for i in row if i != PAD)

    # ------------------------------------------------------------------ setup
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
            _validate_setup(
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
        import rich
        import rich.console
        import rich.pretty  # noqa: F401  scvi-tools calls rich.pretty, which rich>=14 no longer imports

        if adata is not None or self.adata is not None:
            return super().view_anndata_setup(adata, hide_state_registries)
        registry = self.registry_
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
        return None

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        mask_lr: float = 1e-3,
        mask_weight_decay: float = 1e-2,
        stage: Literal["all", "diffusion", "mask"] = "all",
        lr_schedule: Literal["constant", "cosine"] = "constant",
        train_size: float = 1.0,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        calibrate: bool = True,
        num_threads: int | None = None,
        verbose: bool = False,
        **trainer_kwargs,
    ):
        """Train the source, target and mask networks with Lightning (GPU when present).

        With ``calibrate=True`` (default) an inner validation runs first: some training
        conditions are held out, an inner model with the same settings is trained on the rest
        and its predictions of the held-out conditions are scored (E-distance and EMD against
        their real cells) next to the baselines and blends of the two. Per kind of condition
        (seen, transfer to another cell type, new combination of seen tokens, unseen token)
        it chooses the baseline and the weight of the model's prediction that :meth:`predict`
        uses by default (see :attr:`validation`). It about doubles the training time.

        Parameters
        ----------
        max_epochs
            Passes over the data. ``None`` gives about 2000 optimisation steps (at least 10
            and at most 2000 epochs), which the default preset runs in minutes on a CPU for a
            few thousand cells.
        batch_size
            Cells per step.
        lr, weight_decay
            AdamW settings of the diffusion models (Adam's eps is 1e-8, not scvi's 0.01).
        mask_lr, mask_weight_decay
            AdamW settings of the mask network (the authors used 1e-2 and 1e-2).
        stage
            ``"all"``, ``"diffusion"`` (source and target only) or ``"mask"`` (mask only): train
            or retrain one part.
        lr_schedule
            ``"constant"`` or ``"cosine"`` (the learning rates of the trained parts decay to 1%
            of their value over the run, see :class:`~scdoloris.train.DolorisTrainingPlan`).
        train_size, validation_size
            Fractions of cells for training and validation. All cells train by default: the
            evaluation that matters holds out perturbations, not cells.
        accelerator, devices
            Lightning settings; ``"auto"`` uses a GPU when there is one.
        early_stopping
            Stop when the validation loss (``validation_loss``) stops improving (needs
            ``train_size < 1``).
        plan_kwargs
            More keyword arguments of :class:`~scdoloris.train.DolorisTrainingPlan`.
        calibrate
            Run the inner validation and keep its calibration (with ``stage="all"`` only).
            ``False`` keeps an existing calibration (none for a new model: :meth:`predict`
            then returns the diffusion model's own prediction).
        num_threads
            CPU threads of torch during training; the previous count is restored afterwards.
            None: ``scvi.settings.num_threads`` if set, else the model's default on a CPU (one
            thread for the default preset up to 2000 genes, see :doc:`/guide/training`) and no
            change on a GPU.
        verbose
            Show the messages of scvi-tools and Lightning (device banner, tips, their own
            deprecation warnings), hidden by default; ``scvi.settings.verbosity =
            logging.DEBUG`` shows them too. Warnings about your data are always shown.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).

        Examples
        --------
        >>> model.train(max_epochs=50)  # doctest: +SKIP
        >>> model.history["train_loss"].tail()  # doctest: +SKIP
        >>> model.history["mask_loss_train"].tail()  # doctest: +SKIP
        """
        if self.adata is None:
            raise ValueError(
                "This model has no training data attached. Load it with "
                "DolorisModel.load(dir, adata=adata) to train further."
            )
        n_train = max(1, int(round(self.adata.n_obs * train_size)))
        if max_epochs is None:
            steps_per_epoch = max(1, math.ceil(n_train / batch_size))
            max_epochs = int(np.clip(math.ceil(DEFAULT_TRAIN_STEPS / steps_per_epoch), 10, 2000))
        plan = {
            "lr": lr,
            "weight_decay": weight_decay,
            "mask_lr": mask_lr,
            "mask_weight_decay": mask_weight_decay,
            "stage": stage,
            "lr_schedule": lr_schedule,
            **(plan_kwargs or {}),
        }
        # log at least once per epoch (Lightning warns when an epoch is shorter than the interval)
        n_batches = max(1, math.ceil(n_train / batch_size))
        trainer_kwargs.setdefault("log_every_n_steps", min(50, n_batches))
        trainer_kwargs.setdefault("check_val_every_n_epoch", 10 if train_size < 1 else None)
        # scvi-tools monitors its ELBO, which this model does not log (see DolorisTrainingPlan)
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        if train_size >= 1:
            trainer_kwargs.pop("check_val_every_n_epoch")
        threads = self._thread_count(num_threads, _trains_on_cpu(accelerator), "train")
        with torch_threads(threads):
            if calibrate and stage == "all":
                self._calibrate(
                    {
                        "max_epochs": max_epochs,
                        "batch_size": batch_size,
                        "lr": lr,
                        "weight_decay": weight_decay,
                        "mask_lr": mask_lr,
                        "mask_weight_decay": mask_weight_decay,
                        "lr_schedule": lr_schedule,
                        "accelerator": accelerator,
                        "devices": devices,
                        "plan_kwargs": plan_kwargs,
                        "num_threads": num_threads,
                        "verbose": verbose,
                        **{
                            k: v
                            for k, v in trainer_kwargs.items()
                            if k
                            not in (
                                "log_every_n_steps",
                                "check_val_every_n_epoch",
                                "early_stopping_monitor",
                            )
                        },
                    }
                )
            return self._fit(
                verbose,
                max_epochs=max_epochs,
                batch_size=batch_size,
                train_size=train_size,
                validation_size=validation_size,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                plan_kwargs=plan,
                **trainer_kwargs,
            )

    def _fit(self, verbose: bool, **kwargs):
        """scvi-tools' training loop, keeping the epochs done on Ctrl+C and SIGTERM."""
        self._fill_control_bank()
        self.module.train()
        try:
            with quiet(verbose):
                return super().train(**kwargs)
        except SystemExit as err:
            # Lightning turns Ctrl+C into sys.exit(1) after a graceful shutdown, and SIGTERM (a
            # cluster scheduler's stop) into SIGTERMException, a SystemExit with status 0. Both
            # keep the epochs done so far (scvi-tools already saved the history); Ctrl+C then
            # returns, SIGTERM exits with status 143 (128 + SIGTERM), never 0
            sigterm = isinstance(err, SIGTERMException)
            if not sigterm and not isinstance(err.__context__, KeyboardInterrupt):
                raise
            if not sigterm:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            history = self.history or {}
            n_done = len(history["train_loss"]) if "train_loss" in history else 0
            self.is_trained_ = self.is_trained_ or n_done > 0
            if sigterm:
                warnings.warn(
                    f"Training stopped by SIGTERM after {n_done} epoch(s); the model keeps them. "
                    f"Exiting with status {EXIT_SIGTERM} (to save the model, catch SystemExit "
                    "around train() and call model.save).",
                    UserWarning,
                    stacklevel=3,
                )
                raise SystemExit(EXIT_SIGTERM) from err
            warnings.warn(
                f"Training interrupted after {n_done} epoch(s); the model keeps them.",
                UserWarning,
                stacklevel=3,
            )
            return None
        finally:
            self.module.eval()

    def _thread_count(
        self, num_threads: int | None, on_cpu: bool, phase: Literal["train", "predict"]
    ) -> int | None:
        """Torch threads of one call (:func:`scdoloris._threads.resolve_num_threads`)."""
        n_hidden = int(self.module_kwargs_.get("n_hidden", PRESETS["default"]["n_hidden"]))
        return resolve_num_threads(num_threads, self.module.n_genes, n_hidden, on_cpu, phase)

    def _calibrate(self, train_kwargs: dict) -> None:
        """Fit the baselines on the training data and run the inner validation (see train)."""
        import scvi

        if not hasattr(self, "_init_arguments"):
            warnings.warn(
                "This model was loaded from disk: it keeps the calibration it was saved with "
                "(the inner validation needs the settings it was created with).",
                UserWarning,
                stacklevel=3,
            )
            return
        table = self._condition_table()
        self.training_conditions_ = [list(k) for k in dict.fromkeys(table["key"])]
        rows = np.arange(len(table))
        if self.adata.isbacked:  # the baselines' means from a sample of each condition
            rows = _per_condition_sample(table["key_id"].to_numpy(), BACKED_CELLS_PER_CONDITION)
        self.baselines_ = self._fit_baselines(self._labelled_anndata(rows, table))
        seed = scvi.settings.seed
        calibration = self._run_inner_validation(train_kwargs, 0 if seed is None else int(seed))
        self.calibration_ = None if calibration is None else calibration.to_dict()

    @property
    def calibration(self) -> Calibration | None:
        """The inner validation's calibration (None: not calibrated)."""
        data = getattr(self, "calibration_", None)
        return None if data is None else Calibration.from_dict(data)

    @property
    def validation(self) -> pd.DataFrame:
        """The inner validation of :meth:`train`, per kind of condition: the chosen baseline and
        model weight, how many conditions were held out, and the mean E-distance and EMD of the
        model alone, of each baseline and of the calibrated prediction on them.

        Examples
        --------
        >>> model.validation  # doctest: +SKIP
        """
        calibration = self.calibration
        return pd.DataFrame() if calibration is None else calibration.summary()

    def _condition_kind(self, tokens: tuple[str, ...], cell_type: str, dose_label: str) -> str:
        """The kind of a predicted condition against the training conditions."""
        training = [ConditionKey(tuple(t), c, d) for t, c, d in self.training_conditions_]
        return condition_kind(ConditionKey(tuple(sorted(tokens)), cell_type, dose_label), training)

    def _effective_tokens(self, parsed, doses) -> list[tuple[str, ...]]:
        """The tokens that perturb: molecules given at dose 0 are no perturbation."""
        molecules = set(getattr(self, "molecule_names_", []) or [])
        return [
            tuple(t for t in tokens if not (t in molecules and d is not None and d <= 0))
            for tokens, d in zip(parsed, doses, strict=True)
        ]

    def _blend_plan(self, parsed, doses, ct_names) -> list[dict] | None:
        """Per predicted condition: its label, and per cell type its kind, baseline and weight
        (None without a calibration)."""
        calibration = self.calibration
        if calibration is None or getattr(self, "baselines_", None) is None:
            return None
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        molecules = set(getattr(self, "molecule_names_", []) or [])
        plans = []
        for tokens, d in zip(parsed, doses, strict=True):
            dosed = d is not None and any(t in molecules for t in tokens) and d > 0
            dose_label = f" @ {d:g}" if dosed else ""
            label = format_tokens(tokens, control, delimiter) + dose_label
            per_type = {}
            for ct in dict.fromkeys(ct_names):
                kind = self._condition_kind(tokens, str(ct), dose_label) if tokens else "control"
                baseline, weight = ("NoChange", 1.0) if not tokens else calibration.choice(kind)
                per_type[str(ct)] = (kind, baseline, weight)
            plans.append({"label": label, "per_type": per_type})
        return plans

    def _calibrated(self, x_hat: np.ndarray, x: np.ndarray, ct_names, plan: dict) -> np.ndarray:
        """Blend one batch's predicted cells with the baseline prediction of the same cells."""
        from ._calibration import blend

        x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=np.float32)
        out = x_hat
        for ct, (_, baseline, weight) in plan["per_type"].items():
            if weight >= 1.0:
                continue
            rows = np.asarray(ct_names) == ct
            base = self.baselines_.predict(
                baseline, x[rows], plan["label"], np.full(rows.sum(), ct)
            )
            out[rows] = blend(x_hat[rows], base, weight)
        return out

    def _blend_report(self, names: list[str], plans: list[dict]) -> dict:
        """For uns: per perturbation and cell type, the kind, the blend and the expected error."""
        calibration = self.calibration
        report = {}
        for name, plan in zip(names, plans, strict=True):
            entry = {}
            for ct, (kind, baseline, weight) in plan["per_type"].items():
                expected = calibration.expected_error(kind) if kind != "control" else {}
                entry[ct] = {"kind": kind, "baseline": baseline, "weight": weight, **expected}
            report[name] = entry
        return report

    def _fill_control_bank(self, max_cells: int = 20000) -> None:
        """Give the module the registered control cells (at most ``max_cells``, drawn at random)."""
        manager = self.adata_manager
        tokens = self._registered_tokens()
        rows = np.flatnonzero((tokens == PAD).all(1))
        if len(rows) > max_cells:
            rows = np.sort(np.random.default_rng(0).choice(rows, max_cells, replace=False))
        sub = _read_rows(manager.get_from_registry(REGISTRY_KEYS.X_KEY), rows)
        sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
        cell_type = np.asarray(manager.get_from_registry(REGISTRY_KEYS.CELL_TYPE_KEY)).ravel()
        self.module.set_control_bank(
            torch.from_numpy(sub.astype(np.float32)),
            torch.from_numpy(cell_type[rows].astype(np.int64)),
        )

    # ------------------------------------------------------------------ prediction helpers
    def _cell_type_codes(
        self, adata: ad.AnnData, cell_type: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cell-type codes and names for each cell of ``adata``."""
        known = self.cell_types_
        if cell_type is not None:
            if str(cell_type) not in known:
                raise ValueError(
                    f"Unknown cell type {cell_type!r}. The model knows {known}"
                    + _suggest(cell_type, known)
                )
            names = np.full(adata.n_obs, str(cell_type), dtype=object)
        else:
            key = self.setup_args.get("cell_type_key")
            if key is not None and key in adata.obs:
                names = adata.obs[key].astype(str).to_numpy(dtype=object)
                unknown = sorted(set(names) - set(known))
                if unknown:
                    raise ValueError(
                        f"obs[{key!r}] has cell types the model was not trained on: {unknown}. "
                        f"Known: {known}."
                    )
            elif len(known) == 1:
                names = np.full(adata.n_obs, known[0], dtype=object)
            else:
                raise ValueError(
                    f"The model knows several cell types {known}; pass cell_type=... or give "
                    f"the input an obs column {key!r}."
                )
        index = {c: i for i, c in enumerate(known)}
        return np.array([index[n] for n in names], dtype=np.int64), names

    def _token_indices(
        self,
        tokens: tuple[str, ...],
        new_molecules: dict[str, np.ndarray] | None = None,
        molecule_features: pd.DataFrame | None = None,
        unknown: list[str] | None = None,
    ) -> tuple[list[int], list[int], list[int]]:
        """Vocabulary, node and molecule indices of tokens; errors name tokens it cannot embed.

        Molecules new to the model get rows from ``molecule_features`` or their SMILES, collected
        in ``new_molecules`` (see ``_molecule_row``). With a list ``unknown``, a token the model
        cannot embed is appended to it and becomes the unknown token instead of an error.
        """
        new_molecules = {} if new_molecules is None else new_molecules
        vocab = {t: i for i, t in enumerate(self.vocabulary_)}
        nodes = {t: i for i, t in enumerate(self.node_names_)}
        featured = self.module.condition.perturbation.node_has_features.cpu().numpy()
        molecules = set(getattr(self, "molecule_names_", []))
        vocab_idx, node_idx, mol_idx = [], [], []
        for tok in tokens:
            v, n = vocab.get(tok, PAD), nodes.get(tok, PAD)
            gene = n != PAD and bool(featured[n])
            m = PAD  # a molecule of the table, or new to the model (never a gene)
            if not gene and (v == PAD or tok in molecules):
                m = self._molecule_row(tok, new_molecules, molecule_features)
            if v == PAD and m == PAD and not gene and unknown is not None:
                unknown.append(tok)
                v, n = UNKNOWN, PAD
            elif v == PAD and m == PAD and not gene:
                choices = list(self.vocabulary_) + list(self.adata_var_names)
                raise ValueError(
                    f"Unknown perturbation token {tok!r}: it was not perturbed in training, is "
                    "not a measured gene and has no entry in gene_embeddings"
                    + _suggest(tok, choices)
                    + " To predict genes never seen in training, pass gene_embeddings= when "
                    "creating the model, or allow_unknown=True to predict it as a perturbation "
                    "the model knows nothing about." + self._unknown_token_hint()
                )
            vocab_idx.append(v)
            node_idx.append(n)
            mol_idx.append(m)
        return vocab_idx, node_idx, mol_idx

    @property
    def adata_var_names(self) -> list[str]:
        """The model's genes (of the expression modality, for a model set up with MuData)."""
        state = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
        return [str(g) for g in state["column_names"]]

    def _read_controls(self, adata: ad.AnnData, layer: str | None | Literal["setup"]):
        if not isinstance(adata, ad.AnnData):
            raise TypeError(f"Expected an AnnData of control cells, got {type(adata).__name__}.")
        if adata.n_obs == 0:
            raise ValueError("The input AnnData has no cells (n_obs == 0).")
        if layer == "setup":
            layer = self.setup_args.get("layer")
            if layer is not None and layer not in adata.layers:
                layer = None
        X = aligned_rows(adata, self.adata_var_names, layer, what="adata_ctrl")
        if hasattr(X.X, "to_memory") or hasattr(X.X, "id"):  # backed: check in chunks
            for start in range(0, X.shape[0], 20000):
                check_log_normalised(X.X[start : start + 20000], "the input expression")
        else:
            check_log_normalised(X.X, "the input expression")
        return X

    def _batches(self, n: int, batch_size: int):
        for start in range(0, n, batch_size):
            yield slice(start, min(start + batch_size, n))

    def _condition_tensors(
        self, indices: tuple[list[int], list[int], list[int]], dose: float | None, n: int
    ) -> dict[str, torch.Tensor | None]:
        """Token index matrices (cells x tokens) and doses of one perturbation, by argument name.

        Slice them with :meth:`_slice_condition` and pass them to the module's ``decode`` and
        ``expression_probability``.
        """
        vocab_idx, node_idx, mol_idx = indices
        cond = {
            "vocab_idx": torch.tensor([vocab_idx or [PAD]], dtype=torch.long).expand(n, -1),
            "node_idx": torch.tensor([node_idx or [PAD]], dtype=torch.long).expand(n, -1),
            "mol_idx": None,
            "dose": None,
        }
        if self.module.condition.perturbation.molecules is not None:
            cond["mol_idx"] = torch.tensor([mol_idx or [PAD]], dtype=torch.long).expand(n, -1)
            if dose is not None:
                cond["dose"] = torch.full((n,), float(dose))
        return cond

    @staticmethod
    def _slice_condition(cond: dict, sl: slice, device) -> dict:
        return {k: None if v is None else v[sl].to(device) for k, v in cond.items()}

    def _mean_probabilities(self, X, codes, conditions, batch_size) -> list[dict[int, np.ndarray]]:
        """Mean expression probability per perturbation and cell type (first pass, bounded memory).

        The mask network's probabilities are averaged over all input cells of a cell type with a
        running sum.
        """
        device = self.module.device
        n_types = len(self.cell_types_)
        counts = np.bincount(codes, minlength=n_types)
        means = []
        for cond in conditions:
            sums = torch.zeros(n_types, self.module.n_genes, dtype=torch.float64)
            for sl in self._batches(X.shape[0], batch_size):
                x = torch.from_numpy(X[sl]).to(device)
                ct = torch.from_numpy(codes[sl]).to(device)
                p = self.module.expression_probability(
                    x, ct, **self._slice_condition(cond, sl, device)
                )
                sums.index_add_(0, ct.cpu(), p.double().cpu())
            means.append({int(c): (sums[c] / counts[c]).numpy() for c in np.flatnonzero(counts)})
        return means

    def _mask_plans(
        self, mask, X, codes, conditions, top_genes, thresholds, batch_size, reference=None
    ):
        """What the second pass needs to draw masks, per perturbation and cell type.

        ``"coherent"``: the matched condition's real masks and the genes forced on and off.
        ``"coupled"``: the probability of keeping an expressed gene and of switching on a silent
        one, so that each cell changes as little as possible while the group's detection rates
        move from the input's to the predicted ones. With a ``reference`` condition (the control
        tokens; ``predict(residual="full")``) the predicted rates are the input's plus the mask
        network's change from the reference.
        """
        extra = [] if reference is None else [reference]
        means = self._mean_probabilities(X, codes, [*conditions, *extra], batch_size)
        if reference is not None:
            means, ref = means[:-1], means[-1]
        if mask == "coherent":
            bank = MaskBank.from_dict(self.mask_bank_)
            sampler = CoherentMaskSampler(bank, top_genes, thresholds)
            return [{c: sampler.match(p) for c, p in m.items()} for m in means]
        n_types = len(self.cell_types_)
        detected = X.detection_counts(codes, n_types, max(batch_size, 4096))
        rates = detected / np.maximum(np.bincount(codes, minlength=n_types), 1)[:, None]
        plans = []
        for m in means:
            plan = {}
            for c, p in m.items():
                q = rates[c]
                if reference is not None:
                    p = np.clip(q + p - ref[c], 0.0, 1.0)
                keep = np.where(q > 0, np.minimum(1.0, p / np.maximum(q, 1e-12)), 0.0)
                switch_on = np.where(
                    q < 1, np.maximum(0.0, (p - q) / np.maximum(1 - q, 1e-12)), 0.0
                )
                plan[c] = (keep.astype(np.float32), switch_on.astype(np.float32))
            plans.append(plan)
        return plans

    def _perturbed_cell_type_mask(self) -> np.ndarray | None:
        """Per cell type (``cell_types_`` order): had it perturbed training cells? ``None`` for
        a model saved before ``perturbed_cell_types_`` existed."""
        seen = getattr(self, "perturbed_cell_types_", None)
        return None if seen is None else np.isin(np.asarray(self.cell_types_), seen)

    def _starts_from_noise(self, start: str, codes: np.ndarray) -> np.ndarray:
        """Which cells decode from N(0, I) instead of their encoded latent (see predict)."""
        if start == "auto":
            perturbed = self._perturbed_cell_type_mask()
            if perturbed is None:  # a model saved before the attribute existed: the bridge
                return np.zeros(len(codes), dtype=bool)
            return ~perturbed[codes]
        return np.full(len(codes), start == "noise")

    def _draw_mask(self, mask, plan, x: np.ndarray, codes: np.ndarray, generator) -> np.ndarray:
        """Second pass: one mask per cell (cells of a batch) following its cell type's plan."""
        keep = np.zeros(x.shape, dtype=np.float32)
        for c in np.unique(codes):
            rows = np.flatnonzero(codes == c)
            if mask == "coherent":
                masks, on, off, _ = plan[int(c)]
                pick = torch.randint(0, masks.shape[0], (len(rows),), generator=generator).numpy()
                chosen = masks[pick]
                chosen[:, on] = True
                chosen[:, off] = False
            else:
                p_keep, p_on = plan[int(c)]
                u = torch.rand((len(rows), x.shape[1]), generator=generator).numpy()
                expressed = x[rows] != 0
                chosen = np.where(expressed, u < p_keep, u < p_on)
            keep[rows] = chosen
        return keep

    # ------------------------------------------------------------------ prediction
    @predict_threads
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        cell_type: str | None = None,
        n_steps: int = 50,
        batch_size: int = 1024,
        layer: str | None | Literal["setup"] = "setup",
        seed: int | None = 0,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Encode cells into the shared Gaussian latent (deterministic DDIM, backwards).

        scvi-tools' name for :meth:`get_latent`: the same latents, one row per cell of
        ``adata`` (or of ``adata[indices]``). The source model encodes **control** cells: their
        latents are about standard normal; other cells are encoded as if they were controls.

        Parameters
        ----------
        adata
            Cells to encode; genes are matched to the model's by name. Default: the model's
            training data (all its cells).
        indices
            Rows of ``adata`` to encode; default: all.
        cell_type
            Cell type of all cells; default: the model's cell-type column of ``adata``.
        n_steps
            DDIM steps.
        batch_size
            Cells per batch.
        layer
            Layer to read; ``"setup"`` uses the one registered in training if present.
        seed
            Seed of the light noise that starts the encoding (see
            :meth:`~scdoloris.module.DolorisModule.encode`); ``predict`` with the same seed
            encodes the same cells into the same latents.
        num_threads
            CPU threads of torch during the call, as in :meth:`predict`.

        Returns
        -------
        Cells x genes array of latents.

        Examples
        --------
        >>> ctrl = adata[adata.obs["perturbation"] == "ctrl"].copy()  # doctest: +SKIP
        >>> ctrl.obsm["X_doloris"] = model.get_latent_representation(ctrl)  # doctest: +SKIP
        """
        self._check_if_trained(warn=True)
        if adata is None:
            if self.adata is None:
                raise ValueError(
                    "This model has no data attached (it was loaded without adata): pass the "
                    "cells to encode, get_latent_representation(adata)."
                )
            adata = self.adata
        adata = self._expression_input(adata)
        if indices is not None:
            adata = adata[np.asarray(indices)]
        X = self._read_controls(adata, layer)
        codes, _ = self._cell_type_codes(adata, cell_type)
        self.module.eval()
        device = self.module.device
        generator = _generator(seed)
        out = []
        for sl in self._batches(X.shape[0], batch_size):
            x = torch.from_numpy(X[sl]).to(device)
            ct = torch.from_numpy(codes[sl]).to(device)
            out.append(self.module.encode(x, ct, n_steps, generator).cpu().numpy())
        return np.concatenate(out)

    def get_latent(
        self,
        adata_ctrl: ad.AnnData,
        cell_type: str | None = None,
        n_steps: int = 50,
        batch_size: int = 1024,
        layer: str | None | Literal["setup"] = "setup",
        seed: int | None = 0,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Encode control cells into the shared Gaussian latent (deterministic DDIM, backwards).

        The same as :meth:`get_latent_representation` (scvi-tools' name) of ``adata_ctrl``.

        Parameters
        ----------
        adata_ctrl
            Control cells; genes are matched to the model's by name.
        cell_type
            Cell type of all cells; default: the model's cell-type column of ``adata_ctrl``.
        n_steps
            DDIM steps.
        batch_size
            Cells per batch.
        layer
            Layer to read; ``"setup"`` uses the one registered in training if present.
        seed
            Seed of the light noise that starts the encoding (see
            :meth:`~scdoloris.module.DolorisModule.encode`).
        num_threads
            CPU threads of torch during the call, as in :meth:`predict`.

        Returns
        -------
        Cells x genes array of latents (about standard normal for control cells).

        Examples
        --------
        >>> z = model.get_latent(adata[adata.obs["perturbation"] == "ctrl"])  # doctest: +SKIP
        """
        return self.get_latent_representation(
            adata_ctrl,
            cell_type=cell_type,
            n_steps=n_steps,
            batch_size=batch_size,
            layer=layer,
            seed=seed,
            num_threads=num_threads,
        )

    def _warn_if_not_controls(self, adata: ad.AnnData) -> None:
        """Warn, with their number, when input cells of ``predict`` are not control cells.

        Only possible when ``adata`` has the model's perturbation column. A cell is a control
        when its label parses to no token, or (for a model with doses) when all its tokens are
        molecules given at dose 0.
        """
        key = self.setup_args.get("perturbation_key")
        if key is None or key not in adata.obs:
            return
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        labels = adata.obs[key].astype(str).to_numpy()
        unique, inverse = np.unique(labels, return_inverse=True)

        def tokens(label: str) -> tuple[str, ...] | None:
            try:
                return parse_perturbation(label, control, delimiter)
            except (TypeError, ValueError):  # a malformed label: not a control
                return None

        parsed = [tokens(u) for u in unique]
        is_control = np.array([t == () for t in parsed], dtype=bool)[inverse]
        dose_key = self.setup_args.get("dose_key")
        if dose_key is not None and dose_key in adata.obs:
            molecules = set(getattr(self, "molecule_names_", []))
            only_molecules = np.array(
                [bool(t) and all(m in molecules for m in t) for t in parsed], dtype=bool
            )
            dose = pd.to_numeric(adata.obs[dose_key], errors="coerce").to_numpy(np.float64)
            is_control |= only_molecules[inverse] & (dose <= 0)
        n_other = int((~is_control).sum())
        if n_other:
            examples = sorted(set(labels[~is_control]))[:3]
            warnings.warn(
                f"{n_other} of the {adata.n_obs} input cells are not control cells "
                f"(obs[{key!r}] is e.g. {examples}, not {control!r}); predict takes every input "
                "cell as a control cell. To predict from the controls only, pass "
                f"adata[adata.obs[{key!r}] == {control!r}].",
                UserWarning,
                stacklevel=4,  # the caller of predict (through torch's inference_mode wrapper)
            )

    def _with_controls(
        self, pred: ad.AnnData, X, obs_names: np.ndarray, cell_types: np.ndarray
    ) -> ad.AnnData:
        """``pred`` followed by the input control cells (``predict(include_controls=True)``).

        The controls' ``X`` is the input expression on the model's genes, ``perturbation`` the
        control label, ``control_cell`` their own obs name and ``predicted`` False.
        """
        control = self.setup_args["control_group"]
        n = X.shape[0]
        block_X = np.empty((n, len(self.adata_var_names)), dtype=np.float32)
        for sl in self._batches(n, 4096):
            block_X[sl] = X[sl]
        block = prediction_anndata(
            block_X,
            self.adata_var_names,
            perturbation=[control] * n,
            cell_type=cell_types,
            control_cell=obs_names,
            dose=np.full(n, np.nan) if "dose" in pred.obs else None,
        )
        block.obs["predicted"] = False
        block.obs_names = [f"ctrl-{i}" for i in range(n)]
        for name in pred.layers:  # e.g. expression_probability: none for an input cell
            block.layers[name] = np.full(block.shape, np.nan, dtype=np.float32)
        out = ad.concat([pred, block], merge="same")
        out.uns = pred.uns
        out.uns["scdoloris"]["include_controls"] = True
        for column in ("perturbation", "cell_type"):
            values = out.obs[column].astype(str)
            out.obs[column] = pd.Categorical(values, categories=list(dict.fromkeys(values)))
        return out

    @predict_threads
    @torch.inference_mode()
    def predict(
        self,
        adata_ctrl: ad.AnnData,
        perturbation: str | Sequence[str] | pd.DataFrame,
        cell_type: str | None = None,
        dose: float | Sequence[float | None] | None = None,
        n_steps: int = 50,
        batch_size: int = 512,
        seed: int | None = 0,
        mask: Literal["coherent", "coupled", "bernoulli", "none"] = "coupled",
        mask_top_genes: int = 300,
        mask_thresholds: tuple[float, float] = (0.01, 0.99),
        start: Literal["latent", "noise", "auto"] = "latent",
        depth: float = 1.0,
        layer: str | None | Literal["setup"] = "setup",
        return_probabilities: bool = False,
        progress_bar: bool = True,
        molecule_features: pd.DataFrame | None = None,
        residual: Literal["values", "full", "none"] = "values",
        calibrate: bool = True,
        allow_unknown: bool = False,
        num_threads: int | None = None,
        include_controls: bool = False,
    ) -> ad.AnnData:
        """Predict perturbed cells from control cells, one predicted cell per control cell.

        Each control cell is encoded by the source model into the shared latent, then decoded by
        the target model under each perturbation; the mask decides which genes are expressed.

        Parameters
        ----------
        adata_ctrl
            Control cells (log-normalised); genes are matched to the model's by name, extra
            genes are ignored. It is not modified.
        perturbation
            One perturbation (``"KLF1"``, ``"KLF1+MAP2K6"``, ``"panobinostat"``) or a list; each
            gives one block of predicted cells. Or a DataFrame of conditions, one block per row,
            with a ``perturbation`` column and optional ``dose`` and ``cell_type`` columns (a
            missing value: as if the argument were not given); the output then always has a
            ``dose`` column.
        cell_type
            Cell type of all input cells (needed when the model knows several types and the
            input lacks the cell-type column). A cell type whose perturbed cells were never
            seen in training works as long as its control cells were (covariate transfer).
        dose
            Dose of the molecules of the perturbation(s): one number, or one per perturbation.
            Needed for perturbations with a molecule when the model was set up with
            ``dose_key``; 0 means no molecule (the control).
        n_steps
            DDIM steps of each of the two ODE runs.
        batch_size
            Control cells per batch.
        seed
            Seed of the random parts (mask sampling, noise start); the same seed gives the same
            prediction. ``None`` draws a fresh one.
        mask
            ``"coupled"`` (default; it measured best, see ``benchmarks/RESULTS.md``): each control
            cell keeps its own expression pattern, changed as little as needed for the group's
            detection rates to become the mask network's predicted ones;
            ``"coherent"`` (the paper's subset matching): whole expression patterns of real training cells, from the training
            condition whose detection rates best match the mask network's probabilities (see
            :class:`~scdoloris.module.CoherentMaskSampler`); ``"bernoulli"``: each gene
            expressed independently with the mask network's probability; ``"none"``: the raw
            diffusion output (ablation; dense and poor on sparse data).
        mask_top_genes
            Genes compared when matching a training condition (coherent masks).
        mask_thresholds
            ``(low, high)``: genes with mean probability at most ``low`` are never expressed,
            at least ``high`` always (coherent masks).
        start
            ``"latent"`` (default): decode from the encoded control cell (the bridge);
            ``"noise"``: from N(0, I) (ablation "no latent"); ``"auto"``: the bridge for cells
            of a cell type with perturbed cells in training, N(0, I) for a cell type whose
            perturbed cells the model never saw (covariate transfer; the control cell still
            enters as the control-state input). ``"auto"`` is not the default: on the Kang
            validation splits of ``benchmarks/validate.py`` (one more stimulated cell type held
            out, seeds 0-2) it lowered the E-distance of FCGR3A+ Monocytes (1.468 vs 1.625 at
            seed 0, 1.495 vs 1.634 at seeds 1-2) but raised that of CD4 T cells (0.646 vs
            0.556; 0.838 vs 0.556), and the mean over both folds and seeds 1-2 was worse (1.166
            vs 1.095).
        depth
            Fraction of the diffusion time the bridge passes through (1: the Gaussian latent,
            as in the paper; smaller keeps more of each control cell).
        layer
            Layer of ``adata_ctrl`` to read; ``"setup"`` uses the registered one if present.
        return_probabilities
            Also return the mask network's expression probabilities in
            ``layers["expression_probability"]``.
        progress_bar
            Show a progress bar.
        molecule_features
            Features of molecules the model has no row for (a DataFrame indexed by molecule,
            with the columns of the setup's ``molecule_features``).
        residual
            ``"values"`` (default): apply the model's predicted CHANGE of expressed values to
            each input cell instead of returning the decoded values: a gene expressed in the
            input cell gets its input value plus the difference between the decodings under the
            perturbation and under the control token (both from the cell's own latent); genes
            the mask switches on take the decoded value. A perturbation the model thinks does
            nothing then returns the input cells. ``"full"``: also move the detection rates of
            ``mask="coupled"`` from the input's by the mask network's predicted change (instead
            of to its predicted rates). ``"none"``: the decoded cells (the paper). Measured on
            validation splits carved from the benchmark's training data (seed 0, E-distance,
            none / values / full): Norman pairs 0.493 / 0.497 / 0.582, Kang held-out CD4 T
            cells 0.592 / 0.584 / 0.580, Papalexi unseen knockouts 0.424 / 0.365 / 0.352.
            Costs one more decoding per batch.
        calibrate
            Blend each predicted cell with the baseline prediction of the same input cell as
            the inner validation of :meth:`train` chose for the condition's kind (see
            :attr:`validation`): ``(1 - w) * baseline + w * model``. ``False`` returns the
            diffusion model's own prediction. ``uns["scdoloris"]["calibration"]`` gives, per
            perturbation, its kind, the baseline, the weight and the inner validation's
            expected E-distance and EMD for that kind.
        allow_unknown
            Predict tokens the model knows nothing about (never perturbed in training, not a
            measured gene, no ``gene_embeddings`` entry, no molecule features) as the generic
            perturbation: no embedding and the unseen-token prior, what the model learned from
            the training tokens it was shown as unknown (10% of them). Calibrated as an unseen
            token. ``False`` (default) raises an error naming the token and close matches,
            since an unknown token is most often a typo.
        num_threads
            CPU threads of torch during the call; the previous count is restored afterwards.
            None: ``scvi.settings.num_threads`` if set, else the model's default on a CPU (one
            thread for the default preset up to 2000 genes, see :doc:`/guide/training`) and no
            change on a GPU.
        include_controls
            Append the input cells after the predicted ones, with ``perturbation`` the control
            label and ``predicted`` False (``X``: their expression on the model's genes), so
            that one AnnData holds both, e.g. for ``sc.tl.rank_genes_groups(pred,
            "perturbation", reference=control_label)``.

        Returns
        -------
        A new AnnData: ``X`` the predicted log-normalised expression with the model's genes;
        ``obs`` with ``perturbation``, ``dose`` (for a model with doses, when doses are given
        or for a DataFrame of conditions), ``cell_type``, ``control_cell`` and ``predicted``;
        ``uns["scdoloris"]`` with the settings. With ``include_controls``, the input cells
        follow.

        Warns
        -----
        UserWarning
            When the input has the model's perturbation column and some of its cells are not
            control cells (every input cell is taken as a control cell).

        Examples
        --------
        >>> ctrl = adata[adata.obs["perturbation"] == "ctrl"]  # doctest: +SKIP
        >>> pred = model.predict(ctrl, perturbation="KLF1+MAP2K6")  # doctest: +SKIP
        >>> sc.pp.pca(pred); sc.pp.neighbors(pred); sc.tl.umap(pred)  # doctest: +SKIP
        >>> pred = model.predict(ctrl, "panobinostat", dose=0.2,
        ...                      cell_type="A549")  # doctest: +SKIP
        >>> conditions = pd.DataFrame({"perturbation": ["panobinostat"] * 2,
        ...                            "dose": [0.1, 1.0], "cell_type": ["A549", "MCF7"]})
        >>> pred = model.predict(ctrl, conditions)  # doctest: +SKIP
        >>> both = model.predict(ctrl, "KLF1+MAP2K6", include_controls=True)  # doctest: +SKIP
        >>> sc.tl.rank_genes_groups(both, "perturbation", reference="ctrl")  # doctest: +SKIP
        """
        self._check_if_trained(warn=True)
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}.")
        if residual not in ("values", "full", "none"):
            raise ValueError(f"residual must be 'values', 'full' or 'none', got {residual!r}.")
        if start not in ("auto", "latent", "noise"):
            raise ValueError(f"start must be 'auto', 'latent' or 'noise', got {start!r}.")
        if mask != "none" and not self.module.use_mask:
            raise ValueError("This model has no mask network (use_mask=False): pass mask='none'.")
        if isinstance(perturbation, pd.DataFrame):
            return predict_table(self, adata_ctrl, perturbation, cell_type, dose, locals())
        adata_ctrl = self._expression_input(adata_ctrl)
        self._warn_if_not_controls(adata_ctrl)
        perturbations = [perturbation] if isinstance(perturbation, str) else list(perturbation)
        if not perturbations:
            raise ValueError("Pass at least one perturbation.")
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        parsed = tokenize_column(pd.Series(perturbations), control, delimiter, "perturbation")
        names = [format_tokens(t, control, delimiter) for t in parsed]
        doses = self._condition_doses(dose, len(perturbations))
        new_molecules: dict[str, np.ndarray] = {}
        unknown: list[str] | None = [] if allow_unknown else None
        indices = [
            self._token_indices(t, new_molecules, molecule_features, unknown) for t in parsed
        ]
        if unknown:
            warnings.warn(
                f"Tokens unknown to the model, predicted as the generic perturbation: "
                f"{sorted(set(unknown))}.",
                UserWarning,
                stacklevel=3,
            )
        self._check_molecule_doses(names, [i[2] for i in indices], doses)
        X = self._read_controls(adata_ctrl, layer)
        codes, ct_names = self._cell_type_codes(adata_ctrl, cell_type)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        generator = _generator(seed)  # the encoding's: shared by all conditions
        # each condition draws from its own stream (mask sampling, noise start), derived from the
        # seed and the condition, so its cells do not depend on the call's other conditions
        streams = [
            _condition_generator(seed, *_effective_condition(tokens, idx[2], d))
            for tokens, idx, d in zip(parsed, indices, doses, strict=True)
        ]

        self.module.eval()
        n = X.shape[0]
        conditions = [self._condition_tensors(i, d, n) for i, d in zip(indices, doses, strict=True)]
        extra = np.stack(list(new_molecules.values())) if new_molecules else None
        self.module.set_extra_molecules(None if extra is None else torch.from_numpy(extra))
        effective = self._effective_tokens(parsed, doses)
        blends = self._blend_plan(effective, doses, ct_names) if calibrate else None
        plans = None
        control_tokens = self._condition_tensors(([], [], []), None, n)
        if mask in ("coherent", "coupled"):
            plans = self._mask_plans(
                mask,
                X,
                codes,
                conditions,
                mask_top_genes,
                mask_thresholds,
                batch_size,
                control_tokens if residual == "full" and mask == "coupled" else None,
            )
        # the output is allocated once and filled batch by batch: peak memory is the output
        # plus one batch (the input is read in batches, sparse or backed inputs stay so)
        out_X = np.empty((len(perturbations) * n, self.module.n_genes), dtype=np.float32)
        out_p = (
            np.empty((len(perturbations) * n, self.module.n_genes), dtype=np.float32)
            if return_probabilities
            else None
        )
        bar = tqdm(
            total=math.ceil(n / batch_size) * len(perturbations),
            desc="Predicting",
            disable=not progress_bar,
        )
        device = self.module.device
        for sl in self._batches(n, batch_size):
            x_np = X[sl]
            x = torch.from_numpy(x_np).to(device)
            ct = torch.from_numpy(codes[sl]).to(device)
            ref = self._slice_condition(control_tokens, sl, device)
            x_ref = None  # the decoding under the control token, once per latent
            from_noise = self._starts_from_noise(start, codes[sl])
            if not from_noise.all():
                encoded = self.module.encode(x, ct, n_steps, generator, depth)
                latent = encoded
            from_noise = torch.from_numpy(from_noise).to(device).unsqueeze(-1)
            for j, cond in enumerate(conditions):
                if not effective[j]:  # no perturbation (the control, a drug at dose 0): the input
                    out_X[j * n + sl.start : j * n + sl.stop] = x_np
                    if return_probabilities:
                        p = self.module.expression_probability(x, ct, **ref)
                        out_p[j * n + sl.start : j * n + sl.stop] = p.cpu().numpy()
                    bar.update(1)
                    continue
                kw = self._slice_condition(cond, sl, device)
                if from_noise.any():
                    latent = torch.randn(x.shape, generator=streams[j]).to(device)
                    if not from_noise.all():
                        latent = torch.where(from_noise, latent, encoded)
                    x_ref = None
                x_hat = self.module.decode(latent, x, ct, n_steps=n_steps, depth=depth, **kw)
                if residual != "none":
                    if x_ref is None:
                        x_ref = self.module.decode(
                            latent, x, ct, n_steps=n_steps, depth=depth, **ref
                        )
                    x_hat = residual_expression(x / self.module.x_max, x_hat, x_ref)
                x_hat = x_hat.clamp_min(0.0)
                if mask == "bernoulli" or return_probabilities:
                    p = self.module.expression_probability(x, ct, **kw)
                    if return_probabilities:
                        out_p[j * n + sl.start : j * n + sl.stop] = p.cpu().numpy()
                if mask == "bernoulli":
                    draw = torch.rand(p.shape, generator=streams[j]).to(device)
                    x_hat = x_hat * (draw < p)
                elif plans is not None:
                    keep = self._draw_mask(mask, plans[j], x_np, codes[sl], streams[j])
                    x_hat = x_hat * torch.from_numpy(keep).to(device)
                x_hat = (x_hat * self.module.x_max).cpu().numpy()
                if blends is not None:
                    x_hat = self._calibrated(x_hat, x_np, ct_names[sl], blends[j])
                out_X[j * n + sl.start : j * n + sl.stop] = x_hat
                bar.update(1)
        bar.close()
        self.module.set_extra_molecules(None)

        obs_names = np.asarray(adata_ctrl.obs_names, dtype=object)
        with_dose = self.has_doses or any(d is not None for d in doses)
        dose_column = [np.nan if d is None else d for d in doses]
        out = prediction_anndata(
            out_X,
            self.adata_var_names,
            perturbation=np.repeat(names, n),
            cell_type=np.tile(ct_names, len(names)),
            control_cell=np.tile(obs_names, len(names)),
            dose=np.repeat(dose_column, n) if with_dose else None,
            uns={
                "n_steps": n_steps,
                "seed": int(seed),
                "mask": mask,
                "start": start,
                "depth": depth,
                "residual": residual,
                **(
                    {"mask_matched_conditions": _matched_labels(plans, names)}
                    if mask == "coherent"
                    else {}
                ),
                "perturbations": names,
                **({"doses": dose_column} if with_dose else {}),
                **({"calibration": self._blend_report(names, blends)} if blends else {}),
                "version": __version__,
            },
        )
        if return_probabilities:
            out.layers["expression_probability"] = out_p
        if include_controls:
            out = self._with_controls(out, X, obs_names, ct_names)
        return out

    # ------------------------------------------------------------------ save / load
    def save(
        self,
        dir_path: str,
        overwrite: bool = False,
        save_anndata: bool = False,
        prefix: str | None = None,
        **kwargs,
    ) -> None:
        """Save the model (weights, data-derived state, vocabulary) to a directory.

        Parameters
        ----------
        dir_path
            Directory to write; refused if it exists unless ``overwrite=True``.
        overwrite
            Replace an existing directory's model files.
        save_anndata
            Also write the training AnnData.
        prefix
            Prefix of the file names.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save`.

        Examples
        --------
        >>> model.save("doloris_model/")  # doctest: +SKIP
        >>> model = DolorisModel.load("doloris_model/")  # doctest: +SKIP
        """
        import os

        if os.path.exists(dir_path) and not overwrite:
            raise FileExistsError(
                f"{dir_path!r} already exists. Pass overwrite=True to replace it, or choose "
                "another directory."
            )
        # a model loaded from an older file format is written in the current one
        self.scdoloris_version_ = __version__
        self.file_format_ = FILE_FORMAT
        super().save(
            dir_path, prefix=prefix, overwrite=overwrite, save_anndata=save_anndata, **kwargs
        )

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: ad.AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        verbose: bool = False,
    ) -> DolorisModel:
        """Load a saved model; no training data is needed to predict.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Optional AnnData set up like the training data, to train further.
        accelerator, device
            Where to put the model (``"auto"``: a GPU when present).
        prefix
            Prefix of the file names.
        verbose
            Show scvi-tools' messages (e.g. that the file is "already downloaded"), hidden by
            default; ``scvi.settings.verbosity = logging.DEBUG`` shows them too.

        Examples
        --------
        >>> model = DolorisModel.load("doloris_model/")  # doctest: +SKIP
        """
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        with quiet(verbose):
            attr_dict, var_names, state_dict, _ = _load_saved_files(
                dir_path, False, map_location=torch_device, prefix=prefix
            )
        version = attr_dict.get("scdoloris_version_")
        file_format = attr_dict.get("file_format_")
        if version is None or file_format is None:
            raise ValueError(
                f"{dir_path!r} does not hold a scdoloris model (no scdoloris version recorded)."
            )
        upgrade = (
            f"Upgrade scdoloris (pip install -U scdoloris), or install scdoloris {version}, to "
            "load it."
        )
        if not isinstance(file_format, int) or file_format < 1:
            raise ValueError(
                f"{dir_path!r} does not hold a scdoloris model in a known file format (file "
                f"format {file_format!r})."
            )
        if file_format > FILE_FORMAT:
            raise ValueError(
                f"{dir_path!r} was saved by a newer scdoloris ({version}) in file format "
                f"{file_format}; this scdoloris {__version__} reads file formats 1 to "
                f"{FILE_FORMAT}. {upgrade}"
            )
        known = set(inspect.signature(DolorisModule).parameters)
        unknown = sorted(set(attr_dict.get("module_kwargs_", {})) - known)
        if unknown:
            raise ValueError(
                f"{dir_path!r} was saved by a newer scdoloris ({version}): its model has options "
                f"this scdoloris {__version__} does not know ({', '.join(map(repr, unknown))}). "
                f"{upgrade}"
            )
        registry = attr_dict.pop("registry_")
        if registry.get(_MODEL_NAME_KEY, cls.__name__) != cls.__name__:
            raise ValueError(
                f"{dir_path!r} holds a {registry[_MODEL_NAME_KEY]}, not a {cls.__name__}."
            )
        model = _initialize_model(cls, False, registry, attr_dict, None)
        # file format 1: models saved before the unknown cell type existed had none
        model.module_kwargs_.setdefault("cell_type_dropout", 0.0)
        model.module = DolorisModule(**model.module_kwargs_)
        state_dict.pop("pyro_param_store", None)
        # models saved before the unseen-token and per-cell-type priors: both off (zeros)
        defaults = model.module.state_dict()
        for key in (
            "unseen_expressed_effect",
            "unseen_detection_effect",
            "typed_expressed_effect",
            "typed_detection_effect",
        ):
            state_dict.setdefault(key, defaults[key])
        try:
            model.module.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(
                f"{dir_path!r} was saved by an incompatible scdoloris ({version}): its weights do "
                f"not fit this version's model ({err.args[0].splitlines()[0]}). Retrain, or "
                f"install scdoloris {version} to load it."
            ) from err
        model._model_summary_string = model._summary()
        model.to_device(torch_device)
        model.module.eval()
        if adata is not None:
            genes = model._expression_input(adata).var_names
            missing = pd.Index(model.adata_var_names).difference(genes)
            if len(missing):
                raise ValueError(
                    f"adata lacks {len(missing)} of the model's genes, e.g. {missing[:5].tolist()}."
                )
            model.adata = adata
        return model


def _matched_labels(pools: list[dict[int, tuple]], names: list[str]) -> dict[str, list[str]]:
    """For uns: the training condition matched for each perturbation (per cell type)."""
    return {
        name: [pool[c][3] for c in sorted(pool)] for name, pool in zip(names, pools, strict=True)
    }


def _trains_on_cpu(accelerator) -> bool:
    """Whether ``train(accelerator=...)`` computes on the CPU (``"auto"``: no CUDA device;
    scvi-tools never picks MPS by itself)."""
    if isinstance(accelerator, str):
        name = accelerator.lower()
        return name == "cpu" or (name == "auto" and not torch.cuda.is_available())
    from lightning.pytorch.accelerators import CPUAccelerator

    return isinstance(accelerator, CPUAccelerator)


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh random seed when None)."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return torch.Generator().manual_seed(int(seed))


def _effective_condition(
    tokens: Sequence[str], molecule_rows: Sequence[int], dose: float | None
) -> tuple[str, float | None]:
    """The condition a perturbation and dose amount to: molecules at dose 0 are no perturbation,
    and a dose means nothing without a molecule.

    Examples
    --------
    >>> _effective_condition(("drugA", "KLF1"), [3, PAD], 0.0)
    ('KLF1', None)
    >>> _effective_condition(("KLF1",), [PAD], None)
    ('KLF1', None)
    """
    if dose is not None and dose <= 0:
        tokens = [t for t, m in zip(tokens, molecule_rows, strict=True) if m == PAD]
        molecule_rows = [PAD] * len(tokens)
    if all(m == PAD for m in molecule_rows):
        dose = None
    return "+".join(sorted(tokens)), dose


def _condition_generator(seed: int, condition: str, dose: float | None) -> torch.Generator:
    """A CPU generator of one condition's random draws in ``predict``.

    Seeded from ``seed`` and a hash of the condition (its sorted tokens and its dose, see
    :func:`_effective_condition`), so that a condition gets the same draws whatever other
    conditions share the call (a table of conditions included), and different conditions get
    different streams. The cell type is not part of it: the same control cells predicted under
    one perturbation for two cell types draw the same random numbers, as they share their latent.

    Examples
    --------
    >>> a = _condition_generator(0, "KLF1+MAP2K6", None)
    >>> b = _condition_generator(0, "KLF1+MAP2K6", None)
    >>> bool(torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b)))
    True
    >>> c = _condition_generator(0, "KLF1", None)
    >>> bool(torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=c)))
    False
    """
    key = f"{condition}\x1f{'' if dose is None else repr(float(dose))}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    words = np.frombuffer(digest, dtype=np.uint32).tolist()
    sequence = np.random.SeedSequence([int(seed) % 2**64, *words])
    return torch.Generator().manual_seed(int(sequence.generate_state(1, np.uint64)[0]))


def _suggest(name: str, choices: Sequence[str]) -> str:
    hits = close_matches(name, choices)
    return f". Did you mean {hits}?" if hits else "."


BACKED_CHUNK = 20000
BACKED_CELLS_PER_CONDITION = 500


def _per_condition_sample(condition: np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all cells of small conditions, ``max_cells`` of the larger ones."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(condition):
        rows = np.flatnonzero(condition == label)
        if len(rows) > max_cells:
            rows = rng.choice(rows, max_cells, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep))


def _read_rows(X, rows: np.ndarray):
    """Rows of an in-memory or backed matrix (sorted ``rows``), in memory."""
    if hasattr(X, "to_memory") or hasattr(X, "id"):  # backed sparse or h5py dense
        chunks = [X[rows[i : i + BACKED_CHUNK]] for i in range(0, len(rows), BACKED_CHUNK)]
        if not chunks:
            return X[rows]
        if sparse.issparse(chunks[0]):
            return sparse.vstack(chunks).tocsr()
        return np.concatenate([np.asarray(c) for c in chunks])
    return X[rows]


def _backed_max(X) -> float:
    """The largest value of a backed matrix, read in chunks of cells."""
    best = 0.0
    for start in range(0, X.shape[0], BACKED_CHUNK):
        chunk = X[start : start + BACKED_CHUNK]
        if chunk.shape[0]:
            best = max(best, float(chunk.max()))
    return best


def _validate_setup(
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
                + _suggest(key, columns)
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
