"""Judges for the arena: who answered a prompt better, ``a`` or ``b``?

A judge has ``compare(problem, a, b) -> float``: 1 when ``a`` wins, 0 when ``b`` wins, 0.5 for a
tie, and anything between for a judge that is unsure. ``compare_many(items)`` judges a list of
``(problem, a, b)`` at once (the model judges batch their forwards); :func:`judge_all` uses it
when a judge has it. ``check(problems)``, if a judge has it, refuses problems it cannot judge
before any model answers them. Adding a judge is one decorated factory::

    @register_judge("length")
    def length_judge(**options) -> Judge:   # options: reward_model_dir, judge_model_dir, device
        return MyJudge()

Built in:

- ``reward``: the problem's verifiable reward (:func:`lmforge.align.rewards.score`): the answer
  with the higher reward wins; equal rewards tie (both right, or both wrong).
- ``reward_model``: a Bradley-Terry reward model (:func:`lmforge.align.reward_model.
  load_reward_model`): ``sigmoid(r(a) - r(b))``, the probability that model assigns to ``a``
  being preferred.
- ``judge_model``: a Hugging Face causal LM asked which answer is better. Its verdict is read
  from the log-probabilities of answering ``A`` and ``B`` (no sampling), and it is asked twice,
  with the answers in both positions, and the two verdicts averaged: a judge that always says
  "A" scores every battle 0.5, so position bias cancels, and ``compare(p, a, b) = 1 -
  compare(p, b, a)`` exactly.
- ``auto``: the verifiable reward where the problem names one, else the reward model or judge
  model the options give.

Light at import: torch and transformers load when a model judge is built.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from lmforge.errors import InputError, LmforgeError

Item = tuple[dict, str, str]  # (problem, answer a, answer b)


@runtime_checkable
class Judge(Protocol):
    name: str

    def compare(self, problem: dict, a: str, b: str) -> float: ...


JudgeFactory = Callable[..., Judge]
JUDGES: dict[str, JudgeFactory] = {}


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Register a factory ``(**options) -> Judge`` under ``name``. The arena passes the options
    ``reward_model_dir``, ``judge_model_dir``, ``device`` and ``batch_size``; a factory takes the
    ones it needs (and ``**_`` for the rest)."""
    def wrap(factory: JudgeFactory) -> JudgeFactory:
        if name in JUDGES and JUDGES[name] is not factory:
            raise LmforgeError(f"judge {name!r} is registered twice")
        JUDGES[name] = factory
        return factory
    return wrap


def get_judge(name: str, **options: Any) -> Judge:
    if name not in JUDGES:
        raise InputError(f"unknown judge {name!r}; known: {', '.join(sorted(JUDGES))}")
    return JUDGES[name](**options)


def judge_all(judge: Judge, items: Sequence[Item]) -> list[float]:
    """Every item's verdict, in [0, 1] (checked), through ``compare_many`` when the judge has it."""
    many = getattr(judge, "compare_many", None)
    values = list(many(items)) if many is not None else [judge.compare(*it) for it in items]
    if len(values) != len(items):
        raise LmforgeError(f"judge {judge.name!r} gave {len(values)} verdicts for {len(items)} battles")
    for v in values:
        if not (0.0 <= float(v) <= 1.0) or math.isnan(float(v)):
            raise LmforgeError(f"judge {judge.name!r} returned {v}, outside [0, 1]")
    return [float(v) for v in values]


def _key(problem: dict) -> tuple[str, str]:
    return str(problem.get("id", "")), str(problem.get("prompt", ""))


# ----------------------------------------------------------------------------------------------
# verifiable reward


class RewardJudge:
    """The answer with the higher verifiable reward wins; equal rewards tie. Each answer is scored
    once (an answer meets every other contestant's), so unit tests run once per answer."""

    name = "reward"

    def __init__(self) -> None:
        self._cache: dict[tuple[tuple[str, str], str], float] = {}

    def reward(self, problem: dict, completion: str) -> float:
        from lmforge.align.rewards import score

        key = (_key(problem), completion)
        if key not in self._cache:
            self._cache[key] = score(problem, completion)
        return self._cache[key]

    def check(self, problems: Sequence[dict]) -> None:
        from lmforge.align.rewards import REWARDS

        for p in problems:
            if p.get("reward") not in REWARDS:
                raise InputError(f"the reward judge needs a verifiable reward on every prompt; "
                                 f"{p.get('id', '?')!r} has none (use --judge auto with a model judge)")

    def compare(self, problem: dict, a: str, b: str) -> float:
        ra, rb = self.reward(problem, a), self.reward(problem, b)
        return 1.0 if ra > rb else 0.0 if ra < rb else 0.5


