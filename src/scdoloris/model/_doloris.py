"""DolorisModel: the user-facing scvi-tools model (AnnData in, AnnData out).

The methods read like the user guide and delegate: the data-derived state to ``_data.py``,
the steps of prediction to ``_prediction.py``, the calibration to ``_calibrated.py``, the
setup checks to ``_setup.py`` and the saved file format to ``_file_format.py``.
"""

from __future__ import annotations

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
from scvi.data._constants import _MODEL_NAME_KEY
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.model.base._save_load import _initialize_model, _load_saved_files

from .. import __version__
from .._anndata_utils import gene_id_hint
from .._docs import fill_doc
from .._logging import quiet
from .._switches import ModuleSwitches
from .._threads import predict_threads, resolve_num_threads, torch_threads
from ..module import DolorisModule
from ..train import DolorisTrainingPlan
from ._calibrated import CalibrationMixin
from ._conditions import predict_table
from ._data import ModelDataMixin, _read_rows
from ._file_format import FILE_FORMAT, check_module_options, check_saved, upgrade
from ._inner_validation import InnerValidationMixin
from ._molecule_mixin import MoleculeDoseMixin
from ._mudata_mixin import MuDataMixin
from ._prediction import (
    PredictionMixin,
    PredictionRun,
    PredictOptions,
    _generator,
    batches,
    fresh_seed,
    matched_labels,
)
from ._presets import PRESETS, module_options
from ._scale import SCALE_CELLS, expression_scale, scale_mismatch
from ._setup import SetupMixin
from ._trust import TrustMixin
from ._warm_start import FINAL_FRACTION, phase, warm_start

EXIT_SIGTERM = 128 + signal.SIGTERM  # the shell's status of a process stopped by SIGTERM
#: Optimisation steps of ``train()`` without ``max_epochs``: the shortest length whose inner
#: validation error matched 2000 steps (benchmarks/experiments/defaults.py; numbers in
#: docs/guide/training.md).
DEFAULT_TRAIN_STEPS = 600


