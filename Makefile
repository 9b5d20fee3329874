# Two entry points on a fresh machine with only python3 + pip:
#   make pretrain   trains the tiny preset on CPU on the embedded stdlib corpus
#   make test       runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is installed first so pip never resolves a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

$(BIN)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

pretrain: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash launchers/pretrain.sh $(ARGS)

test: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

.PHONY: install pretrain test
