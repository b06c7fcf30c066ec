"""GSM8K (Cobbe et al. 2021): grade-school math word problems with worked answers.

Data: ``<mirror>/gsm8k/{train,test}.jsonl``, rows ``{"question", "answer"}`` as on the hub
(``openai/gsm8k``). An answer is worked reasoning with calculator annotations such as
``<<48/2=24>>``, then a last line ``#### 72``. The test split is what the suites evaluate (and
what decontamination protects); the train split gives few-shot examples, SFT/adapter
conversations and the quality classifier's reference text.

The two facts every user of GSM8K needs are defined here once: :data:`CALCULATOR` (an
annotation) and :data:`FINAL` (the marker of the final answer).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmforge.benchmarks import Benchmark, DataUnavailable, read_jsonl, require_fields

CALCULATOR = re.compile(r"<<[^<>]*>>")  # <<48/2=24>>: the calculator call and its result
FINAL = "####"  # the last line is "#### N"; lm-eval's strict-match reads the number after "#### "


def strip_calculator(text: str) -> str:
    return CALCULATOR.sub("", text)


def split_answer(answer: str) -> tuple[str, str] | None:
    """(reasoning, final answer) of a worked answer; None when it has no ``#### N``."""
    if FINAL not in answer:
        return None
    reasoning, final = answer.rsplit(FINAL, 1)
    final = final.strip()
    return (reasoning.strip(), final) if final else None


def chat(item: dict[str, Any]) -> tuple[str, str] | None:
    """User: the question. Assistant: the reasoning without annotations, then ``The answer is N.``
    (thousands separators dropped from N), the form the GSM8K evaluation extracts the answer
    from. None when the answer has no final line."""
    parts = split_answer(item["answer"])
    if parts is None:
        return None
    reasoning, final = strip_calculator(parts[0]).strip(), parts[1].replace(",", "")
    content = f"{reasoning}\nThe answer is {final}." if reasoning else f"The answer is {final}."
    return item["question"].strip(), content


def reference_text(question: str, answer: str) -> str:
    """A question and its worked answer as plain prose (no annotations, no ``####`` markup):
    the quality classifier's reference text."""
    answer = strip_calculator(answer)
    parts = split_answer(answer)
    if parts is not None:
        answer = f"{parts[0]}\nThe answer is {parts[1]}." if parts[0] else f"The answer is {parts[1]}."
    return f"{question.strip()}\n{answer.strip()}"


def contamination(item: dict[str, Any]) -> list[str]:
    """The question, and the worked answer with and without its annotations (copies on the web
    have either form)."""
    bare = strip_calculator(item["answer"])
    return [item["question"], item["answer"]] + ([bare] if bare != item["answer"] else [])


def read(split: str, root: Path) -> list[dict[str, Any]]:
    path = root / f"{split}.jsonl" if root.is_dir() else root
    if not path.is_file():
        raise DataUnavailable(f"GSM8K mirror has no {split} split: {path}")
    rows = read_jsonl(path)
    require_fields(path, rows, ("question", "answer"))
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


BENCHMARK = Benchmark(
    name="gsm8k",
    description="GSM8K grade-school math: 8-shot, exact match on the final number",
    splits=("test", "train"),
    read=read,
    contamination=contamination,
    contamination_split="test",
    chat=chat,
)


def load(benchmarks_dir=None, **_: Any):
    """lm-eval ``custom_dataset`` hook: DatasetDict(test, train) with question, answer."""
    return BENCHMARK.dataset(benchmarks_dir=benchmarks_dir)
