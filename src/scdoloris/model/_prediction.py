"""The steps of ``DolorisModel.predict``: read the input, look the perturbations up, plan the
masks, run the bridge batch by batch, and write the AnnData.

:class:`PredictionMixin` holds the steps that need the model; :class:`PredictionRun` is one call's
encode/decode loop over batches of input cells (the residual and the mask applied to each
predicted cell, then the calibration's blend applied to each condition).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import __version__
from .._anndata_utils import aligned_rows, check_log_normalised, did_you_mean, prediction_anndata
from .._constants import PAD, UNKNOWN
from .._fields import tokenize_column
from .._perturbation import format_tokens, parse_perturbation
from .._switches import PredictionSwitches
from ..module import MaskBank
from ..module._mask_sampler import MaskSampler, mask_sampler
from ..module._residual import residual_expression


@dataclass(frozen=True)
class PredictOptions:
    """The settings of one ``predict`` call that its steps share (``predict``'s signature has
    their defaults)."""

    n_steps: int
    batch_size: int
    seed: int | None
    layer: str | None
    return_probabilities: bool
    progress_bar: bool
    molecule_features: pd.DataFrame | None
    calibrate: bool
    allow_unknown: bool
    num_threads: int | None
    include_controls: bool

    def kwargs(self, **changes) -> dict:
        """The options as keyword arguments of ``predict``."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return {**out, **changes}


@dataclass
class Conditions:
    """The perturbations of one ``predict`` call, parsed and looked up.

    ``names``: the normalised labels; ``tokens``: their tokens; ``indices``: per perturbation
    the vocabulary, gene-graph node and molecule-table rows of its tokens; ``doses``; and
    ``effective``: the tokens that perturb (molecules given at dose 0 are no perturbation).
    ``new_molecules``: feature rows of molecules new to the model, appended to its table for
    the call.
    """

    names: list[str]
    tokens: list[tuple[str, ...]]
    indices: list[tuple[list[int], list[int], list[int]]]
    doses: list[float | None]
    effective: list[tuple[str, ...]]
    new_molecules: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def streams(self, seed: int) -> list[torch.Generator]:
        """Each condition's random stream (mask sampling, noise start), from the seed and the
        condition, so its cells do not depend on the call's other conditions."""
        return [
            _condition_generator(seed, *_effective_condition(t, idx[2], d))
            for t, idx, d in zip(self.tokens, self.indices, self.doses, strict=True)
        ]


