"""CPU threads of training and prediction: the model chooses its own count (issue #17).

PyTorch's global intra-op thread count is not a reliable signal of what the user wants: numba
(run by scanpy's ``sc.pp.normalize_total`` and others) resets the OpenMP thread count to the
number of cores, so after the usual preprocessing ``torch.get_num_threads()`` reads the number
of cores whatever ``OMP_NUM_THREADS`` says. For the small networks of the default preset, more
threads than one mostly wait for each other, and on a shared machine (one other busy process)
they make training several times slower. :class:`~scdoloris.DolorisModel` therefore sets the
thread count itself for the duration of ``train``, ``predict`` and ``get_latent`` and puts the
previous value back afterwards (also when the call raises).

The count, in order of precedence:

1. the method's ``num_threads`` argument;
2. ``scvi.settings.num_threads``, when the user set it (scvi-tools' convention);
3. on a GPU, nothing is changed;
4. on the CPU, :func:`default_num_threads` of the model's size, at most the cores this
   process may use (:func:`available_cores`, which honours ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

import torch

#: Threads of a small model (see :func:`default_num_threads`), by phase.
SMALL_MODEL_THREADS: dict[str, int] = {"train": 1, "predict": 1}
#: Largest ``n_genes * n_hidden`` counted as small: the default preset (width 512) up to 2000
#: genes.
SMALL_MODEL_SIZE = 2000 * 512
#: Cores a larger model leaves to the rest of the machine: one busy process beside a model that
#: used every core made training 7x slower (paper preset, 2000 genes, 2 cores; PERF.md).
SPARE_CORES = 1
#: The environment variable that caps the thread count.
THREAD_VARIABLE = "OMP_NUM_THREADS"

F = TypeVar("F", bound=Callable)


def available_cores() -> int:
    """The most threads the model may use on the CPU.

    ``OMP_NUM_THREADS`` when set to a positive integer: the user's cap, read from the
    environment because torch's global count may have been reset by numba (see the module's
    docstring). Otherwise the CPUs in this process's affinity mask (which
    ``taskset`` and most cluster schedulers restrict), or ``os.cpu_count()``.

    Returns
    -------
    A count of at least 1.
    """
    value = os.environ.get(THREAD_VARIABLE, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_num_threads(
    n_genes: int, n_hidden: int, phase: Literal["train", "predict"] = "train"
) -> int:
    """The default thread count of a model on the CPU: the rule, in one place.

    A model is *small* when ``n_genes * n_hidden <= SMALL_MODEL_SIZE`` (the default preset
    up to 2000 genes); a small model gets ``SMALL_MODEL_THREADS[phase]`` threads, a larger one
    all of :func:`available_cores` but ``SPARE_CORES`` (at least one).

    The constants were set from the numbers of ``make perf`` (the "Threads" section of
    ``benchmarks/PERF.md``, ``python benchmarks/perf.py --parts threads``: training and
    prediction cells/s at 1 and 2 threads for both presets at 500 and 2000 genes, idle and
    beside one busy process, on 2 cores). Idle, two threads trained 1.5-1.75x faster than one;
    beside one busy process two threads trained 7-32x SLOWER than idle, while one thread was
    not slowed at all (0.96-1.06x): threads that outnumber the free cores wait for each
    other. A model cannot know whether the machine will stay idle, so it takes the choice
    that never collapses.

    Parameters
    ----------
    n_genes
        Genes of the model.
    n_hidden
        Width of the denoiser's trunk (``n_hidden`` of the preset).
    phase
        ``"train"`` or ``"predict"`` (``predict`` and ``get_latent``).

    Returns
    -------
    The number of threads.
    """
    cores = available_cores()
    if n_genes * n_hidden <= SMALL_MODEL_SIZE:
        return min(SMALL_MODEL_THREADS[phase], cores)
    return max(1, cores - SPARE_CORES)


def resolve_num_threads(
    num_threads: int | None,
    n_genes: int,
    n_hidden: int,
    on_cpu: bool,
    phase: Literal["train", "predict"] = "train",
) -> int | None:
    """The thread count of one call (see the module's docstring for the precedence).

    Parameters
    ----------
    num_threads
        The method's argument (None: not given).
    n_genes, n_hidden
        The model's size, for :func:`default_num_threads`.
    on_cpu
        Whether the call computes on the CPU.
    phase
        ``"train"`` or ``"predict"``.

    Returns
    -------
    The count to set, or None to leave torch's setting alone (on a GPU, without a user choice).
    """
    if num_threads is None:
        import scvi

        num_threads = scvi.settings.num_threads
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}.")
        return num_threads
    if not on_cpu:
        return None
    return default_num_threads(n_genes, n_hidden, phase)


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block; restore the previous one afterwards.

    The previous count is restored also when the block raises, and when something inside the
    block changed it (Lightning's DDP launcher sets it, and ``OMP_NUM_THREADS`` when unset; the
    variable is restored too).

    Parameters
    ----------
    num_threads
        Threads inside the block; None leaves the count as it is (and still restores it).

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    previous = torch.get_num_threads()
    variable = os.environ.get(THREAD_VARIABLE)
    if num_threads is not None and num_threads != previous:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
        if os.environ.get(THREAD_VARIABLE) != variable:
            if variable is None:
                del os.environ[THREAD_VARIABLE]
            else:
                os.environ[THREAD_VARIABLE] = variable


def predict_threads(method: F) -> F:
    """Run a prediction method of :class:`~scdoloris.DolorisModel` under :func:`torch_threads`.

    The method has a ``num_threads`` parameter; the count is the model's
    ``_thread_count(num_threads, on_cpu, "predict")`` with ``on_cpu`` from the module's device.

    Parameters
    ----------
    method
        ``predict`` or ``get_latent``.

    Returns
    -------
    The wrapped method (same name, docstring and signature).
    """
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        requested = signature.bind(self, *args, **kwargs).arguments.get("num_threads")
        on_cpu = self.module.device.type == "cpu"
        with torch_threads(self._thread_count(requested, on_cpu, "predict")):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
