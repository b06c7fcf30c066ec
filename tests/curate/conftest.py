"""Fixtures for the filter and dedup tests: real text (GSM8K from the benchmark mirror, or the
standard library's own documentation when the mirror is absent) and a Parquet writer."""

from __future__ import annotations

import json
import os
import pydoc

import pytest

from lmforge.benchmarks.gsm8k.reader import strip_calculator
from lmforge.io import write_parquet
from lmforge.paths import benchmarks_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gsm8k_texts(n: int) -> list[str]:
    root = benchmarks_dir()
    path = root / "gsm8k" / "train.jsonl" if root else None
    if path is None or not path.exists():
        return []
    texts = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            answer = strip_calculator(row["answer"]).replace("####", "The answer is")
            texts.append(f"{row['question']}\n{answer}")
            if len(texts) >= n:
                break
    return texts


def _stdlib_texts(n: int) -> list[str]:
    """Paragraphs of the standard library's docstrings: real English prose, always present."""
    import collections, email, json as json_mod, logging, pathlib, textwrap, unittest  # noqa: E401
    paragraphs = []
    for mod in (collections, email, json_mod, logging, pathlib, textwrap, unittest):
        for obj in [mod] + [getattr(mod, a) for a in dir(mod) if not a.startswith("_")]:
            doc = getattr(obj, "__doc__", None) or ""
            for para in doc.split("\n\n"):
                if len(para.split()) >= 40:
                    paragraphs.append(" ".join(para.split()))
    return list(dict.fromkeys(paragraphs))[:n]


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """200 distinct real English documents of 60+ words."""
    texts = [t for t in _gsm8k_texts(400) if len(t.split()) >= 60] or _stdlib_texts(400)
    assert len(texts) >= 40, "not enough real text for the curate tests"
    return texts[:200]


@pytest.fixture(scope="session")
def pydoc_pages() -> dict[str, str]:
    """Plain-text pydoc pages of a few modules: the demo corpus's kind of document."""
    import heapq, json as json_mod, textwrap  # noqa: E401
    return {m.__name__: pydoc.render_doc(m, renderer=pydoc.plaintext)
            for m in (heapq, json_mod, textwrap)}


@pytest.fixture
def write_docs(tmp_path):
    """write_docs(name, texts or rows) -> path of a documents Parquet with id, url, text."""
    def _write(name: str, docs) -> str:
        rows = [d if isinstance(d, dict) else {"id": f"{name}-{i}", "url": f"http://x/{name}/{i}",
                                               "text": d}
                for i, d in enumerate(docs)]
        path = tmp_path / f"{name}.parquet"
        write_parquet(path, rows)
        return str(path)
    return _write
