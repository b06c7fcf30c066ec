"""Problems from GSM8K's calculator annotations and the reward registry."""

from __future__ import annotations

import json

import pytest

from lmforge.align import problems as P
from lmforge.align import rewards as R
from lmforge.errors import InputError, LmforgeError


def test_arithmetic_problems_are_right_deduplicated_and_held_out():
    train = P.arithmetic_problems("train")
    test = P.arithmetic_problems("test")
    assert len(train) > 100 and len(test) > 10
    for p in train + test:
        a, rest = p["prompt"][:-1], p["answer"]
        assert p["prompt"].endswith("=") and p["reward"] == "final_answer"
        # the answer is the right result of the expression (// for exact division)
        assert eval(a.replace("/", "//")) == int(rest)  # noqa: S307 -- digits and one operator
        assert max(int(x) for x in [*__import__("re").split(r"[-+*/]", a), rest]) <= 20
    assert len({p["prompt"] for p in train}) == len(train)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in test}
    # the first train annotation of the sample: "Natalia sold 48/2 = <<48/2=24>>24 clips"
    big = {p["prompt"]: p["answer"] for p in P.arithmetic_problems("train", max_value=100)}
    assert big["48/2="] == "24" and big["48+24="] == "72"


def test_arithmetic_problems_seed_limit_ops():
    a = P.arithmetic_problems("train", limit=20, seed=1)
    assert a == P.arithmetic_problems("train", limit=20, seed=1)
    assert a != P.arithmetic_problems("train", limit=20, seed=2)
    assert len(a) == 20
    assert all("+" in p["prompt"] for p in P.arithmetic_problems("train", ops="+"))
    with pytest.raises(InputError):
        P.arithmetic_problems("train", ops="^")
    with pytest.raises(InputError):
        P.arithmetic_problems("validation")


def test_problems_jsonl_round_trip_and_bad_record(tmp_path):
    probs = P.arithmetic_problems("train", limit=5)
    path = P.write_problems(probs, tmp_path / "p.jsonl")
    assert P.read_problems(path) == probs
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(probs[0]) + "\n" + json.dumps({"id": "x", "prompt": "1+1="}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        P.read_problems(bad)


def test_arithmetic_chats():
    rows = P.arithmetic_chats([{"prompt": "2+3=", "answer": "5"}])
    assert rows == [{"messages": [{"role": "user", "content": "2+3="},
                                  {"role": "assistant", "content": "5"}]}]


@pytest.mark.parametrize("completion,reward", [
    ("5", 1.0), ("The answer is 5.", 1.0), ("2+3=5", 1.0), ("5.0", 1.0), ("#### 5\n7 apples", 1.0),
    ("$5", 1.0), ("6", 0.0), ("5 or 6", 0.0), ("", 0.0), ("five", 0.0), ("#### 6 because 5", 0.0)])
def test_final_answer(completion, reward):
    assert R.score({"id": "a", "answer": "5", "reward": "final_answer"}, completion) == reward


def test_final_answer_thousands_and_negative():
    assert R.score({"answer": "1000", "reward": "final_answer"}, "It costs $1,000.") == 1.0
    assert R.score({"answer": "-3", "reward": "final_answer"}, "= -3") == 1.0


def test_exact_match():
    p = {"answer": "Paris", "reward": "exact_match"}
    assert R.score(p, "  paris ") == 1.0
    assert R.score(p, "Paris, France") == 0.0


def test_registry():
    @R.register_reward("test_length_is_answer")
    def length(problem, completion):
        return float(len(completion) == int(problem["answer"]))

    assert R.get_reward("test_length_is_answer") is length
    assert R.score({"answer": "3", "reward": "test_length_is_answer"}, "abc") == 1.0
    with pytest.raises(LmforgeError, match="known: .*exact_match.*final_answer"):
        R.get_reward("nope")
    with pytest.raises(LmforgeError, match="registered twice"):
        R.register_reward("final_answer")(length)

    @R.register_reward("test_out_of_range")
    def bad(problem, completion):
        return 2.0

    with pytest.raises(LmforgeError, match="outside"):
        R.score({"answer": "", "reward": "test_out_of_range"}, "")


def test_unit_tests_reward_runs_in_the_sandbox():
    problem = {"id": "add", "prompt": "Write add(a, b).", "answer": "", "reward": "unit_tests",
               "tests": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n",
               "entry_point": "add"}
    good = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert R.score(problem, good) == 1.0
    assert R.score(problem, "def add(a, b):\n    return a - b\n") == 0.0
    # a completion that stops the tests early does not pass
    assert R.score(problem, "import sys\nsys.exit(0)\n") == 0.0


@pytest.mark.parametrize("completion,reward", [
    ("24", 1.0), ("the answer is 24.", 1.0), ("25", 1 - 1 / 25), ("12", 1 - 12 / 25),
    ("100", 0.0), ("-24", 0.0), ("no number", 0.0), ("", 0.0)])
def test_numeric_closeness_is_final_answer_with_partial_credit(completion, reward):
    problem = {"prompt": "48/2=", "answer": "24", "reward": "numeric_closeness"}
    assert R.score(problem, completion) == pytest.approx(reward)
    # the exact answer is the only one that scores 1, as with final_answer
    assert (R.score(problem, completion) == 1.0) == (R.final_answer(problem, completion) == 1.0)


def test_arithmetic_problems_fall_back_to_the_shipped_sample(monkeypatch, tmp_path):
    """Without a mirror the problems come from the GSM8K sample in tests/data (so the alignment
    job runs on a fresh clone); a mirror, or an explicit directory, wins."""
    from lmforge import paths

    monkeypatch.delenv("LMFORGE_BENCHMARKS_DIR", raising=False)
    monkeypatch.setattr(paths, "benchmarks_dir", lambda: None)
    sample = str(paths.REPO_ROOT / "tests" / "data" / "benchmarks")
    assert P.gsm8k_source() == sample
    assert P.arithmetic_problems("train", limit=5)
    assert P.gsm8k_source(tmp_path) == str(tmp_path)
    monkeypatch.setattr(paths, "benchmarks_dir", lambda: tmp_path)
    assert P.gsm8k_source() == str(tmp_path)
