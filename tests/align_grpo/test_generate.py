"""Batched KV-cache generation and speculative decoding, against Hugging Face's own generate."""

from __future__ import annotations

import pytest
import torch

from lmforge.align.generate import generate, generate_ids, load_policy, render_prompt, stop_ids
from lmforge.errors import InputError

PROMPTS = ["2+3=", "17-9=", "Natalia sold 48 clips. Half as many in May. How many?", "6*3=", "1="]


@pytest.fixture(scope="module")
def target(random_target_dir):
    torch.set_num_threads(1)
    return load_policy(random_target_dir)


@pytest.fixture(scope="module")
def draft(random_draft_dir):
    return load_policy(random_draft_dir)[0]


def hf_greedy(model, tok, text: str, max_new_tokens: int) -> list[int]:
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=sorted(stop_ids(tok)),
                         pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_batched_greedy_equals_hf_generate(target):
    model, tok = target
    gen = generate_ids(model, tok, PROMPTS, chat=True, greedy=True, max_new_tokens=24, batch_size=3)
    assert gen.prompt_ids[0] == tok(render_prompt(tok, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    for i, p in enumerate(PROMPTS):
        ref = hf_greedy(model, tok, render_prompt(tok, p), 24)
        assert gen.completion_ids[i] == ref, p
        assert gen.finished[i] == (ref[-1] in stop_ids(tok))
    assert model.training is False


def test_sampling_is_seeded_and_grouped(target):
    model, tok = target
    a = generate(model, tok, PROMPTS[:2], chat=True, n=4, temperature=1.0, max_new_tokens=8, seed=5)
    b = generate(model, tok, PROMPTS[:2], chat=True, n=4, temperature=1.0, max_new_tokens=8, seed=5)
    c = generate(model, tok, PROMPTS[:2], chat=True, n=4, temperature=1.0, max_new_tokens=8, seed=6)
    assert a == b and a != c
    assert [len(g) for g in a] == [4, 4]
    assert len({t for g in a for t in g}) > 1  # samples differ


def test_top_k_one_is_greedy(target):
    model, tok = target
    greedy = generate(model, tok, PROMPTS, chat=True, greedy=True, max_new_tokens=10)
    top1 = generate(model, tok, PROMPTS, chat=True, top_k=1, max_new_tokens=10, seed=3)
    assert greedy == top1


@pytest.mark.slow  # the arithmetic SFT warm-up (~15-40 s)
def test_stops_at_end_of_turn_and_to_batch(arithmetic_policy_dir):
    model, tok = load_policy(arithmetic_policy_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    gen = generate_ids(model, tok, ["2+3=", "9+11="], chat=True, n=2, max_new_tokens=12, seed=0)
    assert all(gen.finished) and all(c[-1] == end for c in gen.completion_ids)
    assert all("<|im_end|>" not in t for t in gen.texts)
    b = gen.to_batch(tok.pad_token_id)
    for r in range(4):
        comp = b["input_ids"][r][b["completion_mask"][r].bool()].tolist()
        assert comp == gen.completion_ids[r]
        real = b["input_ids"][r][b["attention_mask"][r].bool()].tolist()
        assert real == gen.prompt_ids[r] + gen.completion_ids[r]
        assert b["position_ids"][r][b["attention_mask"][r].bool()].tolist() == list(range(len(real)))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_equals_greedy(target, draft, k):
    model, tok = target
    plain = generate_ids(model, tok, PROMPTS, chat=True, greedy=True, max_new_tokens=30)
    spec = generate_ids(model, tok, PROMPTS, chat=True, greedy=True, max_new_tokens=30,
                        draft_model=draft, draft_tokens=k)
    assert spec.completion_ids == plain.completion_ids
    assert spec.texts == plain.texts
    assert spec.stats["draft_proposed"] > 0


def test_speculative_with_itself_accepts_everything(target):
    model, tok = target
    spec = generate_ids(model, tok, PROMPTS, chat=True, greedy=True, max_new_tokens=30,
                        draft_model=model, draft_tokens=4)
    assert spec.stats["acceptance"] == 1.0
    plain = generate_ids(model, tok, PROMPTS, chat=True, greedy=True, max_new_tokens=30)
    assert spec.completion_ids == plain.completion_ids
    # k + 1 tokens per target forward (prefill included)
    total = sum(len(c) for c in plain.completion_ids)
    assert spec.stats["target_forwards"] < total / 2


@pytest.mark.slow
def test_speculative_on_trained_models(arithmetic_policy_dir, draft, target):
    """A trained target with an untrained draft, and the reverse: still the target's output."""
    trained, tok = load_policy(arithmetic_policy_dir)
    untrained = target[0]
    prompts = ["2+3=", "12+7=", "20-15=", "4*5="]
    for t, d in [(trained, draft), (untrained, trained)]:
        plain = generate(t, tok, prompts, chat=True, greedy=True, max_new_tokens=16)
        assert generate(t, tok, prompts, chat=True, greedy=True, max_new_tokens=16,
                        draft_model=d, draft_tokens=3) == plain


def test_bad_arguments(target, draft):
    model, tok = target
    with pytest.raises(InputError, match="greedy only"):
        generate(model, tok, ["1="], chat=True, draft_model=draft)
    with pytest.raises(InputError, match="temperature"):
        generate(model, tok, ["1="], chat=True, temperature=0)
