"""Shared fixtures for the evaluation tests: a real (tiny) tokenizer and Llama model trained here.

The tokenizer is a byte-level BPE trained on GSM8K train questions and answers; the model is a
~0.3M-parameter LlamaForCausalLM trained for a few dozen steps on the same text, so that it scores
better than chance on held-out text (bits per byte) while staying fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lmforge.paths import benchmarks_dir  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def mirror() -> Path:
    d = benchmarks_dir()
    assert d is not None, "the benchmark mirror (LMFORGE_BENCHMARKS_DIR / ../shared/benchmarks) is required"
    return d


@pytest.fixture(scope="session")
def gsm8k_texts(mirror) -> list[str]:
    rows = [json.loads(line) for line in (mirror / "gsm8k" / "train.jsonl").read_text().splitlines()[:3000]]
    return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]


def _train_tokenizer(texts: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gsm8k_texts) -> Path:
    """A trained tiny Llama + tokenizer, saved as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tok = _train_tokenizer(gsm8k_texts, out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out / "untrained")
    tok.save_pretrained(out / "untrained")
    # A few dozen steps of next-token prediction on GSM8K text (the evaluation's held-out text is
    # the GSM8K *test* split, so nothing here leaks into it).
    ids = torch.tensor([i for t in gsm8k_texts[:600] for i in tok(t + tok.eos_token)["input_ids"]])
    seq, batch = 64, 16
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains >10x faster on one thread on a busy box
    for _ in range(80):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models evaluate much faster on one thread when the 2 cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def heldout_parquet(tmp_path_factory, mirror) -> Path:
    """Held-out documents in the pipeline's val.parquet format (id, url, text): each joins three
    GSM8K test items, so that most span more than one 256-token context window."""
    from lmforge.io import write_parquet

    rows = [json.loads(line) for line in (mirror / "gsm8k" / "test.jsonl").read_text().splitlines()[:48]]
    items = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    path = tmp_path_factory.mktemp("heldout") / "val.parquet"
    write_parquet(path, ({"id": f"gsm8k-test-{i}", "url": f"gsm8k://test/{i}",
                          "text": "\n\n".join(items[i:i + 3])} for i in range(0, 48, 3)))
    return path
