"""Fixtures of the arena tests: the training tests' real tiny tokenizer and untrained model (see
tests/train/conftest.py), a copy of it trained here for a few dozen steps to answer some of the
held-out arithmetic problems, and a LoRA adapter on the trained model that is still at its
initialisation (B = 0: it changes no output)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from train.conftest import base_model_dir, gsm8k_rows, tokenizer_dir  # noqa: F401 - fixtures reused

# The trained model learns the answers of the first TAUGHT held-out problems (the arena is tested
# here, not generalisation): it should win battles on those and never lose to the untrained model.
TAUGHT = 8
TRAIN_STEPS = 40


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models run several times faster on one thread than with OpenMP across busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def heldout_problems() -> list[dict]:
    from lmforge.align.problems import arithmetic_problems

    problems = arithmetic_problems("test")
    assert len(problems) >= 16, len(problems)
    return problems


@pytest.fixture(scope="session")
def trained_model_dir(base_model_dir, heldout_problems, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny model trained (full batch, AdamW, prompt-masked NLL) on the first TAUGHT problems."""
    import torch

    from lmforge.align.generate import load_policy
    from lmforge.align.problems import arithmetic_chats
    from lmforge.train.loop import copy_tokenizer_files
    from lmforge.train.sft import collate, tokenize_conversation

    torch.manual_seed(0)
    with one_torch_thread():
        model, tok = load_policy(base_model_dir)
        rows = arithmetic_chats(heldout_problems[:TAUGHT])
        batch = collate([tokenize_conversation(tok, r["messages"]) for r in rows], tok.pad_token_id)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        first = None
        for _ in range(TRAIN_STEPS):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                     batch["targets"].flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
    assert loss.item() < first / 2, (first, loss.item())
    out = tmp_path_factory.mktemp("trained_model")
    model.eval().save_pretrained(out)
    copy_tokenizer_files(base_model_dir, out)
    return out


@pytest.fixture(scope="session")
def zero_adapter_dir(trained_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the trained model, untrained: PEFT starts B at 0, so it changes nothing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("zero_adapter")
    peft_model.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def reward_model_dir(trained_model_dir, tmp_path_factory) -> Path:
    """A reward model as ``lmforge reward-model`` saves one (a one-label sequence classifier on the
    trained model), with a random head: the arena's wiring is tested here, not its training
    (tests/align_dpo does that)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.train.loop import copy_tokenizer_files

    tok = AutoTokenizer.from_pretrained(trained_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(trained_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        torch.manual_seed(1)
        model.score.weight.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(out)
    copy_tokenizer_files(trained_model_dir, out)
    return out
