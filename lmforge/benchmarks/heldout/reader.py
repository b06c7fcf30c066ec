"""Held-out bits per byte: documents the model was not trained on, scored like lm-eval's
``wikitext`` (rolling log-likelihood over the model's context, per UTF-8 byte).

Not a fixed benchmark set: the documents are the pipeline's ``val.parquet`` (id, url, text), cut
from the same crawl as the training data, or a JSONL with a ``text`` field, given as ``path``
(``EvalConfig.heldout_path`` / ``--heldout``). So there is no mirror folder, and nothing to
decontaminate against (the split is held out by construction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.benchmarks import Benchmark, BenchmarkDataError, DataUnavailable, read_jsonl


def locate(_mirror: Path | None) -> Path:
    raise DataUnavailable("no held-out documents given (EvalConfig.heldout_path / --heldout)")


def read(split: str, path: Path) -> list[dict[str, Any]]:
    if path.suffix in (".jsonl", ".json") or path.name.endswith(".jsonl.gz"):
        rows = read_jsonl(path)
    else:
        from lmforge.io import read_parquet_rows

        rows = list(read_parquet_rows(path))
    if rows and "text" not in rows[0]:
        raise BenchmarkDataError(f"{path}: held-out documents need a 'text' column, got "
                                 f"{sorted(rows[0])}")
    docs = [{"id": str(r.get("id", i)), "text": r["text"]} for i, r in enumerate(rows)
            if isinstance(r.get("text"), str) and r["text"].strip()]
    if not docs:
        raise DataUnavailable(f"held-out documents at {path} contain no non-empty text")
    return docs


BENCHMARK = Benchmark(
    name="heldout",
    description="bits per byte on held-out documents of the pipeline's own crawl",
    splits=("test",),
    read=read,
    locate=locate,
    decontaminate=False,
)


def load(heldout_path=None, **_: Any):
    """lm-eval ``custom_dataset`` hook: DatasetDict(test) of id, text."""
    if heldout_path and not Path(heldout_path).exists():
        raise DataUnavailable(f"held-out documents not found: {heldout_path}")
    return BENCHMARK.dataset(path=heldout_path)
