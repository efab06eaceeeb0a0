"""The set-up shared by the tutorial notebooks, kept out of their first screen.

Jupyter starts each notebook in this folder, so its first code cell imports this module::

    from tutorial_setup import find_data, setup

    T0 = setup()  # one thread, quiet environment messages, small figures

:func:`setup` limits PyTorch and the numerical libraries to one thread (as the benchmarks do,
so the printed run times are one-thread times), hides messages of the environment that are not
about the analysis, makes figures small and prints the package versions. :func:`find_data`
finds a file of the shared data folder beside the checkout, or prints how to get the public
data and stops "Run all" without a traceback.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from importlib.metadata import version
from pathlib import Path

__all__ = ["DATA_DIRS", "StopExecution", "find_data", "setup"]

#: Where the shared data folder sits: beside the repository checkout, seen from tutorials/
#: (where Jupyter starts a notebook) and from the repository root.
DATA_DIRS = (Path("../../shared/data"), Path("../shared/data"))
PACKAGES = ("scdoloris", "scanpy", "anndata", "torch", "scvi-tools")


def setup(threads: int | None = 1) -> float:
    """Set up a tutorial's session; call it before importing numpy or torch.

    Parameters
    ----------
    threads
        Threads of PyTorch and of the numerical libraries (``OMP_NUM_THREADS`` and
        ``MKL_NUM_THREADS``, unless already set). ``None`` leaves them alone: on your own
        machine it trains faster.

    Returns
    -------
    ``time.perf_counter()`` at the start, for the notebook's run time.
    """
    start = time.perf_counter()
    if threads is not None:  # before numpy and torch start their thread pools
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    # messages of the environment, not of the analysis: tqdm without ipywidgets, and two of
    # Lightning (a deprecation inside it, and its logging interval on small data)
    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="The number of training batches")
    import scanpy as sc

    sc.settings.verbosity = 0
    sc.set_figure_params(dpi=80, frameon=False, figsize=(4, 4), ipython_format="png")
    import scvi  # noqa: F401  (imports Lightning, which sets its loggers to INFO on import)

    for name in ["lightning.pytorch", "lightning.fabric", "scvi"]:  # e.g. "Seed set to 0"
        logging.getLogger(name).setLevel(logging.WARNING)
    print(", ".join(f"{p} {version(p)}" for p in PACKAGES))
    return start


class StopExecution(Exception):
    """Stops "Run all" without a traceback."""

    def _render_traceback_(self):
        return []


def find_data(file: str, how_to_get: str) -> Path:
    """The path of ``file`` in the shared data folder; else print how to get it and stop.

    Parameters
    ----------
    file
        The file name, e.g. ``"norman2019_k562_subset.h5ad"``.
    how_to_get
        Printed when the file is not found: what the file is and how to get the public data.

    Returns
    -------
    The path of the file (printed).

    Raises
    ------
    StopExecution
        When the file is not in any of :data:`DATA_DIRS`.
    """
    path = next((d / file for d in DATA_DIRS if (d / file).exists()), None)
    if path is None:
        print(f"{file} was not found in {' or '.join(str(d) for d in DATA_DIRS)}.\n{how_to_get}")
        raise StopExecution
    print(f"Reading {path}")
    return path
