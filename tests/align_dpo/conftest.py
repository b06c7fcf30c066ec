"""Fixtures of the preference tests: the training tests' real tiny tokenizer and model (built from
GSM8K's train split, see tests/train/conftest.py), and preference pairs over GSM8K's calculator
annotations (``48/2=`` -> ``24``): the right result is ``chosen``, a wrong one ``rejected``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from train.conftest import base_model_dir, gsm8k_rows, tokenizer_dir  # noqa: F401 - fixtures reused


def arithmetic_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Pairs over GSM8K's real calculations: chosen the right result, rejected a wrong one near it."""
    from lmforge.align.problems import arithmetic_problems

    rng = random.Random(seed)
    problems = arithmetic_problems(split, seed=seed, max_value=100)
    pairs = []
    for p in problems[:n]:
        right = int(p["answer"])
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3, 10])
        pairs.append({"prompt": p["prompt"], "chosen": p["answer"], "rejected": str(wrong), "id": p["id"]})
    return pairs


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in arithmetic_pairs(96)))
    return path
