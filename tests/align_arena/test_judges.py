"""Judges: the verifiable-reward judge follows the reward; the judge-model judge reads its verdict
from the log-probabilities of "A" and "B", asks in both orders so that position bias cancels
(exactly antisymmetric), and its batched, padded scoring equals one forward per prompt; the
registry takes new judges and names the known ones when asked for an unknown one."""

from __future__ import annotations

import math

import pytest

from lmforge.align.judges import (AutoJudge, JudgeModel, get_judge, judge_all,
                                  register_judge)
from lmforge.errors import InputError, LmforgeError

PROBLEM = {"id": "p1", "prompt": "12+7=", "answer": "19", "reward": "final_answer"}


def test_reward_judge_follows_the_verifiable_reward():
    judge = get_judge("reward")
    assert judge.compare(PROBLEM, "19", "20") == 1.0
    assert judge.compare(PROBLEM, "the answer is 18", "12+7 = 19") == 0.0
    assert judge.compare(PROBLEM, "19", "#### 19") == 0.5  # both right
    assert judge.compare(PROBLEM, "no idea", "20") == 0.5  # both wrong
    assert judge_all(judge, [(PROBLEM, "19", "1"), (PROBLEM, "1", "19")]) == [1.0, 0.0]


def test_reward_judge_scores_each_answer_once():
    # An answer meets every other contestant's: its reward (unit tests, for code) runs once.
    from lmforge.align.rewards import REWARDS, register_reward

    calls = []

    @register_reward("counting_test")
    def _counting(problem, completion):
        calls.append(completion)
        return 1.0 if completion == problem["answer"] else 0.0

    try:
        problem = {**PROBLEM, "reward": "counting_test"}
        values = judge_all(get_judge("reward"), [(problem, "19", "1"), (problem, "19", "2"),
                                                 (problem, "1", "2")])
        assert values == [1.0, 1.0, 0.5] and sorted(calls) == ["1", "19", "2"]
    finally:
        REWARDS.pop("counting_test")


def test_registry():
    with pytest.raises(InputError, match="unknown judge 'nope'; known: .*judge_model.*reward"):
        get_judge("nope")
    with pytest.raises(LmforgeError, match="registered twice"):
        register_judge("reward")(lambda **_: None)
    with pytest.raises(InputError, match="needs --reward-model-dir"):
        get_judge("reward_model")
    with pytest.raises(InputError, match="needs --judge-model-dir"):
        get_judge("judge_model")

    class Bad:
        name = "bad"

        def compare(self, problem, a, b):
            return 1.5

    with pytest.raises(LmforgeError, match="returned 1.5, outside"):
        judge_all(Bad(), [(PROBLEM, "a", "b")])


def test_auto_judge_needs_a_model_judge_for_problems_without_a_reward():
    judge = get_judge("auto")
    assert isinstance(judge, AutoJudge)
    assert judge.compare(PROBLEM, "19", "3") == 1.0 and judge.judge_for(PROBLEM) == "reward"
    open_ended = {"id": "q", "prompt": "Write a haiku."}
    with pytest.raises(InputError, match="no verifiable reward"):
        judge.compare(open_ended, "a", "b")


@pytest.fixture(scope="module")
def judge(trained_model_dir):
    return JudgeModel(str(trained_model_dir), batch_size=3)


def _manual_prob_first(judge: JudgeModel, text: str) -> float:
    """P("A") against P("B") after ``text``: one unpadded forward per continuation."""
    import torch

    tok, model = judge.tokenizer, judge.model
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lps = []
    for choice in ("A", "B"):
        c = tok(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + c])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        lps.append(sum(float(logp[len(ids) - 1 + k, t]) for k, t in enumerate(c)))
    return 1 / (1 + math.exp(lps[1] - lps[0]))


def test_judge_model_scores_like_one_forward_per_prompt(judge):
    # Prompts of different lengths share padded batches (batch_size=3 -> 6 rows per forward).
    items = [(PROBLEM, "19", "20"), (PROBLEM, "a much longer answer that is 19", "7"),
             ({"id": "x", "prompt": "3*4="}, "12", "twelve"), (PROBLEM, "", "19")]
    texts = [judge.prompt(p, a, b) for p, a, b in items]
    assert texts[0].startswith("<|im_start|>user\nWhich answer") and texts[0].endswith("assistant\n")
    batched = judge.prob_first(texts)
    for text, value in zip(texts, batched):
        assert value == pytest.approx(_manual_prob_first(judge, text), abs=1e-5)


def test_judge_model_cancels_position_bias(judge, trained_model_dir):
    items = [(PROBLEM, "19", "20"), (PROBLEM, "20", "19"), (PROBLEM, "5", "5"),
             (PROBLEM, "#### 19", "I think 18")]
    both = judge_all(judge, items)
    assert all(0.0 <= v <= 1.0 for v in both)
    # Swapping the answers gives exactly the complement; the same answer twice is a tie.
    assert both[0] + both[1] == pytest.approx(1.0, abs=1e-9)
    assert both[2] == pytest.approx(0.5, abs=1e-12)
    # One order alone is biased: with two identical answers the judge still leans to a letter,
    # and the average over both orders is exactly the mean of that lean and its mirror.
    first = JudgeModel(str(trained_model_dir), orders="first")
    lean = first.compare(PROBLEM, "5", "5")
    assert abs(lean - 0.5) > 1e-4
    f_ab, f_ba = first.compare(*items[3]), first.compare(PROBLEM, items[3][2], items[3][1])
    assert both[3] == pytest.approx((f_ab + 1 - f_ba) / 2, abs=1e-9)


def test_reward_model_judge_is_the_bradley_terry_probability(reward_model_dir):
    from lmforge.align.reward_model import load_reward_model

    judge = get_judge("reward_model", reward_model_dir=str(reward_model_dir))
    calls = []
    score = judge.model.score
    judge.model.score = lambda prompts, completions: calls.append(len(prompts)) or score(prompts, completions)
    other = {"id": "p2", "prompt": "3*4=", "answer": "12", "reward": "final_answer"}
    items = [(PROBLEM, "19", "20"), (PROBLEM, "20", "19"), (PROBLEM, "19", "19"),
             (other, "12", "twelve"), (PROBLEM, "19", "a long answer")]
    values = judge_all(judge, items)
    # One batched call over the 5 distinct (prompt, answer) pairs, none scored twice.
    assert calls == [5]
    rm = load_reward_model(reward_model_dir)
    r = rm.score([p["prompt"] for p, a, b in items] * 2, [a for _, a, _ in items] + [b for *_, b in items])
    for k, v in enumerate(values):
        assert v == pytest.approx(1 / (1 + math.exp(-(r[k] - r[k + len(items)]))), abs=1e-6)
    assert values[0] + values[1] == pytest.approx(1.0) and values[2] == 0.5
    assert len({round(v, 6) for v in values}) > 2  # a random head still tells answers apart
    judge_all(judge, items[:2])
    assert calls == [5]  # cached
