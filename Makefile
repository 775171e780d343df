# xray_loss: `make train` and `make test` work on a fresh clone (they set up .venv first).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 6006
ARGS ?=
PYTEST_ARGS ?=

# glibc's malloc keeps freed memory instead of unmapping large blocks every step: the small
# CNN's CPU training step is 1.2x faster at 128 px (bench/allocator.py, bench/README.md), no
# result changes, and the process keeps its peak heap. A GLIBC_TUNABLES of your own is kept.
MALLOC_TUNABLES := glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824
train test test-slow test-all test-slurm notebook study: export GLIBC_TUNABLES ?= $(MALLOC_TUNABLES)

.PHONY: install train test test-slow test-all test-slurm test-browser lint format pre-commit notebook tensorboard study clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && test -x $(VENV)/bin/pre-commit; then \
	    $(VENV)/bin/pre-commit install || echo "make install: 'pre-commit install' failed; git hooks not installed" >&2; \
	fi
	touch $(STAMP)

train: install  ## train on the default (phantom data, small CNN, BCE head); ARGS="loss=ce lr=1e-3"
	$(PY) -m xray_loss.train $(ARGS)

# Two tiers: `make test` is the edit-test loop (every test not marked slow: under 4 minutes on
# 2 cores); `make test-slow` the end-to-end ones (runs, sweeps, kills and resumes, the notebook);
# `make test-all` both. The tests run commands in the test process, and a real `python -m` where
# a separate process is the point (tests/conftest.py:run_cli). .ci/run runs `make test`,
# `make test-slow` and `make test-slurm`.
test: install  ## the fast tier: every test not marked slow
	$(PY) -m pytest --ignore=tests/cluster -m "not slow" $(PYTEST_ARGS)

test-slow: install  ## the slow tier: end-to-end runs, sweeps, resumes, the notebook
	$(PY) -m pytest --ignore=tests/cluster -m slow $(PYTEST_ARGS)

test-all: install  ## both tiers, without the SLURM cluster tests
	$(PY) -m pytest --ignore=tests/cluster $(PYTEST_ARGS)

# Starts a single-node SLURM cluster (munged, slurmctld, slurmd) in a temp dir for the session
# and stops it again (tests/cluster). Needs root and the Debian packages slurm-wlm and munge.
SLURM_TOOLS := sbatch srun squeue sinfo scontrol scancel slurmctld slurmd munged
test-slurm: install  ## tests on a real single-node SLURM cluster (root, slurm-wlm, munge)
	@export PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	for t in $(SLURM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	    echo "make test-slurm: not found on PATH:$$missing" >&2; \
	    echo "  install SLURM and munge first, as root: apt-get install -y slurm-wlm munge" >&2; \
	    exit 1; \
	fi; \
	if [ "$$(id -u)" != 0 ]; then \
	    echo "make test-slurm: the test cluster runs its daemons and jobs as root; run as root" >&2; \
	    exit 1; \
	fi
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

pre-commit: install  ## run the git hooks on every file (fixes whitespace and format in place)
	$(VENV)/bin/pre-commit run --all-files

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

notebook: install  ## execute notebooks/study.ipynb in place (outputs committed) and stamp its cells
	$(PY) notebooks/execute.py

# SWEEP=<multirun dir> serves one sweep: its runs are named by their swept values alone, and
# its HParams experiment is the only one. The URL it prints opens every tab filled: all runs
# selected (Scalars, Custom Scalars and Images select none past 40 by themselves), unsmoothed
# (one point per epoch), Time Series on the curves (xray_loss.runtime.rundirs.tensorboard_url).
# SWEEP reaches the shell through the environment, so any character (a quote) stays a path.
SWEEP ?= logs
tensorboard: export SWEEP := $(value SWEEP)
tensorboard: install  ## serve logs/ (or SWEEP=<dir>) on http://127.0.0.1:$(PORT)/
	@$(PY) -m xray_loss.runtime.rundirs URL "$$SWEEP" $(PORT)
	$(VENV)/bin/tensorboard --logdir "$$SWEEP" --host 127.0.0.1 --port $(PORT) --samples_per_plugin images=20

# The BCE vs CE study (studies/bce_vs_ce/README.md) on a Kermany-layout folder with test/: its
# runs (studies/bce_vs_ce/run.sh, resumable: the same command continues an interrupted study),
# then each completed run's small records copied beside the page, then the page rebuilt from
# those records alone (docs/results/2026-12-07-bce-vs-ce.md). ARGS go to every training run.
DATA ?=
study: install  ## make study DATA=path/to/chest_xray [ARGS="trainer=gpu"]
	@test -n "$(DATA)" || { echo "make study: name the data folder: make study DATA=path/to/chest_xray (DATA/train/NORMAL, DATA/train/PNEUMONIA, DATA/test/...)" >&2; exit 2; }
	PY=$(PY) studies/bce_vs_ce/run.sh "$(DATA)" logs/bce_vs_ce $(ARGS)
	$(PY) -m studies.bce_vs_ce.collect logs/bce_vs_ce
	$(PY) -m studies.bce_vs_ce.page

clean:  ## remove logs, caches and build debris (keeps .venv)
	rm -rf logs outputs multirun lightning_logs .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
