# `make test` and `make demo` create (or reuse) .venv and install the package with its dev extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: venv test lint demo bench bench-tiny bench-peers peers-venvs perf perf-quick contention docs \
	tutorials clean cell-eval-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest src tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tutorials/run.py tutorials/tutorial_setup.py
	$(VENV)/bin/ruff format --check src tests benchmarks tutorials/run.py tutorials/tutorial_setup.py

demo: $(STAMP)
	$(PY) -m scdoloris demo -o demo_output

# the benchmark also runs scGen: pertpy (the bench extra)
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 $(PY) benchmarks/run.py --jobs 2 --threads 1

# Peers (CellFlow, CPA) beside Doloris, not in CI: each in a virtual environment of its own,
# installed from the fully pinned files in benchmarks/peers/ with --no-deps (pip never resolves);
# benchmarks/peers.py hands each fold to benchmarks/peers/<peer>_runner.py. See
# benchmarks/README.md ("Peers"). CellFlow: Python 3.11, JAX on the CPU, no torch. CPA:
# cpa-tools 0.8.8 needs Python < 3.11 (pyenv's 3.10), torch 2.0 (PyPI's CUDA build, ~4 GB).
PYTHON311 ?= python3.11
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python) python3.10)
CELLFLOW_VENV := .venv-cellflow
CPA_VENV := .venv-cpa
CELLFLOW_STAMP := $(CELLFLOW_VENV)/.installed
CPA_STAMP := $(CPA_VENV)/.installed
# the task kinds a peer can do at least in part (papalexi_unseen: unseen genes only, n/a for both)
PEER_TASKS ?= norman_pairs,norman_singles,papalexi_replicate,kang_cell_type,kang_donor
PEER_METHODS ?= doloris,uncalibrated,nochange,meanshift,additive,floor,cellflow,cpa

$(CELLFLOW_STAMP): benchmarks/peers/cellflow.txt
	test -x $(CELLFLOW_VENV)/bin/python || $(PYTHON311) -m venv $(CELLFLOW_VENV)
	$(CELLFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(CELLFLOW_VENV)/bin/python -m pip install -q --no-deps -r benchmarks/peers/cellflow.txt
	$(CELLFLOW_VENV)/bin/python -c "import cellflow, requests"
	touch $(CELLFLOW_STAMP)

$(CPA_STAMP): benchmarks/peers/cpa.lock.txt
	test -x $(CPA_VENV)/bin/python || $(PYTHON310) -m venv $(CPA_VENV)
	$(CPA_VENV)/bin/python -m pip install -q --upgrade pip
	$(CPA_VENV)/bin/python -m pip install -q --no-deps -r benchmarks/peers/cpa.lock.txt
	$(CPA_VENV)/bin/python -c "import cpa"
	touch $(CPA_STAMP)

peers-venvs: $(CELLFLOW_STAMP) $(CPA_STAMP)

bench-peers: $(BENCH_STAMP) peers-venvs
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 $(PY) benchmarks/run.py \
		--tasks $(PEER_TASKS) --methods $(PEER_METHODS) --jobs 2 --threads 1 \
		--out benchmarks/peers

# seconds-long smoke run of the benchmark (CI's configuration), written to a temporary directory
bench-tiny: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/run.py --tiny

# speed and memory (training and prediction cells/s, peak RSS, ratios) -> benchmarks/PERF.md
perf: $(STAMP)
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(PY) benchmarks/perf.py

# seconds-long smoke run of perf (the CI test's configuration), written to a temporary directory
perf-quick: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/perf.py --quick -o $$(mktemp -d)

# issue #17's scenario (Norman subset after scanpy preprocessing, default model, 4 epochs alone
# and beside one busy process; the measuring process has no thread variables): a few minutes
contention: $(STAMP)
	$(PY) benchmarks/contention.py

# HTML documentation in docs/_build/html; warnings are errors. Installs the docs extra once.
$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# Execute the tutorial notebooks in place, keeping their outputs (the docs show the stored
# outputs and never execute them): one thread, at most 10 minutes per cell; needs ../shared/data.
# Prints each notebook's wall time. One notebook: make tutorials NOTEBOOKS=tutorials/01_*.ipynb
NOTEBOOKS ?=
tutorials: $(DOCS_STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) tutorials/run.py --timeout 600 $(NOTEBOOKS)

# cell-eval (Arc Institute's Virtual Cell Challenge evaluator) in a venv of its own, never
# a dependency of the package: benchmarks/cell_eval_runner.py runs under it (see its docstring).
# Pins what decides the numbers (the DE engine pdex, its Mann-Whitney kernels, polars); no torch.
# About a minute and 1.2 GB; ends with the runner's self-check (about 15 s, one thread).
CELLEVAL_VENV ?= .venv-cell-eval
CELLEVAL_PY := $(CELLEVAL_VENV)/bin/python
CELLEVAL_VERSION := 0.8.2
CELLEVAL_PINS := cell-eval==$(CELLEVAL_VERSION) pdex==0.3.0 numba-mwu==0.2.0 polars==2.2.0
CELLEVAL_STAMP := $(CELLEVAL_VENV)/.installed-$(CELLEVAL_VERSION)

$(CELLEVAL_STAMP):
	test -x $(CELLEVAL_PY) || $(PYTHON) -m venv $(CELLEVAL_VENV)
	$(CELLEVAL_PY) -m pip install -q --upgrade pip
	$(CELLEVAL_PY) -m pip install -q -c constraints.txt $(CELLEVAL_PINS)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
		$(CELLEVAL_PY) benchmarks/cell_eval_runner.py --self-check --threads 1
	touch $(CELLEVAL_STAMP)

cell-eval-venv: $(CELLEVAL_STAMP)

clean:
	rm -rf $(VENV) $(CELLEVAL_VENV) $(CELLFLOW_VENV) $(CPA_VENV) .pytest_cache build dist
