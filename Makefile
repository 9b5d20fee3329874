# Two entry points on a fresh machine with only python3 + pip:
#   make pretrain   trains the tiny preset on CPU on the embedded stdlib corpus
#   make test       runs the test suite (make test-fast: the unit-level part, without trainer launches)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is installed first so pip never resolves a multi-GB CUDA build: on Linux, PyPI's
# torch==2.13.0 is the CUDA build (~3 GB with its nvidia-* wheels), so PyTorch's CPU index is added, whose
# 2.13.0+cpu pip ranks above it. The index is added only when it answers within 5 s (an offline mirror that holds
# the +cpu wheel resolves it alone); `make install TORCH_INDEX=` leaves pip's configured indexes alone (a GPU box).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Where torch caches JIT-built extensions; launchers/pretrain.sh (megamythos/training/launch.py) uses the same.
TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

# Every step says what it does before it starts; pip shows the packages it collects and installs, and
# launchers/heartbeat.py adds a line whenever a step has been silent for 10 s.
HEARTBEAT = $(PY) launchers/heartbeat.py --only '^(Collecting|Installing|Successfully|ERROR|error)'
PIP_FLAGS = --progress-bar off --disable-pip-version-check
$(BIN)/.installed: setup.py
	@command -v c++ >/dev/null || { echo "error: no C++ compiler (c++) on PATH: DeepSpeed builds its CPU comm op \
	with it; install one (Debian/Ubuntu: apt-get install g++) and run make again" >&2; exit 2; }
	@echo "[1/4] creating $(VENV)"
	$(PY) -m venv $(VENV)
	@echo "[2/4] installing $(TORCH_SPEC) (CPU wheel)"
	$(HEARTBEAT) --what "upgrading pip" -- $(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	@index=""; if [ -n "$(TORCH_INDEX)" ]; then \
	  if $(PY) -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
	    "$(TORCH_INDEX)/torch/" 2>/dev/null; then index="--extra-index-url $(TORCH_INDEX)"; \
	  else echo "note: $(TORCH_INDEX) did not answer within 5 s; torch comes from pip's configured indexes"; fi; \
	fi; set -x; $(HEARTBEAT) --what "installing torch" -- $(BIN)/python -m pip install $(PIP_FLAGS) $$index \
	  "$(TORCH_SPEC)"
	@$(BIN)/python -W ignore -c "import torch; print('installed torch', torch.__version__, \
	  '(CUDA ' + torch.version.cuda + ' build)' if torch.version.cuda else '(CPU build)')"
	@echo "[3/4] installing megamythos with its dev extras (most of the install: a minute or two)"
	$(HEARTBEAT) --what "installing the dependencies" -- $(BIN)/python -m pip install $(PIP_FLAGS) -e ".[dev]"
	@echo "[4/4] prebuilding DeepSpeed's CPU comm op"
	$(MAKE) --no-print-directory prebuild-ops
	touch $@

# deepspeed.init_distributed() JIT-builds DeepSpeed's shared-memory comm op on CPU at first use (~30 s, ~1.6 GB
# peak): build it here, once, so that the first `make pretrain` starts at once. The build runs with the venv
# first on PATH, as `make pretrain` and `make test` do: the same ninja (the venv's, a DeepSpeed dependency) and
# compiler, so the first launch finds the op built and builds nothing. No-op where the accelerator has no such
# op (CUDA). A build lock a killed build left (older than an hour) is refused first, as the trainer refuses it
# (megamythos/runtime/build_locks.py): the build would wait for it forever.
prebuild-ops:
	@TORCH_EXTENSIONS_DIR="$(TORCH_EXTENSIONS_DIR)" $(BIN)/python -m megamythos.runtime.build_locks
	@echo "building DeepSpeed's CPU comm op into $(TORCH_EXTENSIONS_DIR) (once, ~30 s)..."
	PATH="$(abspath $(BIN)):$$PATH" TORCH_EXTENSIONS_DIR="$(TORCH_EXTENSIONS_DIR)" $(PY) launchers/heartbeat.py \
	--what "compiling the op" -- $(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
	builder = get_accelerator().create_op_builder('ShareMemCommBuilder'); builder and builder.load(verbose=False)"

install: $(BIN)/.installed

pretrain: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" bash launchers/pretrain.sh $(ARGS)

# Two pytest-xdist workers, each taking whole test files (module fixtures start their launches once): a launch
# chain (runner, launch.py, ranks) leaves a core idle much of the time, so two files side by side take 0.6x the
# time of one after the other on 2 cores (a third worker gained nothing). Output: a dot per test as it passes,
# with the share done; TEST_WORKERS=0 runs the tests in this process, in file order.
TEST_WORKERS ?= 2
PYTEST_WORKERS = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)
test: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_WORKERS) --durations=10 \
	$(PYTEST_ARGS)

# The unit-level set (< 3 min on 2 CPU cores): every test but those marked `launch` (real trainer launches).
test-fast: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not launch" \
	$(PYTEST_ARGS)

.PHONY: install prebuild-ops pretrain test test-fast
