"""Mask sampling: how the mask network's probabilities become each predicted cell's expressed genes.

Every sampler has the same two passes (:class:`MaskSampler`): :meth:`~MaskSampler.plan`, once
per condition and cell type from the mean predicted probabilities of the input cells, then
:meth:`~MaskSampler.draw`, one mask per predicted cell, batch by batch, from the condition's
random stream. :class:`CoupledMaskSampler` is the method's: each control cell keeps its own
pattern of expressed genes, changed as little as the predicted detection rates need.
:class:`CoherentMaskSampler` is the paper's "subset matching" (real masks of the nearest
training condition) and :class:`BernoulliMaskSampler` independent draws, both ablations
(:mod:`scdoloris.ablations`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MaskBank:
    """Binary expression masks of real training cells, grouped by condition.

    Attributes
    ----------
    conditions
        One label per condition (perturbation and cell type).
    mean_activation
        Conditions x genes: the fraction of the condition's cells in which each gene is non-zero
        (over all its cells, not only the kept ones).
    packed
        Kept cells x ceil(genes / 8) uint8: the masks, bit-packed (``np.packbits``).
    offsets
        Conditions + 1: the rows of ``packed`` of condition ``i`` are ``offsets[i]:offsets[i+1]``.
    n_genes
        Number of genes (to unpack).
    """

    conditions: list[str]
    mean_activation: np.ndarray
    packed: np.ndarray
    offsets: np.ndarray
    n_genes: int

    def masks(self, i: int) -> np.ndarray:
        """The boolean masks (cells x genes) kept for condition ``i``."""
        rows = self.packed[self.offsets[i] : self.offsets[i + 1]]
        return np.unpackbits(rows, axis=1, count=self.n_genes).astype(bool)

    def to_dict(self) -> dict:
        """Plain arrays, for saving with the model."""
        return {
            "conditions": list(self.conditions),
            "mean_activation": self.mean_activation,
            "packed": self.packed,
            "offsets": self.offsets,
            "n_genes": self.n_genes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MaskBank:
        return cls(**d)


def build_mask_bank(
    expressed,
    condition: np.ndarray,
    max_cells_per_condition: int = 500,
    seed: int = 0,
) -> MaskBank:
    """Collect the binary masks of the training cells of each condition.

    Parameters
    ----------
    expressed
        Cells x genes; non-zero entries count as expressed (dense or scipy sparse).
    condition
        Condition label of each cell.
    max_cells_per_condition
        At most this many cells (drawn at random) are kept per condition, so the bank stays
        bounded on large screens: 500 cells x 5000 genes take 312 kB per condition.
    seed
        Seed of the subsampling.

    Examples
    --------
    >>> bank = build_mask_bank(np.array([[1, 0], [0, 0], [2, 3]]), np.array(["a", "a", "b"]))
    >>> bank.conditions, bank.mean_activation.tolist()
    (['a', 'b'], [[0.5, 0.0], [1.0, 1.0]])
    """
    rng = np.random.default_rng(seed)
    condition = np.asarray(condition).astype(str)
    labels = sorted(set(condition.tolist()))
    n_genes = expressed.shape[1]
    means, packed, offsets = [], [], [0]
    for label in labels:
        rows = np.flatnonzero(condition == label)
        block = expressed[rows]
        block = (block != 0).toarray() if hasattr(block, "toarray") else np.asarray(block) != 0
        means.append(block.mean(0))
        if len(rows) > max_cells_per_condition:
            block = block[rng.choice(len(rows), max_cells_per_condition, replace=False)]
        packed.append(np.packbits(block, axis=1))
        offsets.append(offsets[-1] + block.shape[0])
    return MaskBank(
        conditions=labels,
        mean_activation=np.vstack(means).astype(np.float32),
        packed=np.vstack(packed),
        offsets=np.asarray(offsets, dtype=np.int64),
        n_genes=n_genes,
    )


def nearest_condition(mean_activation: np.ndarray, p: np.ndarray, top_genes: int = 300) -> int:
    """Index of the condition whose mean activation is nearest (L2) to ``p`` on its top genes.

    The genes compared are the ``top_genes`` with the highest predicted probability ``p``.

    Examples
    --------
    >>> nearest_condition(np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]), np.array([0.3, 0.7, 0.0]), 2)
    1
    """
    k = min(top_genes, p.shape[0])
    top = np.argpartition(-p, k - 1)[:k]
    dist = ((mean_activation[:, top] - p[top]) ** 2).sum(1)
    return int(np.argmin(dist))


class MaskSampler:
    """The interface of the mask samplers: a plan per cell type, then one mask per cell.

    Attributes
    ----------
    uses_plan
        :meth:`plan` is needed (the mean probabilities of a first pass over the input).
    uses_detection_rates
        :meth:`plan` needs the input cells' detection rates.
    uses_probabilities
        :meth:`draw` needs each cell's probabilities.
    """

    uses_plan = True
    uses_detection_rates = False
    uses_probabilities = False

    def plan(
        self,
        probabilities: dict[int, np.ndarray],
        detection_rates: np.ndarray | None = None,
        reference: dict[int, np.ndarray] | None = None,
    ) -> dict[int, tuple]:
        """What :meth:`draw` needs, per cell type (code).

        Parameters
        ----------
        probabilities
            Per cell type: the mean predicted probability of each gene over the input cells.
        detection_rates
            Cell types x genes: the fraction of input cells expressing each gene.
        reference
            Per cell type: the mean probabilities under the control token, to move the input's
            rates by the predicted change instead of to the predicted rates (the ablation
            ``residual="full"``).
        """
        raise NotImplementedError

    def draw(
        self,
        plan: dict[int, tuple] | None,
        x: np.ndarray,
        codes: np.ndarray,
        generator: torch.Generator,
        probabilities: torch.Tensor | None = None,
    ) -> np.ndarray | torch.Tensor:
        """One mask per cell of ``x`` (input cells x genes, cell-type ``codes``), drawn from
        ``generator``: 1 where the gene is expressed."""
        keep = np.zeros(x.shape, dtype=np.float32)
        for c in np.unique(codes):
            rows = np.flatnonzero(codes == c)
            keep[rows] = self._draw(plan[int(c)], x[rows], generator)
        return keep

    def _draw(self, plan: tuple, x: np.ndarray, generator: torch.Generator) -> np.ndarray:
        raise NotImplementedError


class CoupledMaskSampler(MaskSampler):
    """Each cell keeps its own expression pattern, changed as little as the rates need.

    A gene expressed in the input cell stays expressed with probability ``min(1, p / q)``, a
    silent one switches on with probability ``max(0, (p - q) / (1 - q))``, where ``q`` is the
    input cells' detection rate and ``p`` the predicted one: the group's rates move from ``q``
    to ``p`` while each cell changes as little as possible.

    Examples
    --------
    >>> sampler = CoupledMaskSampler()
    >>> plan = sampler.plan({0: np.array([0.5, 1.0])}, np.array([[1.0, 0.5]]))
    >>> [a.tolist() for a in plan[0]]
    [[0.5, 1.0], [0.0, 1.0]]
    """

    uses_detection_rates = True

    def plan(self, probabilities, detection_rates=None, reference=None):
        plans = {}
        for c, p in probabilities.items():
            q = detection_rates[c]
            if reference is not None:
                p = np.clip(q + p - reference[c], 0.0, 1.0)
            keep = np.where(q > 0, np.minimum(1.0, p / np.maximum(q, 1e-12)), 0.0)
            switch_on = np.where(q < 1, np.maximum(0.0, (p - q) / np.maximum(1 - q, 1e-12)), 0.0)
            plans[c] = (keep.astype(np.float32), switch_on.astype(np.float32))
        return plans

    def _draw(self, plan, x, generator):
        p_keep, p_on = plan
        u = torch.rand((x.shape[0], x.shape[1]), generator=generator).numpy()
        return np.where(x != 0, u < p_keep, u < p_on)


class BernoulliMaskSampler(MaskSampler):
    """Each gene of each cell expressed independently with its predicted probability."""

    uses_plan = False
    uses_probabilities = True

    def plan(self, probabilities, detection_rates=None, reference=None):
        return {}

    def draw(self, plan, x, codes, generator, probabilities=None):
        draw = torch.rand(probabilities.shape, generator=generator).to(probabilities.device)
        return draw < probabilities


class CoherentMaskSampler(MaskSampler):
    """Draw whole, real expression patterns for predicted cells.

    Independent Bernoulli draws per gene ignore which genes are expressed together. Instead, the
    predicted probabilities of a group of cells are averaged to ``p``; the training condition
    whose mean activation is nearest to ``p`` on the ``top_genes`` most probable genes is found;
    each predicted cell gets the mask of one of that condition's real cells, drawn at random;
    finally genes with ``p >= high`` are switched on and genes with ``p <= low`` off.

    Parameters
    ----------
    bank
        The training conditions' masks.
    top_genes
        Number of genes compared when matching.
    thresholds
        ``(low, high)`` hard thresholds on ``p``.

    Examples
    --------
    >>> bank = build_mask_bank(np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0]]), np.array(["a", "a", "b"]))
    >>> sampler = CoherentMaskSampler(bank, top_genes=2, thresholds=(0.01, 0.99))
    >>> masks, label = sampler.sample(np.array([[0.9, 0.1, 0.5]] * 4), np.random.default_rng(0))
    >>> label, masks.shape, bool(masks[:, 0].all())
    ('a', (4, 3), True)
    """

    def __init__(
        self, bank: MaskBank, top_genes: int = 300, thresholds: tuple[float, float] = (0.01, 0.99)
    ):
        low, high = thresholds
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"mask_thresholds must satisfy 0 <= low < high <= 1, got {thresholds}."
            )
        if top_genes < 1:
            raise ValueError(f"mask_top_genes must be at least 1, got {top_genes}.")
        self.bank = bank
        self.top_genes = top_genes
        self.low, self.high = low, high

    def match(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """For mean probabilities ``p``: the matched condition's masks, the genes forced on and
        off, and the condition's label."""
        i = nearest_condition(self.bank.mean_activation, p, self.top_genes)
        return self.bank.masks(i), p >= self.high, p <= self.low, self.bank.conditions[i]

    def plan(self, probabilities, detection_rates=None, reference=None):
        """Per cell type: :meth:`match` of its mean probabilities."""
        return {c: self.match(p) for c, p in probabilities.items()}

    def _draw(self, plan, x, generator):
        masks, on, off, _ = plan
        pick = torch.randint(0, masks.shape[0], (x.shape[0],), generator=generator).numpy()
        chosen = masks[pick]
        chosen[:, on] = True
        chosen[:, off] = False
        return chosen

    def sample(self, probabilities: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """One mask per row of ``probabilities`` (cells x genes) of one group of cells, drawn as
        :meth:`draw` draws them (from a generator seeded by ``rng``); returns masks and the
        matched condition."""
        plan = self.match(probabilities.mean(0))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self._draw(plan, probabilities, generator), plan[3]


def mask_sampler(
    mode: str,
    bank: MaskBank | None = None,
    top_genes: int = 300,
    thresholds: tuple[float, float] = (0.01, 0.99),
) -> MaskSampler | None:
    """The sampler of a ``mask`` mode: ``"coupled"``, ``"coherent"`` (needs the ``bank``),
    ``"bernoulli"``, or ``"none"`` (None: no mask)."""
    if mode == "coupled":
        return CoupledMaskSampler()
    if mode == "coherent":
        return CoherentMaskSampler(bank, top_genes, thresholds)
    if mode == "bernoulli":
        return BernoulliMaskSampler()
    return None
