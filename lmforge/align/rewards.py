"""Verifiable rewards: a registry of functions ``(problem, completion) -> reward in [0, 1]``.

A problem names its reward (``problem["reward"]``); :func:`score` looks it up. Adding a reward is
one decorated function::

    @register_reward("my_reward")
    def my_reward(problem: dict, completion: str) -> float: ...

Built in:

- ``final_answer``: GSM8K-style. The number after the last ``####`` if there is one, else the last
  number of the completion, equals the problem's answer numerically (``1,000`` = ``1000.0``).
- ``exact_match``: the completion equals the answer after normalising case and whitespace.
- ``unit_tests``: code. The problem's ``tests`` run against the completion in lmforge's sandbox
  (:mod:`lmforge.evaluate.isolation`); 1.0 only if the program ran to its end and exited 0.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from lmforge.errors import LmforgeError

RewardFn = Callable[[dict, str], float]
REWARDS: dict[str, RewardFn] = {}

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name`` (a second function under the same name is an error)."""
    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise LmforgeError(f"reward {name!r} is registered twice")
        REWARDS[name] = fn
        return fn
    return wrap


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise LmforgeError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


def score(problem: dict[str, Any], completion: str) -> float:
    """The reward of ``completion`` for ``problem``, by the function ``problem["reward"]`` names."""
    name = problem.get("reward")
    if not isinstance(name, str):
        raise LmforgeError(f"problem {problem.get('id', '?')!r} names no reward (field 'reward')")
    value = float(get_reward(name)(problem, completion))
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise LmforgeError(f"reward {name!r} returned {value}, outside [0, 1]")
    return value


def _as_number(text: str) -> float | None:
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_final_number(completion: str) -> float | None:
    """The number after the last ``####``, else the last number in the text; None if none."""
    if "####" in completion:
        tail = completion.rsplit("####", 1)[1]
        m = _NUMBER.search(tail)
        if m:
            return _as_number(m.group())
    found = _NUMBER.findall(completion)
    return _as_number(found[-1]) if found else None


@register_reward("final_answer")
def final_answer(problem: dict, completion: str) -> float:
    want, got = _as_number(str(problem["answer"])), extract_final_number(completion)
    if want is None or got is None:
        return 0.0
    return 1.0 if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9) else 0.0


@register_reward("numeric_closeness")
def numeric_closeness(problem: dict, completion: str) -> float:
    """A dense form of ``final_answer``: 1 for the exact number, else ``1 - |got - want| /
    (|want| + 1)`` down to 0 (24 for 25 scores 0.96, 12 scores 0.54), and 0 without a number.
    A weak policy that is almost never exactly right still gets groups whose rewards differ, so
    GRPO has a gradient (reward shaping; the exact answer stays the best reward)."""
    want, got = _as_number(str(problem["answer"])), extract_final_number(completion)
    if want is None or got is None:
        return 0.0
    if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
        return 1.0
    return max(0.0, 1.0 - abs(got - want) / (abs(want) + 1.0))


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


@register_reward("exact_match")
def exact_match(problem: dict, completion: str) -> float:
    return 1.0 if _normalise(completion) == _normalise(str(problem["answer"])) else 0.0


def code_of(completion: str) -> str:
    """The code of a completion: the first fenced block if there is one, else the whole text."""
    m = _FENCE.search(completion)
    return m.group(1) if m else completion


def unit_test_program(problem: dict, completion: str) -> str:
    """The program the sandbox runs: the problem's ``code_prompt`` (code the completion continues,
    as in HumanEval; empty by default), the completion's code, the tests, then
    ``check(entry_point)`` when the problem names an entry point."""
    program = problem.get("code_prompt", "") + code_of(completion) + "\n" + problem["tests"] + "\n"
    if problem.get("entry_point"):
        program += f"check({problem['entry_point']})\n"
    return program


@register_reward("unit_tests")
def unit_tests(problem: dict, completion: str) -> float:
    from lmforge.evaluate.isolation import check_program

    if not isinstance(problem.get("tests"), str):
        raise LmforgeError(f"problem {problem.get('id', '?')!r}: unit_tests needs 'tests'")
    result = check_program(unit_test_program(problem, completion),
                           timeout=problem.get("timeout"))
    return 1.0 if result["passed"] else 0.0
