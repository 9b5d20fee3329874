# Two entry points on a fresh machine with only python3 + pip:
#   make pretrain   trains the tiny preset on CPU on the embedded stdlib corpus
#   make test       runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is installed first so pip never resolves a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Where torch caches JIT-built extensions; launchers/pretrain.sh (megamythos/training/launch.py) uses the same.
TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

$(BIN)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(MAKE) prebuild-ops
	touch $@

# deepspeed.init_distributed() JIT-builds DeepSpeed's shared-memory comm op on CPU at first use (~30 s, ~1.6 GB
# peak): build it here, once, so that the first `make pretrain` starts at once. No-op where the accelerator
# has no such op (CUDA).
prebuild-ops:
	@echo "building DeepSpeed's CPU comm op into $(TORCH_EXTENSIONS_DIR) (once, ~30 s)..."
	TORCH_EXTENSIONS_DIR="$(TORCH_EXTENSIONS_DIR)" $(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
	builder = get_accelerator().create_op_builder('ShareMemCommBuilder'); builder and builder.load(verbose=False)"

install: $(BIN)/.installed

pretrain: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash launchers/pretrain.sh $(ARGS)

test: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

.PHONY: install prebuild-ops pretrain test
