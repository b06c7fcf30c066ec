"""The quality classifier's data: text as fastText sees it (one lowercased line per example), the
readers of reference text (positives), a bounded-memory sample, and the held-out metrics.
"""

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:  # numpy loads where the work happens
    import numpy as np


from lmforge.benchmarks.gsm8k.reader import reference_text
from lmforge.curate.text import InputError, MissingInputError, check_input_file, input_schema
from lmforge.io import iter_jsonl, read_parquet_rows

# ---------------------------------------------------------------------------------------------
# Text as fastText sees it

_PUNCT = re.compile(r"([^\w\s])")


def fasttext_line(text: str, max_chars: int = 20_000) -> str:
    """One lowercased line: NFKC, punctuation split off as its own tokens (so `foo.bar(x)` and
    `#### |` are visible to the model as symbols), whitespace collapsed. fastText reads one line
    per example and splits on whitespace only."""
    text = unicodedata.normalize("NFKC", (text or "")[:max_chars]).lower()
    return " ".join(_PUNCT.sub(r" \1 ", text).split())


# A GSM8K-style question and worked answer as plain prose: the benchmark's own rule.
qa_text = reference_text


# ---------------------------------------------------------------------------------------------
# Reading positives and negatives


def _jsonl_texts(path: Path) -> Iterator[str]:
    for lineno, row in iter_jsonl(path):
        if isinstance(row.get("text"), str):
            yield row["text"]
        elif "question" in row and "answer" in row:
            yield qa_text(str(row["question"]), str(row["answer"]))
        else:
            raise InputError(f"{path}:{lineno}: expected a `text` field or `question` and "
                             f"`answer` fields")


def _txt_texts(path: Path, min_words: int) -> Iterator[str]:
    """Paragraphs (blank-line separated), merged until each has at least ``min_words`` words."""
    chunk: list[str] = []
    words = 0
    for para in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        if para.strip():
            chunk.append(para.strip())
            words += len(para.split())
        if words >= max(min_words, 1):
            yield "\n\n".join(chunk)
            chunk, words = [], 0
    if chunk:
        yield "\n\n".join(chunk)


def read_texts(path: str | Path, min_words: int = 0) -> Iterator[str]:
    """The documents of one positives source, by its kind (Parquet, JSONL or plain text)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingInputError(f"positives source not found: {p}")
    if p.is_dir() or p.suffix == ".parquet":
        input_schema(p, required=("text",))
        for row in read_parquet_rows(p, columns=["text"]):
            yield row["text"] or ""
    elif p.suffix == ".jsonl":
        yield from _jsonl_texts(check_input_file(p, "positives file"))
    elif p.suffix == ".txt":
        yield from _txt_texts(check_input_file(p, "positives file"), min_words)
    else:
        raise InputError(f"unsupported positives file {p}: use .parquet (column `text`), .jsonl "
                         f"(`text` or `question`/`answer`) or .txt")


def _sample(lines: Iterable[str], k: int, rng: random.Random) -> tuple[list[str], int]:
    """Reservoir sample (Algorithm R) of k lines, in bounded memory; returns (sample, seen)."""
    sample: list[str] = []
    seen = 0
    for line in lines:
        seen += 1
        if len(sample) < k:
            sample.append(line)
        else:
            j = rng.randrange(seen)
            if j < k:
                sample[j] = line
    return sample, seen


# ---------------------------------------------------------------------------------------------
# Metrics


def binary_metrics(p_hq: np.ndarray, is_hq: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision/recall/F1 of the hq class at ``threshold``, accuracy, and ROC AUC."""
    import numpy as np

    pred = p_hq >= threshold
    tp = int(np.sum(pred & is_hq))
    fp = int(np.sum(pred & ~is_hq))
    fn = int(np.sum(~pred & is_hq))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # AUC = P(score of a random positive > score of a random negative), ties count half.
    pos, neg = p_hq[is_hq], p_hq[~is_hq]
    if len(pos) and len(neg):
        greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        auc = float(greater / (len(pos) * len(neg)))
    else:
        auc = float("nan")
    return {"accuracy": round(float(np.mean(pred == is_hq)), 4), "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4), "auc": round(auc, 4)}
