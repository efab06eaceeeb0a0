"""DolorisModule: the source, target and mask networks of Doloris, for scvi-tools."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from .._constants import PAD, REGISTRY_KEYS
from .._switches import ModuleSwitches
from ._bridge import DiffusionSchedule, preconditioning
from ._bridge import decode as bridge_decode
from ._bridge import encode as bridge_encode
from ._control_state import ControlStates
from ._denoiser import Denoiser
from ._dose import encode_dose
from ._losses import diffusion_loss, expressed_mask, mask_bce, stage_loss
from ._mask_network import GeneGraphMaskNetwork, MaskNetwork, knocked_genes
from ._molecule_encoder import MoleculeEncoder
from ._perturbation_encoder import (
    UNKNOWN_TOKEN_RATE,
    ConditionEncoder,
    PerturbationEncoder,
    no_perturbation,
    unknown_token_dropout,
)
from ._prior import AdditivePrior

CELL_TYPE_DROPOUT = 0.5  # the default of DolorisModule(cell_type_dropout=...)
DENOISER_DEFAULTS = {"n_hidden": 512, "n_layers": 3, "dropout": 0.0}
MASK_DEFAULTS = {"n_hidden": 256}
GRAPH_DEFAULTS = {
    "n_nodes": 0,
    "n_node_features": 0,
    "n_edges": 0,
    "n_gene_edges": 0,
    "n_hidden": 64,
}
MOLECULE_DEFAULTS = {"n_molecules": 0, "n_features": 0, "n_dose_levels": 0}


def _options(name: str, given: dict | None, defaults: dict) -> dict:
    """``defaults`` updated by ``given``; a TypeError names keys it does not know."""
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise TypeError(f"{name} got unknown keys {unknown}; it takes {sorted(defaults)}.")
    return {**defaults, **(given or {})}


@dataclass
class ModuleData:
    """The data-derived state of a module, computed once by the model from its training data.

    Expression statistics are in the data's units (the module divides them by ``x_max``); the
    additive prior is fitted (:meth:`~scdoloris.module.AdditivePrior.fit`).
    """

    x_max: float
    sigma_data: float
    control_mean: np.ndarray
    control_std: np.ndarray
    node_features: np.ndarray
    edge_index: np.ndarray
    vocab_to_node: np.ndarray
    prior: AdditivePrior
    molecule_features: np.ndarray | None = None
    molecule_has_features: np.ndarray | None = None
    vocab_to_molecule: np.ndarray | None = None
    dose_range: tuple[float, float] = (1.0, 1.0)
    perturbed_cell_type: np.ndarray | None = None


class DolorisModule(BaseModuleClass):
    """Source, target and mask networks of Doloris sharing one Gaussian latent space.

    The source model denoises control cells conditioned on their cell type (and the control
    token); the target model denoises perturbed cells conditioned on cell type, perturbation
    and the control-state input (:class:`~scdoloris.module.ControlStates`); both predict the
    clean expression x0 with EDM preconditioning, around the additive prior
    (:class:`~scdoloris.module.AdditivePrior`), and are trained on expressed genes only. The
    mask network predicts which genes are non-zero. :meth:`encode` and :meth:`decode` are the
    two ODE runs of the bridge (:mod:`scdoloris.module._bridge`). ``docs/guide/method.md``
    describes the method and maps each idea to its file.

    All expression is divided by ``x_max`` (a buffer) inside the module.

    Parameters
    ----------
    n_genes, n_cell_types, n_vocab
        Genes, cell types and perturbation tokens of the training data.
    n_cond
        Width of the condition vector (cell type + perturbation).
    n_timesteps
        Diffusion steps T of training.
    share_trunk
        One MLP trunk with a source and a target head (the authors' layout, half the
        weights), or two separate networks (then the source never sees a control state).
    cell_type_dropout
        With several cell types: the fraction of training cells whose target and mask
        conditions take an "unknown cell type" embedding instead of their own; at prediction
        the cells of a cell type without perturbed training cells (a held-out cell type) take
        it. ``0`` turns it off (``module.cell_type_dropout = 0`` on a trained module: each cell
        type's own embedding at prediction; a runtime switch, not saved); ``1`` never gives
        these networks a cell type. Measured on the Kang validation splits: see
        ``docs/guide/method.md``.
    denoiser_kwargs
        Of the :class:`~scdoloris.module.Denoiser`: ``n_hidden`` (512), ``n_layers`` (3),
        ``dropout`` (0).
    mask_kwargs
        Of the :class:`~scdoloris.module.MaskNetwork`: ``n_hidden`` (256).
    graph_kwargs
        The gene graph's shape (``n_nodes``, ``n_node_features``, ``n_edges``, and
        ``n_gene_edges`` among measured genes) and the graph network's width ``n_hidden`` (64).
    molecule_kwargs
        The molecule table's shape (``n_molecules``, ``n_features``; 0: no molecules) and the
        number of (molecule, dose) levels of the prior, ``n_dose_levels``.
    ablation
        Switches away from the method, for ablations only: the fields of
        :class:`scdoloris.ablations.ModuleSwitches` (see :mod:`scdoloris.ablations`).
    data
        The data-derived state (:class:`ModuleData`), computed by the model; None (when a saved
        model is loaded): zeros, filled by ``load_state_dict``.
    """

    def __init__(
        self,
        n_genes: int,
        n_cell_types: int,
        n_vocab: int,
        n_cond: int = 128,
        n_timesteps: int = 500,
        share_trunk: bool = True,
        cell_type_dropout: float = CELL_TYPE_DROPOUT,
        denoiser_kwargs: dict | None = None,
        mask_kwargs: dict | None = None,
        graph_kwargs: dict | None = None,
        molecule_kwargs: dict | None = None,
        ablation: dict | None = None,
        data: ModuleData | None = None,
    ):
        super().__init__()
        if not 0.0 <= cell_type_dropout <= 1.0:
            raise ValueError(f"cell_type_dropout must be in [0, 1], got {cell_type_dropout!r}.")
        self.switches = switches = ModuleSwitches(**(ablation or {}))
        denoiser = _options("denoiser_kwargs", denoiser_kwargs, DENOISER_DEFAULTS)
        mask = _options("mask_kwargs", mask_kwargs, MASK_DEFAULTS)
        graph = _options("graph_kwargs", graph_kwargs, GRAPH_DEFAULTS)
        molecules = _options("molecule_kwargs", molecule_kwargs, MOLECULE_DEFAULTS)
        self.n_genes = n_genes
        self.share_trunk = share_trunk
        self.use_mask = switches.use_mask
        # the unknown cell type: trained on a fraction of the cells, used at prediction for
        # cell types without perturbed training cells (see cell_type_dropout)
        self.cell_type_dropout = cell_type_dropout if n_cell_types > 1 else 0.0
        unknown = self.cell_type_dropout > 0
        if unknown:
            self.register_buffer("perturbed_cell_type", torch.ones(n_cell_types, dtype=torch.bool))
        self.register_buffer("x_max", torch.ones(()))
        self.register_buffer("sigma_data", torch.full((), 0.5))
        if molecules["n_molecules"] > 0:  # smallest positive and largest training dose
            self.register_buffer("dose_range", torch.ones(2))
        self.prior = AdditivePrior(
            n_cell_types,
            n_vocab,
            n_genes,
            molecules["n_dose_levels"],
            per_cell_type=switches.cell_type_prior == "similarity",
        )
        self.prior.enabled = switches.prior == "additive"
        self.prior.unseen = switches.unseen_prior
        self.control_states = ControlStates(n_cell_types, n_genes)
        self.schedule = DiffusionSchedule(n_timesteps)

        def perturbation_encoder() -> PerturbationEncoder:
            encoder = None
            if molecules["n_molecules"] > 0:
                encoder = MoleculeEncoder(
                    n_vocab, molecules["n_molecules"], molecules["n_features"], n_cond
                )
            return PerturbationEncoder(
                n_vocab,
                graph["n_nodes"],
                graph["n_node_features"],
                graph["n_edges"],
                n_cond,
                graph["n_hidden"],
                switches.token_dropout,
                encoder,
            )

        self.condition = ConditionEncoder(n_cell_types, n_cond, perturbation_encoder(), unknown)
        width, depth, dropout = denoiser["n_hidden"], denoiser["n_layers"], denoiser["dropout"]
        with_state = switches.use_control_state
        if share_trunk:
            self.denoiser = Denoiser(n_genes, width, depth, n_cond, 2, with_state, dropout)
        else:
            self.source_net = Denoiser(n_genes, width, depth, n_cond, 1, False, dropout)
            self.target_net = Denoiser(n_genes, width, depth, n_cond, 1, with_state, dropout)
        if switches.use_mask:
            self.mask_condition = ConditionEncoder(
                n_cell_types, n_cond, perturbation_encoder(), unknown
            )
            if switches.mask_network == "graph":
                self.mask_net = GeneGraphMaskNetwork(
                    n_genes,
                    graph["n_node_features"],
                    graph["n_gene_edges"],
                    n_cond,
                    graph["n_hidden"] // 2,
                )
            else:
                self.mask_net = MaskNetwork(n_genes, n_cond, mask["n_hidden"])
        if data is not None:
            self._copy_data(data)

    def _copy_data(self, data: ModuleData) -> None:
        """Fill the buffers from the data-derived state (expression in the data's units)."""
        x_max = data.x_max
        self.x_max.fill_(float(x_max))
        self.sigma_data.fill_(float(data.sigma_data) / float(x_max))
        self.control_states.mean.copy_(torch.as_tensor(data.control_mean) / x_max)
        self.control_states.std.copy_(torch.as_tensor(data.control_std) / x_max)
        self.prior.load_state_dict(data.prior.state_dict())
        for encoder in self._perturbation_encoders():
            encoder.set_graph(data.node_features, data.edge_index, data.vocab_to_node)
        if self.use_mask and self.switches.mask_network == "graph":
            edge_index = torch.as_tensor(data.edge_index)
            genes = (edge_index < self.n_genes).all(0)
            features = torch.as_tensor(data.node_features)[: self.n_genes]
            self.mask_net.set_graph(features, edge_index[:, genes])
        if data.molecule_features is not None:
            for encoder in self._molecule_encoders():
                encoder.set_molecules(
                    torch.as_tensor(data.molecule_features),
                    torch.as_tensor(data.molecule_has_features),
                    torch.as_tensor(data.vocab_to_molecule),
                )
            self.dose_range.copy_(torch.tensor([float(d) for d in data.dose_range]))
        if data.perturbed_cell_type is not None and self.cell_type_dropout > 0:
            self.perturbed_cell_type.copy_(torch.as_tensor(data.perturbed_cell_type))

    def _perturbation_encoders(self) -> list[PerturbationEncoder]:
        encoders = [self.condition.perturbation]
        if self.use_mask:
            encoders.append(self.mask_condition.perturbation)
        return encoders

    def _molecule_encoders(self) -> list[MoleculeEncoder]:
        encoders = [e.molecules for e in self._perturbation_encoders()]
        return [e for e in encoders if e is not None]

    def set_control_bank(self, x: torch.Tensor, cell_type: torch.Tensor) -> None:
        """Keep control cells (data units) from which every training step draws the source
        model's batch and the control states (:meth:`ControlStates.set_bank`)."""
        cells = torch.as_tensor(x, dtype=torch.float32).to(self.x_max.device) / self.x_max
        self.control_states.set_bank(cells, cell_type)

    def set_extra_molecules(self, features: torch.Tensor | None) -> None:
        """Feature rows of molecules the table lacks, appended after it until the next call.

        ``DolorisModel.predict`` sets them for molecules new to the model (and clears them);
        they are never saved.
        """
        for encoder in self._molecule_encoders():
            encoder.set_extra_features(features)

    # ------------------------------------------------------------------ tokens and conditions
    def unknown_cell_types(self, cell_type: torch.Tensor) -> torch.Tensor | None:
        """Which cells take the unknown cell-type embedding (``None``: none; see
        ``cell_type_dropout``): a random ``cell_type_dropout`` fraction in training, the cells
        of cell types without perturbed training cells at prediction."""
        if self.cell_type_dropout == 0:
            return None
        if self.cell_type_dropout >= 1:  # never a cell type in these conditions
            return torch.ones_like(cell_type, dtype=torch.bool)
        if self.training:
            return torch.rand(cell_type.shape, device=cell_type.device) < self.cell_type_dropout
        return ~self.perturbed_cell_type[cell_type]

    def batch_tokens(self, tokens: torch.Tensor, dose: torch.Tensor | None = None):
        """A training batch's registered tokens (vocabulary indices as floats) and doses as the
        ``(vocab_idx, node_idx, mol_idx, dose)`` the networks take (see :meth:`dosed_tokens`)."""
        vocab_idx = tokens.long()
        v2n = self.condition.perturbation.vocab_to_node
        node_idx = torch.where(vocab_idx == PAD, PAD, v2n[vocab_idx.clamp_min(0)])
        molecules = self.condition.perturbation.molecules
        mol_idx = None if molecules is None else molecules.molecule_indices(vocab_idx)
        return self.dosed_tokens(vocab_idx, node_idx, mol_idx, dose)

    def dosed_tokens(self, vocab_idx, node_idx, mol_idx=None, dose=None):
        """Drop molecule tokens given at dose 0 (they mean "no molecule") and scale the doses.

        Returns ``(vocab_idx, node_idx, mol_idx, dose)`` with the dose on the model's scale
        (:func:`~scdoloris.module.encode_dose`), or ``None`` without doses.
        """
        if mol_idx is None or dose is None:
            return vocab_idx, node_idx, mol_idx, None
        dose = dose.reshape(-1).to(self.dose_range.dtype)
        absent = (mol_idx != PAD) & (dose <= 0).unsqueeze(-1)
        vocab_idx, node_idx, mol_idx = (
            torch.where(absent, PAD, idx) for idx in (vocab_idx, node_idx, mol_idx)
        )
        return vocab_idx, node_idx, mol_idx, encode_dose(dose, *self.dose_range.tolist())

    def mask_logits(self, control_state, mask_cond, cell_type, vocab_idx, node_idx, dose=None):
        """The mask network's logits (either architecture) plus the prior's detection offset."""
        if self.switches.mask_network == "graph":
            logits = self.mask_net(control_state, mask_cond, knocked_genes(node_idx, self.n_genes))
        else:
            logits = self.mask_net(control_state, mask_cond)
        return logits + self.prior.detection(cell_type, vocab_idx, node_idx, dose)

    def diffusion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the source and target models (and their condition encoder)."""
        mask_ids = {id(p) for p in self.mask_parameters()}
        return [p for p in self.parameters() if id(p) not in mask_ids]

    def mask_parameters(self) -> list[nn.Parameter]:
        """Parameters of the mask network (and its own condition encoder)."""
        if not self.use_mask:
            return []
        return list(self.mask_condition.parameters()) + list(self.mask_net.parameters())

    # ------------------------------------------------------------------ networks
    def _x0_hat(self, net, x_t, control_state, t, cond, head, control_proj=None):
        """x0 prediction with EDM preconditioning (see :func:`preconditioning`)."""
        alpha_bar = self.schedule.alpha_bar[t].unsqueeze(-1)
        c_in, c_skip, c_out = preconditioning(alpha_bar, self.sigma_data)
        y = x_t / alpha_bar.sqrt()
        out = net(c_in * y, control_state, t, cond, head=head, control_proj=control_proj)
        return c_skip * y + c_out * out

    def source(self, x_t, t, cond):
        """The source model's x0 prediction (control cells)."""
        net = self.denoiser if self.share_trunk else self.source_net
        return self._x0_hat(net, x_t, None, t, cond, head=0)

    def target(self, x_t, control_state, t, cond, control_proj=None):
        """The target model's x0 prediction (perturbed cells).

        ``control_proj``: :meth:`target_control_projection` of ``control_state``, computed once
        for a DDIM run (the control state does not change along it).
        """
        net = self.denoiser if self.share_trunk else self.target_net
        head = 1 if self.share_trunk else 0
        return self._x0_hat(net, x_t, control_state, t, cond, head, control_proj)

    def target_control_projection(self, control_state):
        """The target network's input-layer part from the control state (None without it)."""
        net = self.denoiser if self.share_trunk else self.target_net
        return net.project_control(control_state) if net.use_control_state else None

    # ------------------------------------------------------------------ training (scvi API)
    def _get_inference_input(self, tensors, **kwargs):
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "cell_type": tensors[REGISTRY_KEYS.CELL_TYPE_KEY],
            "tokens": tensors[REGISTRY_KEYS.TOKENS_KEY],
            "dose": tensors.get(REGISTRY_KEYS.DOSE_KEY),
        }

    @auto_move_data
    def inference(self, x, cell_type, tokens, dose=None):
        """Scale expression and embed the conditions of a training batch."""
        x0 = x / self.x_max
        cell_type = cell_type.view(-1).long()
        vocab_idx, node_idx, mol_idx, dose = self.batch_tokens(tokens, dose)
        is_control = no_perturbation(vocab_idx, node_idx, mol_idx)
        if self.training and UNKNOWN_TOKEN_RATE > 0:
            vocab_idx, node_idx, mol_idx = unknown_token_dropout(
                vocab_idx, node_idx, mol_idx, UNKNOWN_TOKEN_RATE
            )
        unknown = self.unknown_cell_types(cell_type)
        cond = self.condition(cell_type, vocab_idx, node_idx, mol_idx, dose, unknown)
        out = {
            "x0": x0,
            "cell_type": cell_type,
            "is_control": is_control,
            "cond": cond,
            "vocab_idx": vocab_idx,
            "node_idx": node_idx,
            "dose": dose,
        }
        if self.use_mask:
            out["mask_cond"] = self.mask_condition(
                cell_type, vocab_idx, node_idx, mol_idx, dose, unknown
            )
        return out

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return inference_outputs

    def generative(
        self, x0, cell_type, is_control, cond, vocab_idx, node_idx, mask_cond=None, dose=None
    ):
        """Noise the cells and predict x0 with the source and target models.

        The target model sees the batch (perturbed cells, and control cells under the control
        token); the source model as many control cells from the bank
        (:meth:`ControlStates.source_batch`).
        """
        switches = self.switches
        src_x0, src_ct = self.control_states.source_batch(x0, cell_type, is_control)
        pad = self._control_tokens(src_x0.shape[0], x0.device)
        src_cond = self.condition.control(src_ct)
        src_x0c = src_x0 - self.prior.expressed(src_ct, pad)
        t_src = self.schedule.sample_timesteps(src_x0.shape[0], device=x0.device)
        x_t_src = self.schedule.noise(src_x0c, t_src, torch.randn_like(src_x0))

        tgt = torch.ones_like(is_control) if switches.target_on_controls else ~is_control
        tgt_x0 = x0[tgt]
        tgt_dose = None if dose is None else dose[tgt]
        tgt_x0c = tgt_x0 - self.prior.expressed(cell_type[tgt], vocab_idx[tgt], dose=tgt_dose)
        control_state = self.control_states.sample(cell_type, switches.target_control_state)
        t = self.schedule.sample_timesteps(tgt_x0.shape[0], device=x0.device)
        x_t = self.schedule.noise(tgt_x0c, t, torch.randn_like(tgt_x0))
        out = {
            "source_x0": src_x0c,
            "source_expressed": expressed_mask(src_x0),
            "source_x0_hat": self.source(x_t_src, t_src, src_cond),
            "target_x0": tgt_x0c,
            "target_expressed": expressed_mask(tgt_x0),
            "target_x0_hat": self.target(x_t, control_state[tgt], t, cond[tgt]),
        }
        if self.use_mask:
            mask_state = self.control_states.sample(cell_type, switches.mask_control_state)
            out["mask_logits"] = self.mask_logits(
                mask_state, mask_cond, cell_type, vocab_idx, node_idx, dose
            )
        return out

    def loss(self, tensors, inference_outputs, generative_outputs, stage: str = "all"):
        """Diffusion loss on expressed genes (source + target) and the mask's cross-entropy."""
        x0 = inference_outputs["x0"]
        n = x0.shape[0]
        out = generative_outputs
        source_loss = diffusion_loss(
            out["source_x0"],
            out["source_x0_hat"],
            out["source_expressed"],
            self.use_mask and not self.switches.source_on_all_genes,
        )
        target_loss = diffusion_loss(
            out["target_x0"], out["target_x0_hat"], out["target_expressed"], self.use_mask
        )
        diffusion = source_loss + target_loss
        mask_loss = mask_bce(out["mask_logits"], x0).mean() if self.use_mask else x0.new_zeros(())
        ones = torch.ones(n, device=x0.device)
        return LossOutput(
            loss=stage_loss(diffusion, mask_loss, stage),
            reconstruction_loss={"diffusion": diffusion * ones, "mask": mask_loss * ones},
            kl_local=torch.zeros(n, device=x0.device),
            extra_metrics={
                "source_loss": source_loss.detach(),
                "target_loss": target_loss.detach(),
                "mask_loss": mask_loss.detach(),
            },
            n_obs_minibatch=n,
        )

    # ------------------------------------------------------------------ prediction
    def _control_tokens(self, n: int, device) -> torch.Tensor:
        return torch.full((n, 1), PAD, dtype=torch.long, device=device)

    @torch.inference_mode()
    def encode(
        self,
        x: torch.Tensor,
        cell_type: torch.Tensor,
        n_steps: int = 50,
        generator: torch.Generator | None = None,
        depth: float = 1.0,
    ) -> torch.Tensor:
        """The first half of the bridge: control cells (data units) to the Gaussian latent,
        through the source model (:func:`scdoloris.module._bridge.encode`; ``generator``: the
        light noise that starts the run)."""
        x0 = x / self.x_max
        cond = self.condition.control(cell_type)
        x0c = x0 - self.prior.expressed(cell_type, self._control_tokens(x.shape[0], x.device))

        def x0_fn(x_t, t):
            tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
            return self.source(x_t, tt, cond)

        return bridge_encode(x0c, x0_fn, self.schedule, self.sigma_data, n_steps, depth, generator)

    @torch.inference_mode()
    def decode(
        self,
        latent: torch.Tensor,
        control: torch.Tensor,
        cell_type: torch.Tensor,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor,
        n_steps: int = 50,
        depth: float = 1.0,
        mol_idx: torch.Tensor | None = None,
        dose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The second half of the bridge: latents to perturbed cells through the target model,
        with ``control`` (data units) as the control-state input; returns expression in
        ``x_max`` units.

        ``mol_idx`` (molecule-table rows of the tokens) and ``dose`` (each cell's dose, in the
        training data's unit) are needed for molecule tokens only.
        """
        vocab_idx, node_idx, mol_idx, dose = self.dosed_tokens(vocab_idx, node_idx, mol_idx, dose)
        unknown = self.unknown_cell_types(cell_type)
        cond = self.condition(cell_type, vocab_idx, node_idx, mol_idx, dose, unknown)
        control_state = control / self.x_max
        control_proj = self.target_control_projection(control_state)

        def x0_fn(x_t, t):
            tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
            return self.target(x_t, control_state, tt, cond, control_proj)

        x0c = bridge_decode(latent, x0_fn, self.schedule, n_steps, depth)
        return x0c + self.prior.expressed(cell_type, vocab_idx, node_idx, dose)

    @torch.inference_mode()
    def expression_probability(
        self,
        control: torch.Tensor,
        cell_type: torch.Tensor,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor,
        mol_idx: torch.Tensor | None = None,
        dose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mask network's probability that each gene is expressed, per cell (see decode)."""
        if not self.use_mask:
            raise ValueError("This model was built without a mask network (ablation 'no mask').")
        vocab_idx, node_idx, mol_idx, dose = self.dosed_tokens(vocab_idx, node_idx, mol_idx, dose)
        unknown = self.unknown_cell_types(cell_type)
        cond = self.mask_condition(cell_type, vocab_idx, node_idx, mol_idx, dose, unknown)
        logits = self.mask_logits(control / self.x_max, cond, cell_type, vocab_idx, node_idx, dose)
        return torch.sigmoid(logits)
