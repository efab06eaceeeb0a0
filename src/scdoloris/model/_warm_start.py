"""Train once: the model's networks start from the inner model's trained weights.

``train()`` trains an inner model for its calibration on all but a few of the training
conditions. The model itself starts from those weights and trains only as long as it takes to
learn what the inner model did not see, instead of training from scratch: with the
calibration, ``train()`` costs about one training run, not two.

Only parameters move; every buffer (the additive prior, the control states, the gene graph:
what each model derives from its own data) stays the model's own. Parameters match by name
and shape, and a token embedding table (one row per perturbation token) matches row by row by
token name: a token the inner model never saw keeps its fresh initialisation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

#: parameters with one row per token of the vocabulary (``PerturbationEncoder.learned``)
TOKEN_TABLE_SUFFIX = "learned.weight"
#: with the calibration, the inner model trains this fraction of the steps of a model trained
#: from scratch, and the model, started from it, this fraction: together one training run
#: instead of two. Chosen one level down on the inner validation of the benchmark's folds
#: (benchmarks/experiments/train_once.py; benchmarks/README.md, "Train once"): there (0.5, 0.5)
#: scored as well as training both from scratch within noise, where (0.5, 0.25) and (1, 0.25) lost
#: E-distance and EMD on Kang's held-out cell types
INNER_FRACTION = 0.5
FINAL_FRACTION = 0.5


def phase(message: str, trainer_kwargs: dict) -> None:
    """Say which phase of ``train()`` starts (above its progress bar), unless the training's
    keyword arguments ``trainer_kwargs`` hide the progress bar (``enable_progress_bar=False``)."""
    if trainer_kwargs.get("enable_progress_bar", True) is not False:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def warm_start(
    module: torch.nn.Module,
    source: torch.nn.Module,
    vocabulary: Sequence[str],
    source_vocabulary: Sequence[str],
) -> dict[str, int]:
    """Copy ``source``'s parameters into ``module`` where they fit.

    Parameters
    ----------
    module
        The module to start (its parameters are overwritten in place).
    source
        A trained module of the same class and settings, built on other data.
    vocabulary, source_vocabulary
        The perturbation tokens indexing the rows of each module's token tables.

    Returns
    -------
    Counts: ``copied`` (whole parameters), ``token_rows`` (rows of token tables) and
    ``kept`` (parameters left as they were: no match).

    Examples
    --------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> warm_start(a, b, [], [])
    {'copied': 2, 'token_rows': 0, 'kept': 0}
    >>> bool(torch.equal(a.weight, b.weight))
    True
    """
    theirs = dict(source.named_parameters())
    rows = {t: i for i, t in enumerate(vocabulary)}
    pairs = [(rows[t], j) for j, t in enumerate(source_vocabulary) if t in rows]
    counts = {"copied": 0, "token_rows": 0, "kept": 0}
    with torch.no_grad():
        for name, mine in module.named_parameters():
            other = theirs.get(name)
            if other is None:
                counts["kept"] += 1
            elif name.endswith(TOKEN_TABLE_SUFFIX) and mine.shape[1:] == other.shape[1:]:
                to = [i for i, j in pairs if i < mine.shape[0] and j < other.shape[0]]
                frm = [j for i, j in pairs if i < mine.shape[0] and j < other.shape[0]]
                mine[to] = other[frm].to(mine.device, mine.dtype)
                counts["token_rows"] += len(to)
            elif mine.shape == other.shape:
                mine.copy_(other.to(mine.device, mine.dtype))
                counts["copied"] += 1
            else:
                counts["kept"] += 1
    return counts