class PredictionMixin:
    """The steps of :meth:`~scdoloris.DolorisModel.predict` that need the model."""

    _prediction_switches: PredictionSwitches | None = None

    def _switches(self) -> PredictionSwitches:
        """The prediction switches: the method's, or an ablation's inside
        :meth:`scdoloris.ablations.Variant.applied`."""
        return self._prediction_switches or PredictionSwitches()

    # ------------------------------------------------------------------ the input
    def _read_controls(self, adata: ad.AnnData, layer: str | None | Literal["setup"]):
        """The input's expression on the model's genes, read batch by batch (``AlignedRows``)."""
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

    def _cell_type_codes(
        self, adata: ad.AnnData, cell_type: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cell-type codes and names for each cell of ``adata``."""
        known = self.cell_types_
        if cell_type is not None:
            if str(cell_type) not in known:
                raise ValueError(
                    f"Unknown cell type {cell_type!r}. The model knows {known}"
                    + did_you_mean(cell_type, known)
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

    def _warn_if_not_controls(self, adata: ad.AnnData) -> None:
        """Warn, with their number, when input cells of ``predict`` are not control cells.

        Only possible when ``adata`` has the model's perturbation column. A cell is a control
        when its label has no token that perturbs (:meth:`_effective_tokens`: a molecule at
        dose 0 does not).
        """
        key = self.setup_args.get("perturbation_key")
        if key is None or key not in adata.obs:
            return
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        labels = adata.obs[key].astype(str).to_numpy()
        dose = np.full(adata.n_obs, np.nan)
        dose_key = self.setup_args.get("dose_key")
        if dose_key is not None and dose_key in adata.obs:
            dose = pd.to_numeric(adata.obs[dose_key], errors="coerce").to_numpy(np.float64)
        # one verdict per distinct (label, dose)
        codes, uniques = pd.factorize(pd.Series(labels) + "\x1f" + pd.Series(dose).astype(str))
        first = np.unique(codes, return_index=True)[1]
        parsed = [_parse_or_none(labels[i], control, delimiter) for i in first]
        doses = [None if np.isnan(dose[i]) else float(dose[i]) for i in first]
        effective = self._effective_tokens([("?",) if p is None else p for p in parsed], doses)
        verdict = [p is not None and not e for p, e in zip(parsed, effective, strict=True)]
        is_control = np.asarray(verdict, dtype=bool)[codes]
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

    # ------------------------------------------------------------------ the perturbations
    def _parse_conditions(
        self, perturbation, dose, molecule_features, allow_unknown: bool
    ) -> Conditions:
        """Parse the perturbations and look their tokens up; errors name what is wrong."""
        perturbations = [perturbation] if isinstance(perturbation, str) else list(perturbation)
        if not perturbations:
            raise ValueError("Pass at least one perturbation.")
        control = self.setup_args["control_group"]
        delimiter = self.setup_args["combination_delimiter"]
        tokens = tokenize_column(pd.Series(perturbations), control, delimiter, "perturbation")
        names = [format_tokens(t, control, delimiter) for t in tokens]
        doses = self._condition_doses(dose, len(perturbations))
        new_molecules: dict[str, np.ndarray] = {}
        unknown: list[str] | None = [] if allow_unknown else None
        indices = [
            self._lookup_tokens(t, new_molecules, molecule_features, unknown) for t in tokens
        ]
        if unknown:
            warnings.warn(
                "Tokens unknown to the model, predicted as the generic perturbation: "
                f"{sorted(set(unknown))}.",
                UserWarning,
                stacklevel=4,
            )
        self._check_molecule_doses(names, [i[2] for i in indices], doses)
        effective = self._effective_tokens(tokens, doses)
        return Conditions(names, tokens, indices, doses, effective, new_molecules)

    def _lookup_tokens(
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
                    + did_you_mean(tok, choices)
                    + " To predict genes never seen in training, pass gene_embeddings= when "
                    "creating the model, or allow_unknown=True to predict it as a perturbation "
                    "the model knows nothing about." + self._unknown_token_hint()
                )
            vocab_idx.append(v)
            node_idx.append(n)
            mol_idx.append(m)
        return vocab_idx, node_idx, mol_idx

    def _effective_tokens(self, parsed, doses) -> list[tuple[str, ...]]:
        """The tokens that perturb: molecules given at dose 0 are no perturbation."""
        molecules = set(getattr(self, "molecule_names_", []) or [])
        return [
            tuple(t for t in tokens if not (t in molecules and d is not None and d <= 0))
            for tokens, d in zip(parsed, doses, strict=True)
        ]

    @contextmanager
    def _new_molecules(self, conditions: Conditions) -> Iterator[None]:
        """The feature rows of molecules new to the model, appended to its table in the block."""
        extra = conditions.new_molecules
        rows = torch.from_numpy(np.stack(list(extra.values()))) if extra else None
        self.module.set_extra_molecules(rows)
        try:
            yield
        finally:
            self.module.set_extra_molecules(None)

    def _condition_tensors(
        self, indices: tuple[list[int], list[int], list[int]], dose: float | None, n: int
    ) -> dict[str, torch.Tensor | None]:
        """Token index matrices (cells x tokens) and doses of one perturbation, by argument name
        of the module's ``decode`` and ``expression_probability`` (slice them with
        :func:`slice_condition`)."""
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

    # ------------------------------------------------------------------ the masks and the start
    def _mask_sampler(self, switches: PredictionSwitches) -> MaskSampler | None:
        if switches.mask != "none" and not self.module.use_mask:
            raise ValueError(
                "This model has no mask network (ablation 'no mask'): use mask='none'."
            )
        bank = MaskBank.from_dict(self.mask_bank_) if switches.mask == "coherent" else None
        return mask_sampler(switches.mask, bank, switches.mask_top_genes, switches.mask_thresholds)

    def _mask_plans(
        self,
        sampler: MaskSampler | None,
        X,
        codes,
        conditions: Conditions,
        residual: str,
        batch_size,
    ) -> list[dict] | None:
        """The samplers' plans, per perturbation and cell type, from a first pass over the
        input (the mean predicted probabilities; for the coupled mask, the input's rates).

        With the ablation ``residual="full"`` the coupled mask moves the input's rates by the
        mask network's predicted change from the control token instead of to its predicted rates.
        """
        if sampler is None or not sampler.uses_plan:
            return None
        n = X.shape[0]
        tensors = [
            self._condition_tensors(i, d, n)
            for i, d in zip(conditions.indices, conditions.doses, strict=True)
        ]
        full = residual == "full" and sampler.uses_detection_rates
        if full:
            tensors.append(self._condition_tensors(([], [], []), None, n))
        means = self._mean_probabilities(X, codes, tensors, batch_size)
        reference = means.pop() if full else None
        rates = None
        if sampler.uses_detection_rates:
            n_types = len(self.cell_types_)
            detected = X.detection_counts(codes, n_types, max(batch_size, 4096))
            rates = detected / np.maximum(np.bincount(codes, minlength=n_types), 1)[:, None]
        return [sampler.plan(m, rates, reference) for m in means]

    def _mean_probabilities(self, X, codes, conditions, batch_size) -> list[dict[int, np.ndarray]]:
        """Mean expression probability per perturbation and cell type (a first pass with a
        running sum: memory bounded by a batch)."""
        device = self.module.device
        n_types = len(self.cell_types_)
        counts = np.bincount(codes, minlength=n_types)
        means = []
        for cond in conditions:
            sums = torch.zeros(n_types, self.module.n_genes, dtype=torch.float64)
            for sl in batches(X.shape[0], batch_size):
                x = torch.from_numpy(X[sl]).to(device)
                ct = torch.from_numpy(codes[sl]).to(device)
                p = self.module.expression_probability(x, ct, **slice_condition(cond, sl, device))
                sums.index_add_(0, ct.cpu(), p.double().cpu())
            means.append({int(c): (sums[c] / counts[c]).numpy() for c in np.flatnonzero(counts)})
        return means

    def _starts_from_noise(self, start: str, codes: np.ndarray) -> np.ndarray:
        """Which cells decode from N(0, I) instead of their encoded latent: none (``"latent"``),
        all (``"noise"``), or those of cell types never seen perturbed in training
        (``"auto"``)."""
        if start == "auto":
            perturbed = np.isin(np.asarray(self.cell_types_), self.perturbed_cell_types_)
            return ~perturbed[codes]
        return np.full(len(codes), start == "noise")

    # ------------------------------------------------------------------ the output
    def _prediction_output(
        self,
        out_X: np.ndarray,
        out_p: np.ndarray | None,
        adata_ctrl: ad.AnnData,
        ct_names: np.ndarray,
        conditions: Conditions,
        settings: dict,
        calibration: dict | None = None,
    ) -> ad.AnnData:
        """The AnnData of the predicted cells; ``uns["scdoloris"]``: the ``settings``, the
        perturbations (and doses), the ``calibration`` report and the package version."""
        names, doses, n = conditions.names, conditions.doses, adata_ctrl.n_obs
        with_dose = self.has_doses or any(d is not None for d in doses)
        dose_column = [np.nan if d is None else d for d in doses]
        uns = {**settings, "perturbations": names}
        if with_dose:
            uns["doses"] = dose_column
        if calibration:
            uns["calibration"] = calibration
        out = prediction_anndata(
            out_X,
            self.adata_var_names,
            perturbation=np.repeat(names, n),
            cell_type=np.tile(ct_names, len(names)),
            control_cell=np.tile(np.asarray(adata_ctrl.obs_names, dtype=object), len(names)),
            dose=np.repeat(dose_column, n) if with_dose else None,
            uns={**uns, "version": __version__},
        )
        if out_p is not None:
            out.layers["expression_probability"] = out_p
        return out

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
        for sl in batches(n, 4096):
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


class PredictionRun:
    """One ``predict`` call's second pass: every batch of input cells encoded once and decoded
    under every condition, then the residual and the mask, and at the end the calibration's
    blend per condition (it needs the condition's means).

    The output is allocated once and filled batch by batch: peak memory is the output plus one
    batch (the input is read in batches; sparse or backed inputs stay so).
    """

    def __init__(
        self,
        model,
        X,
        codes: np.ndarray,
        ct_names: np.ndarray,
        conditions: Conditions,
        switches: PredictionSwitches,
        options: PredictOptions,
        seed: int,
    ):
        self.model, self.module = model, model.module
        self.X, self.codes, self.ct_names = X, codes, ct_names
        self.conditions, self.switches, self.options = conditions, switches, options
        n = X.shape[0]
        self.tensors = [
            model._condition_tensors(i, d, n)
            for i, d in zip(conditions.indices, conditions.doses, strict=True)
        ]
        self.control = model._condition_tensors(([], [], []), None, n)
        self.generator = _generator(seed)  # the encoding's: shared by all conditions
        self.streams = conditions.streams(seed)
        self.sampler = model._mask_sampler(switches)
        self.plans = model._mask_plans(
            self.sampler, X, codes, conditions, switches.residual, options.batch_size
        )
        self.blends = None
        if options.calibrate:
            self.blends = model._blend_plan(conditions.effective, conditions.doses, ct_names)

    def cells(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The predicted cells (conditions x input cells, genes) and, if asked, probabilities."""
        n, n_genes, k = self.X.shape[0], self.module.n_genes, len(self.conditions)
        out_X = np.empty((k * n, n_genes), dtype=np.float32)
        out_p = (
            np.empty((k * n, n_genes), dtype=np.float32)
            if self.options.return_probabilities
            else None
        )
        batch_size = self.options.batch_size
        bar = tqdm(
            total=math.ceil(n / batch_size) * k,
            desc="Predicting",
            disable=not self.options.progress_bar,
        )
        for sl in batches(n, batch_size):
            for j, (x_hat, p) in enumerate(self._batch(sl)):
                out_X[j * n + sl.start : j * n + sl.stop] = x_hat
                if out_p is not None:
                    out_p[j * n + sl.start : j * n + sl.stop] = p
                bar.update(1)
        bar.close()
        if self.blends is not None:  # per condition: its means are needed first
            for j, plan in enumerate(self.blends):
                block = out_X[j * n : (j + 1) * n]
                self.model._calibrated(block, self.X, self.ct_names, plan, batch_size)
        return out_X, out_p

    def _batch(self, sl: slice) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Each condition's predicted cells (and probabilities) from the input cells ``sl``."""
        module, device, switches = self.module, self.module.device, self.switches
        x_np = self.X[sl]
        x = torch.from_numpy(x_np).to(device)
        ct = torch.from_numpy(self.codes[sl]).to(device)
        ref = slice_condition(self.control, sl, device)
        from_noise = self.model._starts_from_noise(switches.start, self.codes[sl])
        latent = encoded = None
        if not from_noise.all():
            latent = encoded = module.encode(
                x, ct, self.options.n_steps, self.generator, switches.depth
            )
        from_noise = torch.from_numpy(from_noise).to(device).unsqueeze(-1)
        x_ref = None  # the decoding under the control token, once per latent
        with_p = self.options.return_probabilities
        n_steps, depth = self.options.n_steps, switches.depth
        for j, cond in enumerate(self.tensors):
            if not self.conditions.effective[j]:  # no perturbation (a drug at dose 0): the input
                p = module.expression_probability(x, ct, **ref) if with_p else None
                yield x_np, None if p is None else p.cpu().numpy()
                continue
            kw = slice_condition(cond, sl, device)
            if from_noise.any():  # from N(0, I), each condition from its own random stream
                latent = torch.randn(x.shape, generator=self.streams[j]).to(device)
                if not from_noise.all():
                    latent = torch.where(from_noise, latent, encoded)
                x_ref = None
            x_hat = module.decode(latent, x, ct, n_steps=n_steps, depth=depth, **kw)
            if switches.residual != "none":
                if x_ref is None:
                    x_ref = module.decode(latent, x, ct, n_steps=n_steps, depth=depth, **ref)
                x_hat = residual_expression(x / module.x_max, x_hat, x_ref)
            x_hat = x_hat.clamp_min(0.0)
            p = None
            if with_p or (self.sampler is not None and self.sampler.uses_probabilities):
                p = module.expression_probability(x, ct, **kw)
            if self.sampler is not None:
                plan = None if self.plans is None else self.plans[j]
                keep = self.sampler.draw(plan, x_np, self.codes[sl], self.streams[j], p)
                x_hat = x_hat * torch.as_tensor(keep).to(device)
            x_hat = (x_hat * module.x_max).cpu().numpy()
            yield x_hat, None if p is None or not with_p else p.cpu().numpy()


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices of ``batch_size`` rows over ``n`` rows."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def slice_condition(cond: dict, sl: slice, device) -> dict:
    """Rows ``sl`` of a condition's tensors (:meth:`PredictionMixin._condition_tensors`)."""
    return {k: None if v is None else v[sl].to(device) for k, v in cond.items()}


def matched_labels(plans: list[dict[int, tuple]], names: list[str]) -> dict[str, list[str]]:
    """For uns: the training condition a coherent mask matched for each perturbation (per
    cell type)."""
    return {
        name: [plan[c][3] for c in sorted(plan)] for name, plan in zip(names, plans, strict=True)
    }


def _parse_or_none(label: str, control, delimiter) -> tuple[str, ...] | None:
    try:
        return parse_perturbation(label, control, delimiter)
    except (TypeError, ValueError):  # a malformed label: not a control
        return None


def fresh_seed() -> int:
    """A random seed (for ``seed=None``)."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh random seed when None)."""
    return torch.Generator().manual_seed(int(fresh_seed() if seed is None else seed))


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
