"""The model sets torch's CPU threads for its own calls and restores them (issue #17)."""

from __future__ import annotations

import os
import threading

import lightning.pytorch as pl
import pandas as pd
import pytest
import scvi
import torch

from scdoloris import _threads
from scdoloris._threads import (
    SMALL_MODEL_SIZE,
    SMALL_MODEL_THREADS,
    SPARE_CORES,
    available_cores,
    default_num_threads,
    resolve_num_threads,
    torch_threads,
)
from scdoloris.model._doloris import _trains_on_cpu

# what numba (scanpy's preprocessing) leaves behind: a global count the model must not trust
GLOBAL = 3


@pytest.fixture
def global_threads(monkeypatch):
    """A function setting torch's global count to GLOBAL (call it AFTER the preprocessing:
    scanpy's numba code resets the count); no scvi-tools choice; both restored after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(scvi.settings, "_num_threads", None)
    torch.set_num_threads(GLOBAL)
    yield lambda: torch.set_num_threads(GLOBAL)
    torch.set_num_threads(before)


class Recorder(pl.Callback):
    """Torch's thread count, the loader's workers and the live Python threads in training."""

    def __init__(self, fail: bool = False):
        self.threads: list[int] = []
        self.workers: list[int] = []
        self.python_threads: list[int] = []
        self.fail = fail

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.threads.append(torch.get_num_threads())
        self.workers.append(trainer.train_dataloader.num_workers)
        self.python_threads.append(threading.active_count())
        if self.fail:
            raise RuntimeError("boom")


def _train(model, recorder, **kwargs):
    return model.train(
        max_epochs=1,
        max_steps=2,
        batch_size=32,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[recorder],
        **kwargs,
    )


# ------------------------------------------------------------------ the context manager
def test_torch_threads_sets_and_restores(global_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == GLOBAL
    with torch_threads(None):
        assert torch.get_num_threads() == GLOBAL
    assert torch.get_num_threads() == GLOBAL


def test_torch_threads_restores_after_an_exception(global_threads):
    with pytest.raises(KeyError), torch_threads(2):
        assert torch.get_num_threads() == 2
        raise KeyError("x")
    assert torch.get_num_threads() == GLOBAL


def test_torch_threads_undoes_changes_made_inside(global_threads, monkeypatch):
    # as Lightning's DDP launcher does: set the count and OMP_NUM_THREADS when it is unset
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with torch_threads(None):
        torch.set_num_threads(2)
        os.environ["OMP_NUM_THREADS"] = "2"
    assert torch.get_num_threads() == GLOBAL
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    with torch_threads(1):
        os.environ["OMP_NUM_THREADS"] = "1"
    assert os.environ["OMP_NUM_THREADS"] == "5"


# ------------------------------------------------------------------ the rule
def test_available_cores_honours_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert available_cores() == 7
    for unset in ("", "0", "two"):  # not a positive count: the process's CPUs
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert available_cores() == len(os.sched_getaffinity(0))


def test_default_rule_small_and_large_models(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    width = 512
    small_genes = SMALL_MODEL_SIZE // width
    for phase in ("train", "predict"):
        assert default_num_threads(500, width, phase) == SMALL_MODEL_THREADS[phase]
        assert default_num_threads(small_genes, width, phase) == SMALL_MODEL_THREADS[phase]
        assert default_num_threads(small_genes + 1, width, phase) == 8 - SPARE_CORES
        assert default_num_threads(5000, 1024, phase) == 8 - SPARE_CORES
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cap bounds every answer
    assert default_num_threads(5000, 1024) == 1
    assert default_num_threads(500, width) == min(SMALL_MODEL_THREADS["train"], 1)


def test_resolve_precedence(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setattr(scvi.settings, "_num_threads", None)
    assert resolve_num_threads(None, 5000, 1024, on_cpu=True) == 8 - SPARE_CORES
    assert resolve_num_threads(None, 500, 512, on_cpu=True) == SMALL_MODEL_THREADS["train"]
    assert resolve_num_threads(None, 500, 512, on_cpu=False) is None  # GPU: leave it alone
    assert resolve_num_threads(3, 500, 512, on_cpu=True) == 3  # the argument first
    assert resolve_num_threads(3, 500, 512, on_cpu=False) == 3
    monkeypatch.setattr(scvi.settings, "_num_threads", 5)  # then scvi-tools' setting
    assert scvi.settings.num_threads == 5
    assert resolve_num_threads(None, 500, 512, on_cpu=True) == 5
    assert resolve_num_threads(None, 500, 512, on_cpu=False) == 5
    assert resolve_num_threads(2, 500, 512, on_cpu=True) == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_threads"):
            resolve_num_threads(bad, 500, 512, on_cpu=True)


def test_trains_on_cpu():
    from lightning.pytorch.accelerators import CPUAccelerator

    assert _trains_on_cpu("cpu") and _trains_on_cpu("CPU") and _trains_on_cpu(CPUAccelerator())
    assert not _trains_on_cpu("gpu") and not _trains_on_cpu("cuda") and not _trains_on_cpu("mps")
    assert _trains_on_cpu("auto") == (not torch.cuda.is_available())


def test_num_threads_is_documented_in_full_wherever_it_is_an_argument():
    """The shared description (``scdoloris._docs``) is filled in at import, so ``help()`` and
    Sphinx show it whole in every public method that takes ``num_threads``."""
    import inspect

    from scdoloris import DolorisModel
    from scdoloris._docs import PARAMS

    methods = [
        name
        for name, member in inspect.getmembers(DolorisModel, inspect.isfunction)
        if not name.startswith("_") and "num_threads" in inspect.signature(member).parameters
    ]
    assert {"train", "predict", "get_latent_representation", "get_latent"} <= set(methods)
    text = " ".join(PARAMS["num_threads"].split())
    for name in methods:
        doc = getattr(DolorisModel, name).__doc__
        assert "{num_threads}" not in doc, name
        assert text in " ".join(doc.split()), name


def test_a_placeholder_must_name_a_shared_parameter():
    from scdoloris._docs import fill_docstring

    with pytest.raises(KeyError, match="no_such_parameter"):
        fill_docstring("Parameters\n----------\nx\n    {no_such_parameter}\n")


def test_rule_is_documented_as_set_by_measurement():
    doc = _threads.default_num_threads.__doc__
    assert "make perf" in doc and "SMALL_MODEL_SIZE" in doc


# ------------------------------------------------------------------ training
def test_train_uses_the_models_count_not_the_global_one(tiny_simulated_model, global_threads):
    _, model = tiny_simulated_model(n_cells=200, n_genes=60)
    global_threads()
    expected = default_num_threads(60, 16, "train")
    assert expected != GLOBAL  # otherwise the test could not tell the two apart
    python_threads = threading.active_count()
    recorder = Recorder()
    _train(model, recorder)
    assert recorder.threads and set(recorder.threads) == {expected}
    assert set(recorder.workers) == {0}  # no DataLoader worker processes
    assert max(recorder.python_threads) <= python_threads  # nor Python threads
    assert torch.get_num_threads() == GLOBAL


def test_train_respects_an_explicit_choice(tiny_simulated_model, global_threads, monkeypatch):
    _, model = tiny_simulated_model(n_cells=200, n_genes=60)
    global_threads()
    recorder = Recorder()
    _train(model, recorder, num_threads=2)
    assert set(recorder.threads) == {2}
    assert torch.get_num_threads() == GLOBAL
    monkeypatch.setattr(scvi.settings, "_num_threads", 2)
    recorder = Recorder()
    _train(model, recorder)
    assert set(recorder.threads) == {2}
    assert torch.get_num_threads() == GLOBAL


def test_train_restores_threads_after_an_exception(tiny_simulated_model, global_threads):
    _, model = tiny_simulated_model(n_cells=200, n_genes=60)
    global_threads()
    recorder = Recorder(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        _train(model, recorder)
    assert recorder.threads == [default_num_threads(60, 16, "train")]
    assert torch.get_num_threads() == GLOBAL
    assert not model.module.training


# ------------------------------------------------------------------ prediction
def _encode_recorder(model, monkeypatch, fail: bool = False) -> list[int]:
    seen: list[int] = []
    encode = model.module.encode

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("boom")
        return encode(*args, **kwargs)

    monkeypatch.setattr(model.module, "encode", recording)
    return seen


def test_predict_and_get_latent_set_and_restore_threads(
    tiny_simulated_model, global_threads, monkeypatch
):
    adata, model = tiny_simulated_model(n_cells=200, n_genes=60)
    global_threads()
    model.is_trained_ = True
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:16].copy()
    pert = next(p for p in adata.obs["perturbation"].unique() if p != "ctrl")
    expected = default_num_threads(60, 16, "predict")
    assert expected != GLOBAL
    seen = _encode_recorder(model, monkeypatch)
    kw = {"n_steps": 2, "progress_bar": False}
    model.predict(ctrl, pert, **kw)
    assert seen and set(seen) == {expected}
    assert torch.get_num_threads() == GLOBAL
    seen.clear()
    model.predict(ctrl, pert, num_threads=2, **kw)
    model.predict(ctrl, pd.DataFrame({"perturbation": [pert, "ctrl"]}), num_threads=2, **kw)
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == GLOBAL
    seen.clear()
    model.get_latent(ctrl, n_steps=2)
    model.get_latent(ctrl, None, 2, 1024, "setup", 0, 2)  # num_threads given by position
    assert seen == [expected, 2]
    assert torch.get_num_threads() == GLOBAL


def test_predict_restores_threads_after_an_exception(
    tiny_simulated_model, global_threads, monkeypatch
):
    adata, model = tiny_simulated_model(n_cells=200, n_genes=60)
    global_threads()
    model.is_trained_ = True
    ctrl = adata[adata.obs["perturbation"] == "ctrl"][:16].copy()
    pert = next(p for p in adata.obs["perturbation"].unique() if p != "ctrl")
    seen = _encode_recorder(model, monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        model.predict(ctrl, pert, n_steps=2, progress_bar=False, num_threads=2)
    with pytest.raises(RuntimeError, match="boom"):
        model.get_latent(ctrl, n_steps=2)
    assert seen == [2, default_num_threads(60, 16, "predict")]
    assert torch.get_num_threads() == GLOBAL
