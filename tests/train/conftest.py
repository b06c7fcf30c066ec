"""Shared fixtures for the training tests: one real tokenizer and one set of token shards per
session, built from GSM8K's train split (real English text the project did not write).

The tests read the first 1,000 problems of the split, which the sample shipped in
``tests/data/benchmarks`` holds, so they run the same on a fresh clone as with the full mirror:
the tokenizer learns from all of them, the token shards take problems 0-899 (train 0-799, val
800-899) and the SFT chat file problems 900-963."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from lmforge.paths import benchmarks_dir  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Which of the first 1,000 train problems each fixture reads (see the module doc).
SHARD_TRAIN, SHARD_VAL, SFT_CHATS = slice(0, 800), slice(800, 900), 900


def gsm8k_rows(split: str = "train") -> list[dict]:
    root = benchmarks_dir()
    if root is None or not (root / "gsm8k" / f"{split}.jsonl").exists():
        pytest.fail("GSM8K mirror not found: set LMFORGE_BENCHMARKS_DIR (see docs/ENGINE.md)")
    with open(root / "gsm8k" / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def _texts(rows: list[dict]) -> list[str]:
    return [r["question"] + "\n" + r["answer"] for r in rows]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(gsm8k_rows("train")[:1000]), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|pad|>",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHATML
    out = tmp_path_factory.mktemp("tokenizer")
    hf.save_pretrained(out)
    return out


def write_shard(out: Path, split: str, docs: list[list[int]], vocab_size: int, eos_id: int) -> None:
    """The token-shard format of lmforge.tokenize.shards: flat uint16 + JSON header."""
    flat = np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.uint16)
    flat.tofile(out / f"{split}.bin")
    (out / f"{split}.json").write_text(json.dumps({
        "dtype": "uint16", "num_tokens": int(flat.size), "num_documents": len(docs),
        "vocab_size": vocab_size, "eos_id": eos_id}))


@pytest.fixture(scope="session")
def shards_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("tokens")
    rows = gsm8k_rows("train")
    train = tok(_texts(rows[SHARD_TRAIN]), add_special_tokens=False)["input_ids"]
    val = tok(_texts(rows[SHARD_VAL]), add_special_tokens=False)["input_ids"]
    write_shard(out, "train", train, len(tok), tok.eos_token_id)
    write_shard(out, "val", val, len(tok), tok.eos_token_id)
    return out


@pytest.fixture(scope="session")
def base_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A freshly initialised tiny model saved as a Hugging Face dir with the tokenizer beside it."""
    from transformers import AutoTokenizer

    from lmforge.train.loop import copy_tokenizer_files
    from lmforge.train.model import build_model, model_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(model_config("tiny", len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                                     pad_id=tok.pad_token_id), seed=3)
    out = tmp_path_factory.mktemp("base_model")
    model.save_pretrained(out)
    copy_tokenizer_files(tokenizer_dir, out)
    return out


def gsm8k_chats(n: int, start: int = 0) -> list[dict]:
    """GSM8K train problems as chat rows: a system prompt, the question, the worked answer."""
    return [{"messages": [{"role": "system", "content": "Solve the problem step by step."},
                          {"role": "user", "content": r["question"]},
                          {"role": "assistant", "content": r["answer"]}]}
            for r in gsm8k_rows("train")[start:start + n]]


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft_data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_chats(64, start=SFT_CHATS)))
    return path