@register_judge("reward")
def reward_judge(**_: Any) -> Judge:
    return RewardJudge()


# ----------------------------------------------------------------------------------------------
# reward model


class RewardModelJudge:
    """``sigmoid(r(a) - r(b))`` from a Bradley-Terry reward model; every distinct (prompt,
    answer) is scored once, in one batched call per ``compare_many``."""

    name = "reward_model"

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        from lmforge.align.reward_model import load_reward_model

        self.model = load_reward_model(model_dir, device=device)
        self._cache: dict[tuple[str, str], float] = {}

    def _score(self, pairs: list[tuple[str, str]]) -> None:
        todo = list(dict.fromkeys(p for p in pairs if p not in self._cache))
        if todo:
            values = self.model.score([p for p, _ in todo], [c for _, c in todo])
            self._cache.update(zip(todo, (float(v) for v in values)))

    def compare_many(self, items: Sequence[Item]) -> list[float]:
        self._score([(p["prompt"], x) for p, a, b in items for x in (a, b)])
        out = []
        for p, a, b in items:
            d = self._cache[(p["prompt"], a)] - self._cache[(p["prompt"], b)]
            out.append(0.5 * (1.0 + math.tanh(d / 2)))  # sigmoid(d), without overflow
        return out

    def compare(self, problem: dict, a: str, b: str) -> float:
        return self.compare_many([(problem, a, b)])[0]


@register_judge("reward_model")
def reward_model_judge(reward_model_dir: str | None = None, device: str = "cpu", **_: Any) -> Judge:
    if not reward_model_dir:
        raise InputError("the reward_model judge needs --reward-model-dir (a trained reward model)")
    return RewardModelJudge(reward_model_dir, device=device)


# ----------------------------------------------------------------------------------------------
# judge model

JUDGE_TEMPLATE = ("Which answer to the question is better?\n\nQuestion: {prompt}\n\n"
                  "Answer A: {a}\n\nAnswer B: {b}\n\nReply with one letter, A or B.")


