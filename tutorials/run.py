"""Execute the tutorial notebooks in place, keeping their outputs (``make tutorials``).

The notebooks are stored in git with their outputs, and the documentation shows those outputs
without executing anything (``nb_execution_mode = "off"`` in ``docs/conf.py``). Run this after
a change to the package or to a notebook, then commit the notebooks::

    make tutorials                                      # all notebooks, one thread
    make tutorials NOTEBOOKS=tutorials/01_norman_gene_pairs.ipynb
    .venv/bin/python tutorials/run.py --timeout 900 tutorials/02_*.ipynb

Each notebook runs in a fresh kernel with ``tutorials/`` as its working directory and needs the
shared data folder ``../shared/data`` beside the checkout. The kernel gets one thread
(``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1`` unless already set; the notebooks also call
``torch.set_num_threads(1)``). Execution timings are not written into the notebooks, so that
re-running them changes only their outputs. The wall time of every notebook is printed; a
notebook over the budget (5 minutes) is reported but still written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent.parent / "shared" / "data"
BUDGET_SECONDS = 300


def execute(path: Path, timeout: int) -> float:
    """Run one notebook in a fresh kernel and write it back with its outputs.

    Parameters
    ----------
    path
        The notebook.
    timeout
        Seconds allowed for each cell.

    Returns
    -------
    The wall time in seconds.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Execute the notebooks given on the command line (default: all of ``tutorials/``).

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The exit status: 0 when every notebook ran, 1 when one failed, 2 without the data.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: tutorials/*.ipynb")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    args = parser.parse_args(argv)
    notebooks = [p.resolve() for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    if not DATA_DIR.is_dir():
        print(
            f"{DATA_DIR} not found: the tutorials read the shared data folder beside the "
            "checkout. Each notebook explains how to get the public data instead.",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the kernels
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    status = 0
    for path in notebooks:
        print(f"{path.name}: running ...", flush=True)
        try:
            seconds = execute(path, args.timeout)
        except Exception as err:  # a failing cell: report it, go on with the next notebook
            print(f"{path.name}: FAILED ({type(err).__name__}); not written\n{err}", flush=True)
            status = 1
            continue
        note = "" if seconds <= BUDGET_SECONDS else f" (over the {BUDGET_SECONDS} s budget)"
        print(f"{path.name}: {seconds:.0f} s{note}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