def default_max_epochs(n_train: int, batch_size: int) -> int:
    """Whole epochs of at most :data:`DEFAULT_TRAIN_STEPS` optimisation steps (at least one).

    Examples
    --------
    >>> default_max_epochs(3375, 128)  # the Norman subset: 27 steps per epoch, 594 steps
    22
    """
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(1, DEFAULT_TRAIN_STEPS // steps_per_epoch)


class DolorisModel(
    TrustMixin,
    SetupMixin,
    CalibrationMixin,
    InnerValidationMixin,
    PredictionMixin,
    ModelDataMixin,
    MoleculeDoseMixin,
    MuDataMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Doloris: dual conditional diffusion implicit bridges for unpaired perturbation data.

    A source diffusion model of control cells and a target diffusion model of perturbed cells
    share one Gaussian latent space. A control cell is encoded by the source model (DDIM run
    backwards) and decoded by the target model under a perturbation; a mask network decides which
    genes are expressed. ``docs/guide/method.md`` describes the method and
    :class:`~scdoloris.module.DolorisModule` holds the maths.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (control and perturbed cells).
    registry
        Used by :meth:`load`; leave as None.
    preset
        ``"default"`` (CPU-friendly widths) or ``"paper"`` (the paper's widths); the sizes
        below override it.
    n_hidden, n_layers
        Width and number of blocks of the denoiser's trunk (preset: 512 and 3).
    n_cond
        Width of the condition vector, cell type plus perturbation (preset: 128).
    n_graph_hidden
        Width of the gene-graph network (preset: 64).
    n_mask_hidden
        Width of the mask network (preset: 256).
    share_trunk
        The source and target models as two output heads of one trunk (the authors' layout,
        half the weights), or two separate networks.
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
        Passed to :class:`~scdoloris.module.DolorisModule`: ``n_timesteps``,
        ``cell_type_dropout`` and the sub-networks' settings in keyword dicts
        (``denoiser_kwargs={"dropout": 0.1}``, ``mask_kwargs``, ``graph_kwargs``; they
        override the sizes above). The ablations' switches (``ablation``) are set by
        :mod:`scdoloris.ablations`, not here.

    Examples
    --------
    >>> import scanpy as sc, scvi, scdoloris
    >>> scvi.settings.seed = 0  # recorded by the model: the run can be repeated  # doctest: +SKIP
    >>> adata = scdoloris.datasets.simulate(n_cells=600, n_genes=100, seed=0)  # doctest: +SKIP
    >>> sc.pp.normalize_total(adata); sc.pp.log1p(adata)  # doctest: +SKIP
    >>> scdoloris.DolorisModel.setup_anndata(adata, perturbation_key="perturbation",
    ...                                      cell_type_key="cell_type")  # doctest: +SKIP
    >>> model = scdoloris.DolorisModel(adata)  # doctest: +SKIP
    >>> model.train(max_epochs=5)  # doctest: +SKIP
    >>> print(model)  # the seed, and how far to trust each kind of prediction  # doctest: +SKIP
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
        n_hidden: int | None = None,
        n_layers: int | None = None,
        n_cond: int | None = None,
        n_graph_hidden: int | None = None,
        n_mask_hidden: int | None = None,
        share_trunk: bool = True,
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
        own = self.init_params_["non_kwargs"]
        self._init_arguments = {k: v for k, v in own.items() if k not in ("adata", "registry")}
        self._init_arguments |= {"gene_embeddings": gene_embeddings, "gene_graph": gene_graph}
        self._init_arguments["module_kwargs"] = dict(module_kwargs)
        # the user's embeddings live on in the module's buffers: do not pickle them twice
        self.init_params_["non_kwargs"]["gene_embeddings"] = None
        self.init_params_["non_kwargs"]["gene_graph"] = None
        self.scdoloris_version_ = __version__
        self.file_format_ = FILE_FORMAT
        # the seed training used (train() records it) and the scale of the training data
        # (predict() compares its input's with it); None in models saved before they were kept
        self.seed_: int | None = None
        self.seed_drawn_ = False
        self.data_scale_: dict | None = None
        # the inner model's training history (train() with the calibration; saved)
        self.inner_history_: dict | None = None
        if adata is None:  # DolorisModel.load builds the module from the saved attributes
            self.module = None
            return
        # before anything draws random numbers (the module's initial weights): a run without a
        # seed gets one, so that it can be repeated from the seed recorded by train()
        _settings_seed()
        if gene_embeddings is not None and not isinstance(gene_embeddings, pd.DataFrame):
            raise TypeError(
                "gene_embeddings must be a pandas DataFrame indexed by gene symbol, got "
                f"{type(gene_embeddings).__name__}."
            )
        switches = ModuleSwitches(**(module_kwargs.get("ablation") or {}))
        data, shapes = self._fit_module_data(
            gene_embeddings,
            gene_graph,
            n_gene_components,
            coexpression_threshold,
            per_cell_type=switches.cell_type_prior == "similarity",
        )
        sizes = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_cond": n_cond,
            "n_graph_hidden": n_graph_hidden,
            "n_mask_hidden": n_mask_hidden,
        }
        self.module_kwargs_ = module_options(preset, sizes, share_trunk, shapes, module_kwargs)
        self.module = DolorisModule(**self.module_kwargs_, data=data)
        self.data_scale_ = self._training_scale()
        self._model_summary_string = self._summary()

    def _training_scale(self) -> dict:
        """:func:`~._scale.expression_scale` of up to :data:`~._scale.SCALE_CELLS` control
        cells of the training data, spread evenly (what ``predict``'s input is compared with)."""
        from .._constants import REGISTRY_KEYS
        from .._perturbation import control_rows

        rows = np.flatnonzero(control_rows(self._registered_tokens()))
        if len(rows) > SCALE_CELLS:
            rows = np.unique(rows[np.linspace(0, len(rows) - 1, SCALE_CELLS).astype(int)])
        X = _read_rows(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY), rows)
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        return expression_scale(X)

    def _warn_if_other_scale(self, X) -> None:
        """Warn when the scale of ``predict``'s input (its first cells, ``AlignedRows``)
        clearly differs from the training data's (:func:`~._scale.scale_mismatch`)."""
        training = getattr(self, "data_scale_", None)
        if not training:
            return
        message = scale_mismatch(training, expression_scale(X[0 : min(X.shape[0], SCALE_CELLS)]))
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=4)

    def _summary(self) -> str:
        """The model's summary (``print(model)``), from its saved state: the same after load."""
        featured = self.module.condition.perturbation.node_has_features
        n_mol = int(self._vocab_is_molecule().sum())
        preset = self.init_params_["non_kwargs"].get("preset", "default")
        n_edges = self.module_kwargs_["graph_kwargs"]["n_edges"]
        return (
            f"DolorisModel: {len(self.adata_var_names)} genes, {len(self.cell_types_)} cell "
            f"type(s), {len(self.vocabulary_)} perturbation tokens"
            + (f" ({n_mol} molecules{' with doses' if self.has_doses else ''})" if n_mol else "")
            + f", gene graph of {len(self.node_names_)} nodes "
            f"({int(featured.sum())} with features) and {n_edges} edges; "
            f"preset={preset!r}, {sum(p.numel() for p in self.module.parameters()):,} parameters."
        )

    # ------------------------------------------------------------------ training
    @fill_doc
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        stage: Literal["all", "diffusion", "mask"] = "all",
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
        (half the steps of a model trained from scratch) and its predictions of the held-out
        conditions are scored (E-distance, EMD and the real top-20 DE genes found) next to the
        baselines and blends of the two. Per kind of condition (seen, transfer to another cell
        type, new combination of seen tokens, unseen token) it chooses the baseline and the
        weight of the model's prediction that :meth:`predict` uses by default (see
        :attr:`validation`). The model then starts from the inner model's weights and trains
        half of the steps on all the data, so training with the calibration costs about as
        much as one training run from scratch; two progress bars, labelled "Inner validation
        (1/2)" and "Final model (2/2)". :attr:`history` is the model's, :attr:`inner_history`
        the inner model's. A model that is already trained keeps its weights and trains
        ``max_epochs`` more.

        The run is reproducible from ``scvi.settings.seed``, which the model records
        (``seed_``, saved, shown by ``print(model)``). Set it before creating the model
        (``scvi.settings.seed = 0``); when it is None, creating the model draws a seed and sets
        it, so that the run can be repeated from the recorded one.

        Parameters
        ----------
        max_epochs
            Passes over the data of a model trained from scratch. ``None`` gives at most 600
            optimisation steps (whole epochs, at least one). With the calibration the inner
            model trains half of them and the model, started from it, the other half (see above;
            ``INNER_FRACTION`` and ``FINAL_FRACTION`` of ``scdoloris.model._warm_start``).
        batch_size
            Cells per step.
        stage
            ``"all"``, ``"diffusion"`` (source and target only) or ``"mask"`` (mask only): train
            or retrain one part.
        train_size, validation_size
            Fractions of cells for training and validation. All cells train by default: the
            evaluation that matters holds out perturbations, not cells.
        accelerator, devices
            Lightning settings; ``"auto"`` uses a GPU when there is one.
        early_stopping
            Stop when the validation loss (``validation_loss``) stops improving (needs
            ``train_size < 1``).
        plan_kwargs
            Keyword arguments of :class:`~scdoloris.train.DolorisTrainingPlan`: the optimiser's
            settings ``lr`` and ``weight_decay`` of the diffusion models (1e-3, 1e-4; Adam's
            eps is 1e-8, not scvi's 0.01), ``mask_lr`` and ``mask_weight_decay`` of the mask
            network (1e-3, 1e-2; the authors used 1e-2 and 1e-2).
        calibrate
            Run the inner validation and keep its calibration (with ``stage="all"`` only).
            ``False`` keeps an existing calibration (none for a new model: :meth:`predict`
            then returns the diffusion model's own prediction).
        num_threads
            {num_threads}
        verbose
            Show the messages of scvi-tools and Lightning (device banner, tips, their own
            deprecation warnings), hidden by default; ``scvi.settings.verbosity =
            logging.DEBUG`` shows them too. Warnings about your data are always shown.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).

        Examples
        --------
        >>> model.train(max_epochs=50)  # doctest: +SKIP
        >>> model.train(stage="mask", max_epochs=20, plan_kwargs={"mask_lr": 1e-2})  # doctest: +SKIP
        >>> model.history["train_loss"].tail()  # doctest: +SKIP
        >>> model.history["mask_loss_train"].tail()  # doctest: +SKIP
        """
        if self.adata is None:
            raise ValueError(
                "This model has no training data attached. Load it with "
                "DolorisModel.load(dir, adata=adata) to train further."
            )
        self.seed_ = _settings_seed()
        self.seed_drawn_ = self.seed_ in _DRAWN
        n_train = max(1, int(round(self.adata.n_obs * train_size)))
        if max_epochs is None:
            max_epochs = default_max_epochs(n_train, batch_size)
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
            inner = None
            if calibrate and stage == "all":
                ours = ("log_every_n_steps", "check_val_every_n_epoch", "early_stopping_monitor")
                inner = self._calibrate(
                    {
                        "max_epochs": max_epochs,
                        "batch_size": batch_size,
                        "accelerator": accelerator,
                        "devices": devices,
                        "plan_kwargs": plan_kwargs,
                        "num_threads": num_threads,
                        "verbose": verbose,
                        **{k: v for k, v in trainer_kwargs.items() if k not in ours},
                    }
                )
            if inner is not None:
                self.inner_history_ = dict(inner.history or {})
                if not self.is_trained_:  # a trained model goes on from its own weights
                    warm_start(self.module, inner.module, self.vocabulary_, inner.vocabulary_)
                    max_epochs = max(1, round(FINAL_FRACTION * max_epochs))
                    phase(
                        f"Final model (2/2): started from the inner model, {max_epochs} "
                        "epoch(s) on all the training data",
                        trainer_kwargs,
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
                plan_kwargs={"stage": stage, **(plan_kwargs or {})},
                **trainer_kwargs,
            )

    @property
    def inner_history(self) -> dict:
        """The training history of the inner model of the calibration (:meth:`train` with
        ``calibrate=True``), like :attr:`history` (empty without one).

        Examples
        --------
        >>> model.inner_history["train_loss"].tail()  # doctest: +SKIP
        """
        return dict(getattr(self, "inner_history_", None) or {})

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
        n_hidden = int(self.module_kwargs_.get("denoiser_kwargs", {}).get("n_hidden", 512))
        return resolve_num_threads(num_threads, self.module.n_genes, n_hidden, on_cpu, phase)

    # ------------------------------------------------------------------ prediction
    @predict_threads
    @torch.inference_mode()
    @fill_doc
    def predict(
        self,
        adata_ctrl: ad.AnnData,
        perturbation: str | Sequence[str] | pd.DataFrame,
        cell_type: str | None = None,
        dose: float | Sequence[float | None] | None = None,
        n_steps: int = 20,
        batch_size: int = 512,
        seed: int | None = 0,
        layer: str | None | Literal["setup"] = "setup",
        return_probabilities: bool = False,
        progress_bar: bool = True,
        molecule_features: pd.DataFrame | None = None,
        calibrate: bool = True,
        allow_unknown: bool = False,
        num_threads: int | None = None,
        include_controls: bool = False,
    ) -> ad.AnnData:
        """Predict perturbed cells from control cells, one predicted cell per control cell.

        Each control cell is encoded by the source model into the shared latent and decoded by
        the target model under each perturbation; the decoded change of expressed values moves
        the control cell, and the mask network decides, cell by cell, which genes are
        expressed (each cell keeps its own pattern, changed as little as the predicted
        detection rates need). With ``calibrate`` the result is blended with a baseline as
        the inner validation of :meth:`train` chose. The paper's ablations and the
        alternatives not kept are in :mod:`scdoloris.ablations`.

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
            DDIM steps of each of the two ODE runs. 20 predicted as well as 50 on the inner
            validation (held-out training conditions) at 2.5x less cost; see
            :doc:`/guide/prediction`.
        batch_size
            Control cells per batch.
        seed
            Seed of the random parts (mask sampling, noise start); the same seed gives the same
            prediction. ``None`` draws a fresh one.
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
        calibrate
            Blend the model's prediction with the baseline's prediction of the same input
            cells as the inner validation of :meth:`train` chose for the condition's kind (see
            :attr:`validation`): per gene, the model's cells scaled to the mean of
            ``(1 - w) * baseline + w * model``, so that they keep their zeros and spread
            (:func:`scdoloris.model._calibration.blend`). ``False`` returns the
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
            {num_threads}
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
            control cells (every input cell is taken as a control cell); when the scale of the
            input clearly differs from the training data's (``data_scale_``): small raw counts,
            log1p applied twice, normalised but not log-transformed, or another target sum of
            ``normalize_total`` (more than two-fold), each with its fix.

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
        options = PredictOptions(
            n_steps=n_steps,
            batch_size=batch_size,
            seed=seed,
            layer=layer,
            return_probabilities=return_probabilities,
            progress_bar=progress_bar,
            molecule_features=molecule_features,
            calibrate=calibrate,
            allow_unknown=allow_unknown,
            num_threads=num_threads,
            include_controls=include_controls,
        )
        if isinstance(perturbation, pd.DataFrame):  # a table of conditions
            return predict_table(self, adata_ctrl, perturbation, cell_type, dose, options)
        adata_ctrl = self._expression_input(adata_ctrl)
        self._warn_if_not_controls(adata_ctrl)
        conditions = self._parse_conditions(perturbation, dose, molecule_features, allow_unknown)
        X = self._read_controls(adata_ctrl, layer)
        self._warn_if_other_scale(X)
        codes, ct_names = self._cell_type_codes(adata_ctrl, cell_type)
        seed = fresh_seed() if seed is None else int(seed)
        switches = self._switches()  # the method's (an ablation's: scdoloris.ablations)

        # encode each control cell, decode it under each perturbation, mask and blend
        self.module.eval()
        with self._new_molecules(conditions):
            run = PredictionRun(self, X, codes, ct_names, conditions, switches, options, seed)
            out_X, out_p = run.cells()

        settings = {
            "n_steps": n_steps,
            "seed": seed,
            "mask": switches.mask,
            "start": switches.start,
            "depth": switches.depth,
            "residual": switches.residual,
        }
        if switches.mask == "coherent":
            settings["mask_matched_conditions"] = matched_labels(run.plans, conditions.names)
        report = self._blend_report(conditions.names, run.blends) if run.blends else None
        out = self._prediction_output(
            out_X, out_p, adata_ctrl, ct_names, conditions, settings, report
        )
        if include_controls:
            obs_names = np.asarray(adata_ctrl.obs_names, dtype=object)
            out = self._with_controls(out, X, obs_names, ct_names)
        return out

    @predict_threads
    @torch.inference_mode()
    @fill_doc
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        cell_type: str | None = None,
        n_steps: int = 20,
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
            {num_threads}

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
        for sl in batches(X.shape[0], batch_size):
            x = torch.from_numpy(X[sl]).to(device)
            ct = torch.from_numpy(codes[sl]).to(device)
            out.append(self.module.encode(x, ct, n_steps, generator).cpu().numpy())
        return np.concatenate(out)

    @fill_doc
    def get_latent(
        self,
        adata_ctrl: ad.AnnData,
        cell_type: str | None = None,
        n_steps: int = 20,
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
            {num_threads}

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

        Files of older formats are converted (``_file_format.py``); a file of a newer format, or
        with model options this version does not know, is refused with a clear message.

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
            attr_dict, _, state_dict, _ = _load_saved_files(
                dir_path, False, map_location=torch_device, prefix=prefix
            )
        version = attr_dict.get("scdoloris_version_")
        upgrade(attr_dict, state_dict, check_saved(attr_dict, dir_path))
        check_module_options(attr_dict.get("module_kwargs_", {}), dir_path, version)
        registry = attr_dict.pop("registry_")
        if registry.get(_MODEL_NAME_KEY, cls.__name__) != cls.__name__:
            raise ValueError(
                f"{dir_path!r} holds a {registry[_MODEL_NAME_KEY]}, not a {cls.__name__}."
            )
        model = _initialize_model(cls, False, registry, attr_dict, None)
        model.module = DolorisModule(**model.module_kwargs_)
        state_dict.pop("pyro_param_store", None)
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
                hint = gene_id_hint(model.adata_var_names, model._expression_input(adata))
                raise ValueError(
                    f"adata lacks {len(missing)} of the model's genes, e.g. {missing[:5].tolist()}."
                    + (f" {hint}" if hint else "")
                )
            model.adata = adata
        return model


#: seeds drawn by :func:`_settings_seed` in this session (scvi.settings.seed was None)
_DRAWN: set[int] = set()


def _settings_seed() -> int:
    """``scvi.settings.seed``; when it is None, a seed drawn at random and set there (which
    seeds torch, numpy and random), so that the run can be repeated from it."""
    import scvi

    if scvi.settings.seed is None:
        seed = fresh_seed() % 1_000_000
        with quiet():  # Lightning logs "Seed set to ..."
            scvi.settings.seed = seed
        _DRAWN.add(seed)
        return seed
    return int(scvi.settings.seed)


def _trains_on_cpu(accelerator) -> bool:
    """Whether ``train(accelerator=...)`` computes on the CPU (``"auto"``: no CUDA device;
    scvi-tools never picks MPS by itself)."""
    if isinstance(accelerator, str):
        name = accelerator.lower()
        return name == "cpu" or (name == "auto" and not torch.cuda.is_available())
    from lightning.pytorch.accelerators import CPUAccelerator

    return isinstance(accelerator, CPUAccelerator)
