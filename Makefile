# refdiff: each target makes the virtual environment it needs and installs one tier into it,
# with exact versions from constraints.txt.
#   make demo  -> .venv-demo: numpy, scipy, onnx, onnxruntime, matplotlib, tqdm (no torch)
#   make test  -> .venv: the demo tier + pytest/hypothesis/ruff + the cross-check peers
#                 (torch, diffusers, k-diffusion) + Ray Serve (the serve extra)
# Where an NVIDIA driver is present (nvidia-smi), the runtime is onnxruntime-gpu with NVIDIA's
# CUDA 13 / cuDNN 9 libraries from PyPI (extra deploy-gpu-cuda), so that the demo runs on the
# GPU; elsewhere the test tier keeps onnxruntime-gpu (it runs on CPU too, and the provider tests
# exercise its fallback) and the demo takes the small CPU onnxruntime.
PYTHON ?= python3
VENV   ?= .venv
DEMO_VENV ?= .venv-demo
PY      = $(VENV)/bin/python
DEMO_PY = $(DEMO_VENV)/bin/python
CONSTRAINTS = constraints.txt
comma  := ,
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_GPU),yes)
DEMO_EXTRAS ?= deploy-gpu,deploy-gpu-cuda,plots
TEST_EXTRAS ?= test,deploy-gpu,deploy-gpu-cuda,plots,crosscheck,serve
else
DEMO_EXTRAS ?= demo
TEST_EXTRAS ?= test,deploy-gpu,plots,crosscheck,serve
endif
KDIFFUSION = k-diffusion==0.1.1.post1
# Triton's model-config schema (model_config_pb2.py, protobuf only) for the Triton repository
# test; --no-deps: its client libraries pin ml-dtypes below what onnx takes.
TRITONCLIENT = tritonclient==2.73.0
# pip's own progress (what it downloads and how big); no -q
PIP_FLAGS ?= --progress-bar on -c $(CONSTRAINTS)
TEST_STAMP = $(VENV)/.installed-$(subst $(comma),_,$(TEST_EXTRAS))
DEMO_STAMP = $(DEMO_VENV)/.installed-$(subst $(comma),_,$(DEMO_EXTRAS))

.PHONY: install install-demo test demo bench mutants calibrate lint conformance clean

$(TEST_STAMP): pyproject.toml $(CONSTRAINTS)
	@echo "== test tier -> $(VENV): refdiff[$(TEST_EXTRAS)] + $(KDIFFUSION) $(TRITONCLIENT) (no deps)"
	@echo "   README 'Install tiers' has the measured download size and time"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) pip
	$(PY) -m pip install $(PIP_FLAGS) "torch==2.13.0"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[$(TEST_EXTRAS)]"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "$(KDIFFUSION)" "$(TRITONCLIENT)"
	touch $@

$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS)
	@echo "== demo tier -> $(DEMO_VENV): refdiff[$(DEMO_EXTRAS)] (no torch, no test tools)"
	@echo "   README 'Install tiers' has the measured download size and time"
	test -x $(DEMO_PY) || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_PY) -m pip install $(PIP_FLAGS) pip
	$(DEMO_PY) -m pip install $(PIP_FLAGS) -e ".[$(DEMO_EXTRAS)]"
	touch $@

install: $(TEST_STAMP)

install-demo: $(DEMO_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/refdiff demo

# docs/conformance/diffusers.md and kdiffusion.md: regenerated here only (deterministic on one machine); the
# test suite checks that the committed report still states the current findings.
conformance: $(TEST_STAMP)
	$(PY) tests/conformance/test_crosscheck_diffusers.py
	$(PY) tests/conformance/test_crosscheck_kdiffusion.py

bench: $(TEST_STAMP)
	$(VENV)/bin/refdiff bench

mutants: $(TEST_STAMP)
	$(PY) -m tests.mutants

calibrate: $(TEST_STAMP)
	$(PY) -m pytest -q -m slow tests/ground_truth/test_calibration.py

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check refdiff export tests benchmarks
	$(VENV)/bin/ruff format --check refdiff export tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_VENV) build *.egg-info
