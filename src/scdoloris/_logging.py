"""Quiet by default: the chatter of scvi-tools and Lightning, silenced for one call only.

scvi-tools logs at INFO by default (``scvi.settings.verbosity``) and Lightning prints a device
banner, a tip about its cloud logger and a deprecation warning of its own at every training.
None of it is about the user's data. :func:`quiet` raises those loggers to WARNING and ignores
the known harmless warnings for the duration of one call (``train``, ``load``), then puts
everything back: the user's session keeps its own logging levels and warning filters.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: Loggers whose INFO messages are start-up chatter (device banner, "already downloaded", ...).
NOISY_LOGGERS = ("scvi", "lightning.pytorch", "lightning.fabric")
#: Warnings raised inside the libraries, not about the user's data: (category, message regex).
HARMLESS_WARNINGS = (
    # Lightning's own use of a torch.utils._pytree class that torch deprecates
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\)"),
)


def is_verbose(verbose: bool = False) -> bool:
    """Whether to show the libraries' messages: ``verbose``, or scvi's log level below INFO.

    Examples
    --------
    >>> is_verbose(True)
    True
    """
    return bool(verbose) or logging.getLogger("scvi").getEffectiveLevel() < logging.INFO


@contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Silence scvi-tools' and Lightning's INFO messages and harmless warnings within the block.

    Parameters
    ----------
    verbose
        Show everything (as does ``scvi.settings.verbosity = logging.DEBUG``).

    Examples
    --------
    >>> import logging
    >>> with quiet():
    ...     logging.getLogger("scvi").info("not shown")
    """
    if is_verbose(verbose):
        yield
        return
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
        with warnings.catch_warnings():
            for category, message in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
