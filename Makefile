# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing. torch is installed as pinned below from pip's
# default index (on Linux: the CUDA build) unless the venv already has a torch.
# CPU-only build: make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for the torch install (the CPU wheel index above).
TORCH_PIP_ARGS ?=
# `make VENV_ARGS=--system-site-packages` reuses a torch installed system-wide.
VENV_ARGS ?=

.PHONY: setup demo test test-slow lint bench-smoke clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m locallearn demo --out runs/demo --overwrite

test: setup
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# Every registered rule on a tiny offline set (about a minute on 2 cores).
bench-smoke: setup
	$(PY) -m locallearn bench --suite smoke --out runs/bench-smoke

lint: setup
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
