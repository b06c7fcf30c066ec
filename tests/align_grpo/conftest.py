"""Fixtures of the GRPO and generation tests: a real byte-level BPE tokenizer with ChatML, tiny
Llama models, and a short arithmetic SFT warm-up on the engine's own SFT stage (a policy whose
reward is not always 0, the start GRPO needs). Data: the GSM8K sample in tests/data/benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The warm-up: enough SFT steps that the policy answers some problems, not all (measured:
# about 0.3 greedy on the train problems after 300 steps at 2e-3).
WARMUP_STEPS = 300


def gsm8k_texts() -> list[str]:
    from lmforge.benchmarks import get

    return [r["question"] + "\n" + r["answer"] for r in get("gsm8k").items("train")[:1000]]


@pytest.fixture(scope="session")
def grpo_tokenizer_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(gsm8k_texts(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|pad|>",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHATML
    out = tmp_path_factory.mktemp("grpo_tokenizer")
    hf.save_pretrained(out)
    return out


def make_model(tokenizer_dir: Path, out: Path, seed: int, **shape) -> Path:
    """A freshly initialised tiny Llama (the ``tiny`` preset, or ``shape`` overrides of it)."""
    import dataclasses

    from transformers import AutoTokenizer

    from lmforge.train.export import copy_tokenizer_files
    from lmforge.train.model import build_model, get_preset, model_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    preset = dataclasses.replace(get_preset("tiny"), **shape)
    model = build_model(model_config(preset, len(tok), bos_id=tok.bos_token_id,
                                     eos_id=tok.eos_token_id, pad_id=tok.pad_token_id), seed=seed)
    model.save_pretrained(out)
    copy_tokenizer_files(tokenizer_dir, out)
    return out


@pytest.fixture(scope="session")
def random_target_dir(grpo_tokenizer_dir, tmp_path_factory) -> Path:
    return make_model(grpo_tokenizer_dir, tmp_path_factory.mktemp("target"), seed=1)


@pytest.fixture(scope="session")
def random_draft_dir(grpo_tokenizer_dir, tmp_path_factory) -> Path:
    return make_model(grpo_tokenizer_dir, tmp_path_factory.mktemp("draft"), seed=2,
                      d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=128)


def arithmetic_sft(base: Path, out: Path, steps: int) -> Path:
    """SFT ``base`` on the train split's arithmetic problems with the engine's SFT stage."""
    from lmforge.align.problems import arithmetic_chats, arithmetic_problems
    from lmforge.train.config import SFTConfig
    from lmforge.train.sft import sft

    data = out.parent / f"{out.name}_chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n"
                            for r in arithmetic_chats(arithmetic_problems("train"))))
    sft(SFTConfig(base=str(base), data=str(data), out_dir=str(out), max_steps=steps,
                  micro_batch=16, lr=2e-3, warmup_steps=10, val_fraction=0.0, eval_batches=0,
                  log_every=100, device="cpu", packing=False, max_len=64))
    return out / "model"


@pytest.fixture(scope="session")
def arithmetic_policy_dir(random_target_dir, tmp_path_factory) -> Path:
    """The tiny model after the arithmetic SFT warm-up."""
    return arithmetic_sft(random_target_dir, tmp_path_factory.mktemp("sft") / "run", WARMUP_STEPS)
