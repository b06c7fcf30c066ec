"""Problems with verifiable answers, the input of GRPO and of on-policy preference pairs.

A problem is a plain dict (JSONL on disk)::

    {"id": "arith-train-48/2", "prompt": "48/2=", "answer": "24", "reward": "final_answer"}

``reward`` names the function of :mod:`lmforge.align.rewards` that scores a completion; code
problems also carry ``tests`` and ``entry_point`` (and may carry ``program_prompt``, the code the
completion continues).

The small arithmetic problems come from GSM8K's calculator annotations: every ``<<48/2=24>>`` in a
worked answer is a real small calculation a person wrote, so the split that lists them is a set
of thousands of arithmetic problems a tiny model can learn (the worded GSM8K problems are out of
its reach). Train problems come from GSM8K's train split; held-out problems from its test split,
less every prompt that also occurs in train, so a held-out score never counts a memorised prompt.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

from lmforge.errors import InputError

# One binary operation on non-negative integers, as the annotations write it: "48/2=24".
_BINARY = re.compile(r"\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*")
OPS = "+-*/"
ARITHMETIC_REWARD = "final_answer"


# GSM8K's 1,000 train / 300 test sample that ships with the repository (MIT, as GSM8K): the
# problems' source when there is no benchmark mirror, so the alignment stages run offline on a
# fresh clone. A mirror (LMFORGE_BENCHMARKS_DIR, ../shared/benchmarks) always wins.
SAMPLE_DIR = ("tests", "data", "benchmarks")


def gsm8k_source(benchmarks_dir: str | os.PathLike | None = None) -> str | None:
    """The benchmark directory the arithmetic problems are read from: ``benchmarks_dir``, the
    mirror, or else the repository's GSM8K sample (None: the reader's own default)."""
    from lmforge.paths import REPO_ROOT
    from lmforge.paths import benchmarks_dir as mirror

    if benchmarks_dir is not None:
        return str(benchmarks_dir)
    found = mirror()
    if found is not None:
        return str(found)
    sample = REPO_ROOT.joinpath(*SAMPLE_DIR)
    return str(sample) if (sample / "gsm8k").is_dir() else None


def _calculations(split: str, benchmarks_dir: str | os.PathLike | None = None) -> list[tuple[int, str, int, int]]:
    """(a, op, b, result) of every single-operation integer annotation of a GSM8K split whose
    result is right, in the order they occur."""
    from lmforge.benchmarks import get
    from lmforge.benchmarks.gsm8k.reader import CALCULATOR

    out = []
    for item in get("gsm8k").items(split, benchmarks_dir=gsm8k_source(benchmarks_dir)):
        for ann in CALCULATOR.findall(item["answer"]):
            m = _BINARY.fullmatch(ann[2:-2])
            if not m:
                continue
            a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
            # The annotations are written by people: keep only those whose result is right.
            exact = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else None}[op]
            if exact == r:
                out.append((a, op, b, r))
    return out


def arithmetic_problems(split: str = "train", limit: int | None = None, seed: int = 0, *,
                        max_value: int = 20, ops: str = OPS,
                        benchmarks_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Small arithmetic problems from GSM8K's calculator annotations (``<<48/2=24>>`` gives the
    user message ``48/2=`` and the answer ``24``), deduplicated.

    Only single-operation calculations on integers with an integer result are kept, and only those
    whose operands and result are all at most ``max_value`` (the easy end, which a 1-2M-parameter
    model can learn); ``ops`` picks the operations. ``split="test"`` (held out) drops every prompt
    that also occurs in the train split. The problems are shuffled with ``seed`` (the same seed
    gives the same list) and cut to ``limit``.
    """
    if split not in ("train", "test"):
        raise InputError(f"arithmetic problems come from GSM8K's train or test split, not {split!r}")
    bad = set(ops) - set(OPS)
    if bad or not ops:
        raise InputError(f"ops must be a subset of {OPS!r}, got {ops!r}")

    def keep(calcs):
        seen: dict[str, str] = {}
        for a, op, b, r in calcs:
            if op in ops and max(a, b, r) <= max_value:
                seen.setdefault(f"{a}{op}{b}=", str(r))
        return seen

    found = keep(_calculations(split, benchmarks_dir))
    if split == "test":
        train = keep(_calculations("train", benchmarks_dir))
        found = {p: a for p, a in found.items() if p not in train}
    prompts = sorted(found)
    random.Random(seed).shuffle(prompts)
    if limit is not None:
        prompts = prompts[:limit]
    return [{"id": f"arith-{split}-{p[:-1]}", "prompt": p, "answer": found[p],
             "reward": ARITHMETIC_REWARD} for p in prompts]


def arithmetic_chats(problems: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows (``{"messages": [user, assistant]}``) answering each problem with its answer: the
    short supervised warm-up that gives GRPO a policy whose reward is not always 0."""
    return [{"messages": [{"role": "user", "content": p["prompt"]},
                          {"role": "assistant", "content": p["answer"]}]} for p in problems]


def _check(problem: Any, where: str) -> dict[str, Any]:
    if not isinstance(problem, dict):
        raise InputError(f"{where}: a problem is a JSON object, got {type(problem).__name__}")
    for key in ("id", "prompt", "answer", "reward"):
        if not isinstance(problem.get(key), str):
            raise InputError(f"{where}: a problem needs a string {key!r} "
                             "(id, prompt, answer, reward)")
    if problem["reward"] == "unit_tests" and not isinstance(problem.get("tests"), str):
        raise InputError(f"{where}: a unit_tests problem needs a string 'tests'")
    return problem


def read_problems(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Problems from a JSONL file; a bad record is an InputError naming file and line."""
    from lmforge.io import iter_jsonl

    problems = [_check(row, f"{path}:{lineno}") for lineno, row in iter_jsonl(path)]
    if not problems:
        raise InputError(f"{path}: no problems")
    return problems


def write_problems(problems: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write problems as JSONL (atomically); every record is checked first."""
    import json

    from lmforge.io import atomic_path

    rows = [_check(p, f"problem {i}") for i, p in enumerate(problems)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return Path(path)
