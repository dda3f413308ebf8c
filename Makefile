# refdiff: every target makes its own virtual environment and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# onnxruntime-gpu runs on CPU as well (it falls back and says so), so one runtime serves
# machines with and without a GPU.  torch/diffusers are for the cross-check tier only.
# Where an NVIDIA driver is present, also NVIDIA's CUDA 13 / cuDNN 9 libraries from PyPI, so
# that `make demo` runs on the GPU instead of falling back to the CPU.
GPU_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,deploy-gpu-cuda)
EXTRAS ?= test,deploy-gpu,plots,crosscheck$(GPU_EXTRA)
STAMP   = $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))
comma  := ,

.PHONY: install test demo bench mutants calibrate lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q torch
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/refdiff demo

bench: $(STAMP)
	$(VENV)/bin/refdiff bench

mutants: $(STAMP)
	$(PY) -m tests.mutants

calibrate: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_calibration.py

lint: $(STAMP)
	$(VENV)/bin/ruff check refdiff export tests benchmarks
	$(VENV)/bin/ruff format --check refdiff export tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