class JudgeModel:
    """A causal LM asked "which is better, A or B?". ``P(A) = sigmoid(log p("A") - log p("B"))``
    after the prompt (the chat template's user turn and generation prompt when the tokenizer has
    one), read from one forward, no sampling. ``orders="both"`` asks again with the answers
    swapped and averages ``P(A | a first)`` with ``1 - P(A | b first)``."""

    name = "judge_model"

    def __init__(self, model_dir: str, device: str = "cpu", batch_size: int = 16,
                 template: str = JUDGE_TEMPLATE, orders: str = "both") -> None:
        from lmforge.align.generate import load_policy

        if orders not in ("both", "first"):
            raise InputError(f"judge orders must be 'both' or 'first', not {orders!r}")
        self.model, self.tokenizer = load_policy(model_dir, device=device)
        self.batch_size, self.template, self.orders = max(1, batch_size), template, orders
        self.choices = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in ("A", "B")]
        if not all(self.choices) or self.choices[0] == self.choices[1]:
            raise InputError(f"the judge's tokenizer cannot tell 'A' from 'B' ({self.choices})")

    def prompt(self, problem: dict, first: str, second: str) -> str:
        from lmforge.align.generate import render_prompt

        text = self.template.format(prompt=problem.get("prompt", ""), a=first, b=second)
        if getattr(self.tokenizer, "chat_template", None):
            return render_prompt(self.tokenizer, text)
        return text + "\n"

    def prob_first(self, prompts: list[str]) -> list[float]:
        """For each rendered prompt, the judge's probability of answering "A" rather than "B"."""
        lp = self._continuation_logprobs(prompts)
        return [0.5 * (1.0 + math.tanh((la - lb) / 2)) for la, lb in lp]

    def _continuation_logprobs(self, prompts: list[str]) -> list[tuple[float, float]]:
        import torch

        from lmforge.align.generate import pad_token_id

        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        pad = pad_token_id(tok)
        rows, spans = [], []
        for text in prompts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            for c in self.choices:
                rows.append(ids + c)
                spans.append((len(ids), len(c)))
        out: list[float] = []
        with torch.no_grad():
            for s in range(0, len(rows), self.batch_size * 2):
                chunk, sp = rows[s:s + self.batch_size * 2], spans[s:s + self.batch_size * 2]
                L = max(map(len, chunk))
                ids = torch.full((len(chunk), L), int(pad), dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, r in enumerate(chunk):  # right padding: positions count from 0 per row
                    ids[i, :len(r)] = torch.tensor(r)
                    attn[i, :len(r)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for i, (start, n) in enumerate(sp):
                    targets = ids[i, start:start + n].to(device)
                    picked = logp[i, start - 1:start - 1 + n].gather(-1, targets[:, None])
                    out.append(float(picked.sum()))
        return [(out[2 * i], out[2 * i + 1]) for i in range(len(prompts))]

    def compare_many(self, items: Sequence[Item]) -> list[float]:
        forward = self.prob_first([self.prompt(p, a, b) for p, a, b in items])
        if self.orders == "first":
            return forward
        swapped = self.prob_first([self.prompt(p, b, a) for p, a, b in items])
        return [0.5 * (f + (1.0 - s)) for f, s in zip(forward, swapped)]

    def compare(self, problem: dict, a: str, b: str) -> float:
        return self.compare_many([(problem, a, b)])[0]


@register_judge("judge_model")
def judge_model_judge(judge_model_dir: str | None = None, device: str = "cpu",
                      batch_size: int = 16, judge_orders: str = "both", **_: Any) -> Judge:
    if not judge_model_dir:
        raise InputError("the judge_model judge needs --judge-model-dir (a Hugging Face causal LM)")
    return JudgeModel(judge_model_dir, device=device, batch_size=batch_size, orders=judge_orders)


# ----------------------------------------------------------------------------------------------
# auto: the verifiable reward where there is one


class AutoJudge:
    """The verifiable reward for problems that name one; the fallback judge (reward model, else
    judge model) for the rest. ``judge_for(problem)`` says which judged a battle."""

    name = "auto"

    def __init__(self, fallback_factory: Callable[[], Judge] | None) -> None:
        self.reward = RewardJudge()
        self._fallback_factory = fallback_factory
        self._fallback: Judge | None = None

    @staticmethod
    def verifiable(problem: dict) -> bool:
        from lmforge.align.rewards import REWARDS

        return problem.get("reward") in REWARDS

    def fallback(self) -> Judge:
        if self._fallback is None:
            if self._fallback_factory is None:
                raise InputError("a problem has no verifiable reward (no known 'reward' field) and "
                                 "no --reward-model-dir or --judge-model-dir was given to judge it")
            self._fallback = self._fallback_factory()
        return self._fallback

    def check(self, problems: Sequence[dict]) -> None:
        if self._fallback_factory is None:
            for p in problems:
                if not self.verifiable(p):
                    self.fallback()  # raises, naming what is missing

    def judge_for(self, problem: dict) -> str:
        return "reward" if self.verifiable(problem) else self.fallback().name

    def compare_many(self, items: Sequence[Item]) -> list[float]:
        out: list[float | None] = [None] * len(items)
        rest = []
        for i, it in enumerate(items):
            if self.verifiable(it[0]):
                out[i] = self.reward.compare(*it)
            else:
                rest.append(i)
        if rest:
            for i, v in zip(rest, judge_all(self.fallback(), [items[i] for i in rest])):
                out[i] = v
        return [float(v) for v in out]  # type: ignore[arg-type]

    def compare(self, problem: dict, a: str, b: str) -> float:
        return self.compare_many([(problem, a, b)])[0]


@register_judge("auto")
def auto_judge(reward_model_dir: str | None = None, judge_model_dir: str | None = None,
               device: str = "cpu", batch_size: int = 16, judge_orders: str = "both",
               **_: Any) -> Judge:
    if reward_model_dir:
        fallback = lambda: RewardModelJudge(reward_model_dir, device=device)  # noqa: E731
    elif judge_model_dir:
        fallback = lambda: JudgeModel(judge_model_dir, device=device, batch_size=batch_size,  # noqa: E731
                                      orders=judge_orders)
    else:
        fallback = None
    return AutoJudge(fallback)
