"""Shared fixtures for the tokenizer and token-shard tests: real text, a tokenizer trained on it."""

from __future__ import annotations

import json
import os
import pydoc

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmforge.io import write_parquet  # noqa: E402
from lmforge.paths import benchmarks_dir  # noqa: E402
from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer  # noqa: E402

# Stdlib modules whose pydoc pages join the GSM8K text: prose, signatures and code, as crawled.
PYDOC_MODULES = ["json", "textwrap", "bisect", "base64", "heapq", "string", "difflib", "shutil"]
N_GSM8K = 1500


def gsm8k_rows(n: int) -> list[dict]:
    bench = benchmarks_dir()
    assert bench is not None, "the GSM8K mirror is needed: set LMFORGE_BENCHMARKS_DIR"
    rows = []
    with open(bench / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for i, line in zip(range(n), f):
            d = json.loads(line)
            rows.append({"id": f"gsm8k-train-{i}", "url": f"file://gsm8k/train.jsonl#{i}",
                         "text": d["question"] + "\n" + d["answer"]})
    return rows


def pydoc_rows(modules: list[str]) -> list[dict]:
    import importlib

    rows = []
    for name in modules:
        module = importlib.import_module(name)
        rows.append({"id": f"pydoc-{name}", "url": f"http://127.0.0.1:8000/{name}.html",
                     "text": pydoc.render_doc(module, renderer=pydoc.plaintext)})
    return rows


@pytest.fixture(scope="session")
def docs_path(tmp_path_factory):
    """~1 MB of real text: GSM8K problems with solutions, and pydoc pages."""
    path = tmp_path_factory.mktemp("docs") / "documents.parquet"
    write_parquet(path, gsm8k_rows(N_GSM8K) + pydoc_rows(PYDOC_MODULES))
    return path


TOKENIZER_CFG = TokenizerConfig(vocab_size=768)


@pytest.fixture(scope="session")
def tokenizer_cfg() -> TokenizerConfig:
    return TOKENIZER_CFG


@pytest.fixture(scope="session")
def gsm8k_docs():
    """``gsm8k_docs(n)``: the first n GSM8K train problems as documents (id, url, text)."""
    return gsm8k_rows


@pytest.fixture(scope="session")
def trained(docs_path, tmp_path_factory):
    """(tokenizer_dir, TokenizerStats) of a tokenizer trained on ``docs_path``."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    stats = train_tokenizer(docs_path, out, TOKENIZER_CFG)
    return out, stats


@pytest.fixture(scope="session")
def hf_tokenizer(trained):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(trained[0]))
