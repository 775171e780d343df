# xray_loss: `make train` and `make test` work on a fresh clone (they set up .venv first).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 6006
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test lint format tensorboard clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

train: install  ## train on the default (phantom data, small CNN, BCE head); ARGS="loss=ce lr=1e-3"
	$(PY) -m xray_loss.train $(ARGS)

test: install  ## the whole test suite (slow tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

tensorboard: install  ## serve logs/ on http://127.0.0.1:$(PORT)/
	@echo "TensorBoard on http://127.0.0.1:$(PORT)/ (Ctrl-C to stop)"
	$(VENV)/bin/tensorboard --logdir logs --host 127.0.0.1 --port $(PORT)

clean:  ## remove logs, caches and build debris (keeps .venv)
	rm -rf logs outputs multirun lightning_logs .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
