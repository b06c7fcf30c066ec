"""Settings for the whole suite: offline, quiet, deterministic, and the same data everywhere."""

import os
from pathlib import Path

# Nothing in the tests may reach a model or data set hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

# The benchmark sample the tests ship (tests/data/README.md), whatever mirror this machine has:
# a fresh clone tests exactly what CI tests. The demo and the benchmarks read the full mirror.
os.environ["LMFORGE_BENCHMARKS_DIR"] = str(Path(__file__).parent / "data" / "benchmarks")
