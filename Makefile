# Set-up and entry points. `make demo` runs the main job, `make test` the test suite; each creates
# .venv when missing, installs torch first (keeps an installed one, else torch==2.13.0 with its
# matching triton), then avfast with its test extras (no build isolation: it builds against this torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_PIN ?= torch==2.13.0 triton==3.7.1

.PHONY: install demo test test-all bench info cuda-check compile-check compile-check-full cuda-build-check dali-check gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q numpy ninja "setuptools>=64" wheel
	$(PIP) install -q --no-build-isolation -e ".[test]"

# Main job: generate the demo movies (dubbed tracks, manifest) and held-out movies of another seed,
# pretrain the demo config on the first, and print throughput, then retrieval R@k and probes (colour
# of the largest shape) on the held-out movies before and after training.
DEMO_DATA ?= demo_data
DEMO_RUN ?= runs/demo
demo: install
	$(PY) -m avfast.cli info
	$(PY) -m avfast.cli make-demo-data $(DEMO_DATA)
	$(PY) -m avfast.cli make-demo-data $(DEMO_DATA)/heldout --movies 16 --seed 1
	rm -rf $(DEMO_RUN)
	$(PY) -m avfast.cli pretrain --config configs/demo.yaml --data $(DEMO_DATA)/manifest.jsonl --out $(DEMO_RUN) \
		--set data.eval_manifest=$(DEMO_DATA)/heldout/manifest.jsonl --set data.probe_manifest=$(DEMO_DATA)/heldout/manifest.jsonl

test: install
	$(PY) -m pytest -q tests

test-all: install
	$(PY) -m pytest -q tests --runslow

bench: install
	$(PY) -m avfast.cli bench

info: install
	$(PY) -m avfast.cli info

# Compile every CUDA source with nvcc (CI does this on CPU machines so the .cu files cannot rot).
cuda-check:
	bash .ci/nvcc_check.sh

# Compile every Triton kernel for sm_80/86/89/90 through the stand-in driver (no GPU); CI grid,
# or every flag combination on every target with compile-check-full.
compile-check: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/compile_check.py --table

compile-check-full: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/compile_check.py --full --table

# The real CUDA build of avfast._C against PyPI's CUDA torch 2.14.1 in its own venv (CUDA_VENV).
cuda-build-check:
	bash .ci/cuda_build_check.sh

# The DALI reader's argument names against the pinned DALI's operator schema (own venv, no GPU).
dali-check:
	bash .ci/dali_check.sh

# On a machine with a CUDA GPU: build, pytest -m gpu, compute-sanitizer, quick gpu_report (JSON in GPU_OUT).
gpu-check: install
	bash benchmarks/gpu/gpu_check.sh

clean:
	rm -rf build *.egg-info avfast/_C*.so
