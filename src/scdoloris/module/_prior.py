"""The additive prior: control means plus the sum of per-token effects, fitted from the data.

The diffusion models work on expression minus the prior's centre (:meth:`AdditivePrior.expressed`)
and the mask network's logits are offset by its per-token detection effects
(:meth:`AdditivePrior.detection`), so the networks learn what the sum of single effects misses:
interactions between tokens and cell-to-cell structure (``docs/guide/method.md``, "The additive
prior"). :meth:`AdditivePrior.fit` estimates it from the training cells once (ridge regression
of each training condition's change on its tokens, :func:`compositional_effects`) and the
module holds it in buffers, so a saved model needs no training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from torch import nn

from .._constants import PAD, UNKNOWN
from .._perturbation import control_rows
from .._switches import UNSEEN_PRIORS
from ._dose import dose_prior_weights


class AdditivePrior(nn.Module):
    """Control means plus summed per-token effects, on expressed values and detection logits.

    All expression is on the module's scale (divided by ``x_max``). Buffers, per cell type
    (``c``), token of the training vocabulary (``k``) and gene: ``control_expressed_mean`` and
    ``control_detection_logit`` (``c x genes``), ``token_expressed_effect`` and
    ``token_detection_effect`` (``k x genes``), the effects expected of a gene token never
    perturbed in training (``unseen_expressed_effect``, ``unseen_detection_effect``), with
    ``per_cell_type`` the per-cell-type effects (``typed_*``, ``c x k x genes``), and with doses
    the effects of each (molecule, training dose) level (``level_*``,
    :func:`~scdoloris.module.dose_prior_weights`).

    Parameters
    ----------
    n_cell_types, n_vocab, n_genes
        Shapes.
    n_dose_levels
        Training (molecule, dose) levels (0: no doses).
    per_cell_type
        Hold per-cell-type token effects (the ablation ``cell_type_prior="similarity"``).

    Attributes
    ----------
    enabled
        False: the prior is zero (the ablation "no prior", the paper's model).
    unseen
        What a gene token never perturbed in training adds: ``"detection"`` (the method: the
        seen tokens' shrunk mean effect on the detection logits), ``"both"`` or ``"none"``.
        It acts at prediction only (training never sees an unseen gene token) and can be
        switched on a trained model.
    """

    def __init__(
        self,
        n_cell_types: int,
        n_vocab: int,
        n_genes: int,
        n_dose_levels: int = 0,
        per_cell_type: bool = False,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.n_dose_levels = n_dose_levels
        self.enabled = True
        self.unseen = "detection"
        self.register_buffer("control_expressed_mean", torch.zeros(n_cell_types, n_genes))
        self.register_buffer("control_detection_logit", torch.zeros(n_cell_types, n_genes))
        self.register_buffer("token_expressed_effect", torch.zeros(n_vocab, n_genes))
        self.register_buffer("token_detection_effect", torch.zeros(n_vocab, n_genes))
        self.register_buffer("unseen_expressed_effect", torch.zeros(n_genes))
        self.register_buffer("unseen_detection_effect", torch.zeros(n_genes))
        n_typed = n_cell_types if per_cell_type and n_cell_types > 1 else 0
        self.register_buffer("typed_expressed_effect", torch.zeros(n_typed, n_vocab, n_genes))
        self.register_buffer("typed_detection_effect", torch.zeros(n_typed, n_vocab, n_genes))
        if n_dose_levels > 0:
            self.register_buffer("level_token", torch.full((n_dose_levels,), PAD))
            self.register_buffer("level_dose", torch.zeros(n_dose_levels, 3))
            self.register_buffer("level_expressed_effect", torch.zeros(n_dose_levels, n_genes))
            self.register_buffer("level_detection_effect", torch.zeros(n_dose_levels, n_genes))
        # what the fit found (see fit); kept by the model, not in the buffers
        self.unseen_expressed_alpha = 0.0
        self.unseen_detection_alpha = 0.0
        self.cell_type_temperature: float | None = None

    @property
    def unseen(self) -> str:
        """``"detection"``, ``"both"`` or ``"none"`` (see the class docstring); settable."""
        return self._unseen

    @unseen.setter
    def unseen(self, value: str) -> None:
        if value not in UNSEEN_PRIORS:
            raise ValueError(f"unseen_prior must be one of {UNSEEN_PRIORS}, got {value!r}.")
        self._unseen = value

    @classmethod
    def fit(
        cls,
        X,
        tokens: np.ndarray,
        cell_type: np.ndarray,
        n_cell_types: int,
        n_vocab: int,
        x_max: float,
        seen_tokens: np.ndarray,
        levels=None,
        per_cell_type: bool = False,
    ) -> AdditivePrior:
        """Estimate the prior from the training cells.

        Parameters
        ----------
        X
            Cells x genes log-normalised expression (dense or sparse).
        tokens
            Cells x max_tokens vocabulary indices (``-1``: padding; molecule tokens given at
            dose 0 removed).
        cell_type
            Integer cell type of each cell.
        n_cell_types, n_vocab
            Numbers of cell types and training tokens.
        x_max
            The largest expression value: effects on expressed values are divided by it.
        seen_tokens
            Per training token: does it count for the effect of unseen gene tokens (every token
            but molecules: nothing in a label tells an unmeasured gene from, e.g., a
            stimulation).
        levels
            The dose levels (:class:`~scdoloris.model._molecules.DoseLevels`), or None: a
            molecule token at each training dose is then a token of its own in the regression.
        per_cell_type
            Also estimate per-cell-type effects (:func:`cell_type_effects`).

        Returns
        -------
        The fitted prior; ``unseen_expressed_alpha`` and ``unseen_detection_alpha`` are the
        leave-one-out factors of :func:`shrunk_mean_effect`, ``cell_type_temperature`` the
        transfer temperature of :func:`cell_type_effects` (None without per-cell-type effects).
        """
        n_levels = 0 if levels is None else len(levels)
        prior_tokens = tokens
        if n_levels:
            prior_tokens = np.where(levels.cell_level >= 0, n_vocab + levels.cell_level, tokens)
        n_prior = n_vocab + n_levels
        effects = compositional_effects(X, prior_tokens, cell_type, n_cell_types, n_prior)
        expressed = effects.token_expressed_effect
        detection = effects.token_detection_effect
        unseen_expr, alpha_expr = shrunk_mean_effect(expressed[:n_vocab][seen_tokens])
        unseen_logit, alpha_logit = shrunk_mean_effect(detection[:n_vocab][seen_tokens])
        prior = cls(n_cell_types, n_vocab, X.shape[1], n_levels, per_cell_type)
        # the expressed parts on the module's scale: x_max as the module holds it (float32)
        scale = float(torch.tensor(float(x_max), dtype=torch.float32))

        def scaled(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a) / scale

        prior.control_expressed_mean.copy_(scaled(effects.control_expressed_mean))
        prior.control_detection_logit.copy_(torch.as_tensor(effects.control_detection_logit))
        prior.token_expressed_effect.copy_(scaled(expressed[:n_vocab]))
        prior.token_detection_effect.copy_(torch.as_tensor(detection[:n_vocab]))
        prior.unseen_expressed_effect.copy_(scaled(unseen_expr))
        prior.unseen_detection_effect.copy_(torch.as_tensor(unseen_logit))
        prior.unseen_expressed_alpha, prior.unseen_detection_alpha = alpha_expr, alpha_logit
        if prior.typed_expressed_effect.shape[0] > 0:
            typed_expr, typed_logit, temperature = cell_type_effects(
                X, prior_tokens, cell_type, n_cell_types, n_prior
            )
            prior.typed_expressed_effect.copy_(scaled(typed_expr[:, :n_vocab]))
            prior.typed_detection_effect.copy_(torch.as_tensor(typed_logit[:, :n_vocab]))
            prior.cell_type_temperature = temperature
        if n_levels:
            prior.level_token.copy_(torch.as_tensor(levels.token))
            prior.level_dose.copy_(torch.as_tensor(levels.dose))
            prior.level_expressed_effect.copy_(scaled(expressed[n_vocab:]))
            prior.level_detection_effect.copy_(torch.as_tensor(detection[n_vocab:]))
        return prior

    # ------------------------------------------------------------------ the prior of a cell
    def expressed(
        self,
        cell_type: torch.Tensor,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor | None = None,
        dose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The centre of the diffusion models: control mean + the sum of token effects.

        The bridge from a control cell then carries the summed token effects by construction.
        Molecule tokens with doses add their effect interpolated between their training doses
        (``dose`` on the model's scale). Gene tokens never seen in training (known by
        ``node_idx``) and unknown tokens add the unseen-token effect with ``unseen="both"``.
        """
        if not self.enabled:
            return torch.zeros(cell_type.shape[0], self.n_genes, device=cell_type.device)
        base = self.control_expressed_mean[cell_type]
        dosed = self._dose_part("level_expressed_effect", vocab_idx, dose)
        unseen = self.unseen_expressed_effect if self.unseen == "both" else None
        tokens = self._token_sum(
            self.token_expressed_effect,
            vocab_idx,
            node_idx,
            unseen,
            cell_type,
            self.typed_expressed_effect,
        )
        return base + tokens + dosed

    def detection(
        self,
        cell_type: torch.Tensor,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor | None = None,
        dose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The offset of the mask's logits: the sum of token effects on detection logits
        (gene tokens never seen in training add the unseen-token effect unless
        ``unseen="none"``)."""
        if not self.enabled:
            return torch.zeros(vocab_idx.shape[0], self.n_genes, device=vocab_idx.device)
        dosed = self._dose_part("level_detection_effect", vocab_idx, dose)
        tokens = self._token_sum(
            self.token_detection_effect,
            vocab_idx,
            node_idx,
            self.unseen_detection_effect,
            cell_type,
            self.typed_detection_effect,
        )
        return tokens + dosed

    def _dose_part(self, table_name: str, vocab_idx, dose) -> torch.Tensor | float:
        """The dose levels' part of the prior (0 without doses)."""
        if self.n_dose_levels == 0 or dose is None:
            return 0.0
        weights = dose_prior_weights(vocab_idx, dose, self.level_token, self.level_dose)
        return weights @ getattr(self, table_name)

    def _token_sum(
        self,
        table: torch.Tensor,
        vocab_idx: torch.Tensor,
        node_idx: torch.Tensor | None,
        unseen: torch.Tensor | None,
        cell_type: torch.Tensor,
        typed: torch.Tensor,
    ) -> torch.Tensor:
        """Sum of a per-token table over each cell's tokens.

        With per-cell-type effects (``typed``: cell types x tokens x genes, not empty) each cell
        takes its cell type's row. Gene tokens outside the training vocabulary (``vocab_idx``
        PAD but a node in ``node_idx``) and unknown tokens (``vocab_idx``
        :data:`~scdoloris._constants.UNKNOWN`) add ``unseen`` each; other tokens add nothing.
        """
        if table.shape[0] == 0:
            out = table.new_zeros(vocab_idx.shape[0], self.n_genes)
        else:
            known = (vocab_idx >= 0).unsqueeze(-1)
            safe = vocab_idx.clamp_min(0)
            per_type = typed.shape[0] > 0 and cell_type is not None
            rows = typed[cell_type.unsqueeze(-1), safe] if per_type else table[safe]
            out = (rows * known).sum(1)
        if unseen is not None and self.unseen != "none":
            node_idx = torch.full_like(vocab_idx, PAD) if node_idx is None else node_idx
            unseen_gene = (vocab_idx == PAD) & (node_idx != PAD)
            n_unseen = (unseen_gene | (vocab_idx == UNKNOWN)).sum(-1, keepdim=True)
            out = out + n_unseen.to(unseen.dtype) * unseen
        return out


# ---------------------------------------------------------------------------------- estimators
@dataclass
class CompositionalEffects:
    """Per-token effects on detection and on expressed values, for the additive prior.

    Attributes
    ----------
    control_expressed_mean
        Cell types x genes: mean of the non-zero values of control cells.
    control_detection_logit
        Cell types x genes: logit of the smoothed fraction of control cells expressing each gene.
    token_expressed_effect
        Tokens x genes: the change of the mean expressed value that each token causes.
    token_detection_effect
        Tokens x genes: the change of the detection logit that each token causes.
    """

    control_expressed_mean: np.ndarray
    control_detection_logit: np.ndarray
    token_expressed_effect: np.ndarray
    token_detection_effect: np.ndarray


def _expressed_stats(X, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of values, number of non-zero entries and number of cells over ``rows``."""
    sub = X[rows]
    if sparse.issparse(sub):
        total = np.asarray(sub.sum(0)).ravel()
        nnz = np.asarray((sub != 0).sum(0)).ravel()
    else:
        sub = np.asarray(sub)
        total, nnz = sub.sum(0), (sub != 0).sum(0)
    return total.astype(np.float64), nnz.astype(np.float64), float(len(rows))


def _logit(k: np.ndarray, n: float) -> np.ndarray:
    p = (k + 0.5) / (n + 1.0)
    return np.log(p) - np.log1p(-p)


def compositional_effects(
    X,
    tokens: np.ndarray,
    cell_type: np.ndarray,
    n_cell_types: int,
    n_vocab: int,
    ridge: float = 0.1,
    single_weight: float = 10.0,
) -> CompositionalEffects:
    """Estimate each token's effect on detection logits and expressed values.

    Every training condition (token set x cell type) gives its change from the controls of its
    cell type: of the detection logit, and of the mean over expressed (non-zero) entries. The
    changes of all conditions are fitted as sums of per-token effects by weighted ridge
    regression, single-token conditions weighted ``single_weight`` times more than combinations,
    so a token seen alone takes (almost) its own measured effect and a token seen only in
    combinations gets what the combinations imply.

    Parameters
    ----------
    X
        Cells x genes log-normalised expression.
    tokens
        Cells x max_tokens vocabulary indices (-1 for padding).
    cell_type
        Integer cell type of each cell.
    n_cell_types, n_vocab
        Numbers of cell types and tokens.
    ridge
        Ridge penalty of the fit.
    single_weight
        Weight of single-token conditions.
    """
    if sparse.issparse(X):
        X = X.tocsr()
    n_genes = X.shape[1]
    is_control = control_rows(tokens)
    ctrl_mean = np.zeros((n_cell_types, n_genes))
    ctrl_logit = np.zeros((n_cell_types, n_genes))
    for ct in range(n_cell_types):
        rows = np.flatnonzero(is_control & (cell_type == ct))
        if len(rows) == 0:
            continue
        total, nnz, n = _expressed_stats(X, rows)
        ctrl_mean[ct] = np.where(nnz > 0, total / np.maximum(nnz, 1), 0.0)
        ctrl_logit[ct] = _logit(nnz, n)

    keys = [tuple(int(i) for i in r if i != -1) for r in tokens]
    groups: dict[tuple, list[int]] = {}
    for i, (k, ct) in enumerate(zip(keys, cell_type, strict=True)):
        if k:
            groups.setdefault((k, int(ct)), []).append(i)
    if not groups or n_vocab == 0:
        zeros = np.zeros((max(n_vocab, 0), n_genes), np.float32)
        return CompositionalEffects(
            ctrl_mean.astype(np.float32), ctrl_logit.astype(np.float32), zeros, zeros.copy()
        )
    design = np.zeros((len(groups), n_vocab))
    d_expr = np.zeros((len(groups), n_genes))
    d_logit = np.zeros((len(groups), n_genes))
    weights = np.zeros(len(groups))
    for j, ((k, ct), rows) in enumerate(groups.items()):
        design[j, list(k)] = 1.0
        total, nnz, n = _expressed_stats(X, np.asarray(rows))
        mean = np.where(nnz > 0, total / np.maximum(nnz, 1), ctrl_mean[ct])
        both = (nnz > 0) & (ctrl_mean[ct] > 0)
        d_expr[j] = np.where(both, mean - ctrl_mean[ct], 0.0)
        d_logit[j] = _logit(nnz, n) - ctrl_logit[ct]
        weights[j] = single_weight if len(k) == 1 else 1.0
    Aw = design * weights[:, None]
    gram = design.T @ Aw + ridge * np.eye(n_vocab)
    expr = np.linalg.solve(gram, Aw.T @ d_expr)
    logit = np.linalg.solve(gram, Aw.T @ d_logit)
    return CompositionalEffects(
        ctrl_mean.astype(np.float32),
        ctrl_logit.astype(np.float32),
        expr.astype(np.float32),
        logit.astype(np.float32),
    )


def shrunk_mean_effect(effects: np.ndarray) -> tuple[np.ndarray, float]:
    """The effect to expect of a token never seen in training: the seen tokens' mean, shrunk.

    With nothing known of a new token, the best guess of its effect is a multiple ``alpha`` of
    the seen tokens' mean effect: ``alpha`` near 1 when the seen tokens act alike (a screen
    whose perturbations mostly hit one pathway), near 0 when their effects differ or cancel.
    ``alpha`` is fitted by leave-one-out on the seen tokens themselves: each token's effect is
    predicted by the mean of the others, and ``alpha`` is the least-squares scale of those
    predictions, ``sum_k <e_k, m_-k> / sum_k |m_-k|^2``, clipped to [0, 1]. No held-out data
    is used; with fewer than two tokens ``alpha`` is 0.

    Parameters
    ----------
    effects
        Tokens x genes: the seen tokens' effects (e.g. on expressed values).

    Returns
    -------
    ``(alpha * mean effect, alpha)``.

    Examples
    --------
    >>> effect, alpha = shrunk_mean_effect(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    >>> effect.tolist(), alpha
    ([1.0, 0.0], 1.0)
    >>> shrunk_mean_effect(np.array([[1.0, 0.0], [-1.0, 0.0]]))[1]
    0.0
    >>> effect, alpha = shrunk_mean_effect(np.array([[2.0], [0.0], [0.0]]))
    >>> round(alpha, 4), effect.round(4).tolist()
    (0.0, [0.0])
    """
    E = np.asarray(effects, dtype=np.float64)
    n = E.shape[0]
    if n < 2:
        return np.zeros(E.shape[1], dtype=np.float32), 0.0
    loo = (E.sum(0, keepdims=True) - E) / (n - 1)
    denominator = float((loo**2).sum())
    alpha = float(np.clip((E * loo).sum() / denominator, 0.0, 1.0)) if denominator > 0 else 0.0
    return (alpha * E.mean(0)).astype(np.float32), alpha


TRANSFER_TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, np.inf)


def transfer_weights(distance: np.ndarray, temperature: float) -> np.ndarray:
    """Weights of source cell types for one target: ``softmax(-distance / temperature)``.

    ``temperature=inf`` gives equal weights (the pooled average).

    Examples
    --------
    >>> transfer_weights(np.array([0.0, 1.0]), np.inf).tolist()
    [0.5, 0.5]
    >>> transfer_weights(np.array([0.0, 1.0]), 1.0).round(3).tolist()
    [0.731, 0.269]
    """
    d = np.asarray(distance, dtype=np.float64)
    if not np.isfinite(temperature):
        return np.full(d.shape, 1.0 / len(d))
    logits = -(d - d.min()) / temperature
    w = np.exp(logits)
    return w / w.sum()


def fit_transfer_temperature(
    effects: np.ndarray, measured: np.ndarray, distance: np.ndarray
) -> float:
    """The temperature of :func:`transfer_weights` that best predicts measured effects.

    Leave one cell type out: each effect a token has in a cell type where it was measured is
    predicted from the token's effects in the other cell types where it was measured, weighted
    by :func:`transfer_weights` of their distances; the temperature of
    :data:`TRANSFER_TEMPERATURES` with the smallest squared error wins (``inf``, the pooled
    average, when no token was measured in two cell types; ties go to the larger).

    Parameters
    ----------
    effects
        Cell types x tokens x genes.
    measured
        Cell types x tokens, boolean.
    distance
        Cell types x cell types, scaled (e.g. by the median distance).
    """
    errors = dict.fromkeys(TRANSFER_TEMPERATURES, 0.0)
    cases = 0
    for c in range(measured.shape[0]):
        for k in np.flatnonzero(measured[c]):
            others = np.flatnonzero(measured[:, k])
            others = others[others != c]
            if len(others) == 0:
                continue
            cases += 1
            for temperature in TRANSFER_TEMPERATURES:
                w = transfer_weights(distance[c, others], temperature)
                guess = np.tensordot(w, effects[others, k], axes=1)
                errors[temperature] += float(((effects[c, k] - guess) ** 2).sum())
    if cases == 0:
        return float(np.inf)
    # ties (e.g. every held-out effect has one source) go to the larger temperature
    return float(min(reversed(TRANSFER_TEMPERATURES), key=errors.get))


def cell_type_effects(
    X,
    tokens: np.ndarray,
    cell_type: np.ndarray,
    n_cell_types: int,
    n_vocab: int,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each token's effects per cell type, transferred to cell types where it was never seen.

    Where a token was measured in a cell type, its effect there is
    :func:`compositional_effects` fitted on that cell type's cells alone. Elsewhere it is the
    average of its effects in the cell types where it was measured, weighted by how close their
    control cells are (:func:`transfer_weights` of the Euclidean distance between the cell
    types' mean control expression, divided by the median such distance), with the
    temperature fitted by leave-one-cell-type-out (:func:`fit_transfer_temperature`). The
    pooled fit of :func:`compositional_effects` shares one effect across all cell types,
    whatever their likeness; this lets a held-out monocyte type take its response mostly from
    other monocytes.

    Parameters
    ----------
    X, tokens, cell_type, n_cell_types, n_vocab
        As in :func:`compositional_effects`.
    **kwargs
        Passed to :func:`compositional_effects`.

    Returns
    -------
    ``(expressed, detection, temperature)``: cell types x tokens x genes effects on expressed
    values and detection logits, and the fitted temperature.
    """
    if sparse.issparse(X):
        X = X.tocsr()
    n_genes = X.shape[1]
    expressed = np.zeros((n_cell_types, n_vocab, n_genes), np.float32)
    detection = np.zeros_like(expressed)
    measured = np.zeros((n_cell_types, n_vocab), bool)
    control_means = np.zeros((n_cell_types, n_genes))
    is_control = control_rows(tokens)
    for c in range(n_cell_types):
        rows = np.flatnonzero(cell_type == c)
        if len(rows) == 0:
            continue
        ctrl = rows[is_control[rows]]
        if len(ctrl):
            control_means[c] = np.asarray(X[ctrl].mean(0)).ravel()
        used = np.unique(tokens[rows])
        measured[c, used[used >= 0]] = True
        eff = compositional_effects(
            X[rows], tokens[rows], np.zeros(len(rows), int), 1, n_vocab, **kwargs
        )
        expressed[c] = eff.token_expressed_effect
        detection[c] = eff.token_detection_effect
    diff = control_means[:, None, :] - control_means[None, :, :]
    distance = np.sqrt((diff**2).sum(-1))
    off_diagonal = distance[~np.eye(n_cell_types, dtype=bool)]
    scale = np.median(off_diagonal) if off_diagonal.size and np.median(off_diagonal) > 0 else 1.0
    distance = distance / scale
    temperature = fit_transfer_temperature(expressed, measured, distance)
    for c in range(n_cell_types):
        for k in np.flatnonzero(~measured[c]):
            sources = np.flatnonzero(measured[:, k])
            if len(sources) == 0:
                continue
            w = transfer_weights(distance[c, sources], temperature)
            expressed[c, k] = np.tensordot(w, expressed[sources, k], axes=1)
            detection[c, k] = np.tensordot(w, detection[sources, k], axes=1)
    return expressed, detection, temperature
