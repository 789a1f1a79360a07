# SAGE-Health — two commands on a fresh machine: `make demo` and `make test`. Both work offline
# once the registries (PyPI) were reachable for the first install.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-pins.txt 2>/dev/null | sha256sum | cut -c1-12)
BENCH_STAMP := $(VENV)/.bench-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export SAGE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo test lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch==2.13.0 is pinned in the SAME pip command as everything that depends on it (CPU wheel on disk).
$(STAMP): $(BIN)/python pyproject.toml requirements-pins.txt
	$(BIN)/python -m pip install -q -c requirements-pins.txt torch==2.13.0 -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c requirements-pins.txt torch==2.13.0 -e '.[dev,bench]'
	touch $(BENCH_STAMP)

demo: install
	$(BIN)/sage-health demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf .sage .pytest_cache .mypy_cache .ruff_cache
