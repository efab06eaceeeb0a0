"""The tutorial notebooks: stored with clean outputs, in the docs, and on the benchmark's splits.

The notebooks are executed by ``make tutorials`` (not by the tests: training takes minutes);
these tests check what is stored in git, and, when the shared data are there, that each
notebook's split cell reproduces the split of its benchmark protocol.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
DOCS = ROOT / "docs" / "tutorials"
PROTOCOL_OF = {
    "01_norman_gene_pairs": "norman",
    "02_papalexi_unseen_knockouts": "papalexi",
    "03_kang_heldout_cell_type": "kang",
}
MIN_FIGURES = 5
MAX_BYTES = 1_500_000
MAX_MINUTES = 6.0  # "under about 5 minutes on one CPU thread", with a margin for a busy machine


def _read(name: str) -> dict:
    return json.loads((TUTORIALS / f"{name}.ipynb").read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _text(output: dict) -> str:
    text = output.get("text", "")
    return text if isinstance(text, str) else "".join(text)


def test_the_three_tutorials_are_there():
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == sorted(PROTOCOL_OF)


@pytest.mark.parametrize("name", sorted(PROTOCOL_OF))
def test_notebook_is_valid(name):
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4))


@pytest.mark.parametrize("name", sorted(PROTOCOL_OF))
def test_outputs_are_stored_and_clean(name):
    """Executed top to bottom in one kernel, no errors or stderr, figures, a modest size."""
    nb = _read(name)
    cells = _code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{name}: code cells not executed in order in one run (execution counts {counts}); "
        "run `make tutorials`"
    )
    outputs = [o for c in cells for o in c["outputs"]]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{name}: stored error output {errors[0].get('ename')}"
    stderr = [_text(o) for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
    assert not stderr, f"{name}: stored stderr output (a warning?):\n{stderr[0][:500]}"
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= MIN_FIGURES, f"{name}: {len(figures)} figures stored"
    size = (TUTORIALS / f"{name}.ipynb").stat().st_size
    assert size < MAX_BYTES, f"{name}: {size:,} bytes; lower the figures' size or resolution"


@pytest.mark.parametrize("name", sorted(PROTOCOL_OF))
def test_one_thread_and_run_time(name):
    cells = _code_cells(_read(name))
    first = _source(cells[0])
    assert first.startswith("from tutorial_setup import") and "T0 = setup()" in first
    printed = "".join(_text(o) for o in cells[-1]["outputs"] if o["output_type"] == "stream")
    match = re.search(r"ran in ([\d.]+) min", printed)
    assert match, f"{name}: the last cell should print the run time, got {printed!r}"
    assert float(match.group(1)) <= MAX_MINUTES, f"{name} ran in {match.group(1)} min"


SETUP_CODE = ("class StopExecution", "warnings.filterwarnings", "set_num_threads", "os.environ")


@pytest.mark.parametrize("name", sorted(PROTOCOL_OF))
def test_the_first_screen_is_the_science(name):
    """The set-up lives in tutorials/tutorial_setup.py, not at the top of the notebook."""
    cells = _code_cells(_read(name))
    for cell in cells:
        source = _source(cell)
        assert not [s for s in SETUP_CODE if s in source], f"{name}: set-up code in a cell"
    assert len(_source(cells[0]).splitlines()) <= 20
    assert "find_data(" in _source(cells[1])


def _run(code: str) -> subprocess.CompletedProcess:
    """Run Python code in tutorials/ (where Jupyter starts the notebooks), thread limits unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=TUTORIALS, env=env, capture_output=True, text=True
    )


def test_setup_limits_the_threads_before_torch_starts():
    proc = _run(
        "from tutorial_setup import setup\n"
        "setup()\n"
        "import os, torch\n"
        "print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], "
        "torch.get_num_threads())"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("scdoloris ") and "scvi-tools" in lines[0]  # the versions
    assert lines[-1] == "1 1 1"


def test_find_data_without_the_file_says_how_to_get_it_and_stops():
    proc = _run(
        "from tutorial_setup import StopExecution, find_data\n"
        "try:\n"
        "    find_data('missing.h5ad', 'Download it from somewhere.')\n"
        "except StopExecution as stop:\n"
        "    print('stopped', stop._render_traceback_())\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "missing.h5ad was not found in ../../shared/data or ../shared/data." in proc.stdout
    assert "Download it from somewhere." in proc.stdout and "stopped []" in proc.stdout


@pytest.mark.parametrize("name", sorted(PROTOCOL_OF))
def test_in_the_documentation(name):
    """docs/tutorials links the notebook (a symlink into tutorials/) from its toctree."""
    link = DOCS / f"{name}.ipynb"
    assert link.is_symlink(), f"{link} should be a symlink to ../../tutorials/{name}.ipynb"
    assert link.resolve() == (TUTORIALS / f"{name}.ipynb").resolve()
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    toctree = index[index.index("{toctree}") :]
    assert name in toctree


def _protocols():
    """Import benchmarks/protocols.py (benchmarks/ is a folder of scripts, not a package: on
    ``sys.path`` for the modules it imports, as for a script run from there)."""
    if "protocols" in sys.modules:
        return sys.modules["protocols"]
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("protocols", ROOT / "benchmarks" / "protocols.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["protocols"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(PROTOCOL_OF))
def test_split_is_the_benchmarks(name, real_data):
    """The notebook's cell tagged "split" gives the cells of its benchmark protocol."""
    protocols = _protocols()
    protocol = PROTOCOL_OF[name]
    file = {
        "norman": protocols.NORMAN_FILE,
        "papalexi": protocols.PAPALEXI_FILE,
        "kang": protocols.KANG_FILE,
    }[protocol]
    data_dir = real_data(file).parent
    split_cells = [c for c in _code_cells(_read(name)) if "split" in c["metadata"].get("tags", [])]
    assert len(split_cells) == 1, f"{name}: expected one code cell tagged 'split'"
    import pandas as pd

    namespace = {"adata": protocols.read_log_normalised(file, data_dir), "np": np, "pd": pd}
    exec(compile(_source(split_cells[0]), f"{name}:split", "exec"), namespace)
    expected = protocols.PROTOCOLS[protocol](data_dir)
    for part in ("train", "controls", "real"):
        got = list(namespace[part].obs_names)
        assert got == list(getattr(expected, part).obs_names), f"{name}: {part} differs"
