"""Fixtures for the scaling tests: one real BPE tokenizer and one set of token shards per session,
made the way the pipeline makes them (``lmforge.tokenize``), from real text the project did not
write: GSM8K's train problems (the sample in ``tests/data/benchmarks``) and the pydoc pages of
some standard-library modules, about 1 MB."""

from __future__ import annotations

import json
import os
import pydoc
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lmforge.paths import benchmarks_dir  # noqa: E402

PYDOC_MODULES = ["json", "textwrap", "bisect", "base64", "heapq", "string", "difflib", "shutil",
                 "argparse", "collections", "functools", "itertools", "pathlib", "random"]


def _rows() -> list[dict]:
    import importlib

    root = benchmarks_dir()
    assert root is not None, "the GSM8K sample is needed: set LMFORGE_BENCHMARKS_DIR"
    rows = []
    with open(root / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            rows.append({"id": f"gsm8k-train-{i}", "url": f"file://gsm8k/train.jsonl#{i}",
                         "text": d["question"] + "\n" + d["answer"]})
    for name in PYDOC_MODULES:
        text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        # One document per page section, so the val split (a hash of the id) takes some of each.
        for k, part in enumerate(text.split("\n\n\n")):
            if part.strip():
                rows.append({"id": f"pydoc-{name}-{k}", "url": f"pydoc:{name}#{k}", "text": part})
    return rows


@pytest.fixture(scope="session")
def sweep_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """``(tokenizer_dir, shards_dir)``: a 512-token BPE vocabulary and its train/val shards."""
    from lmforge.io import write_parquet
    from lmforge.scaling.sweep import prepare_data

    root = tmp_path_factory.mktemp("scaling_data")
    docs = root / "documents.parquet"
    write_parquet(docs, _rows())
    return prepare_data(docs, root / "data", 512)
