"""SFT: the prompt mask is exact, and the loss the loop reports is the mean NLL over exactly the
assistant tokens, computed independently with transformers' own loss."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.train.sft import SFTConfig, build_examples, main, sft, tokenize_conversation

from .conftest import gsm8k_chats


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def trained_text(tok, ex) -> str:
    return tok.decode([t for t in ex["labels"] if t != -100])


def test_mask_covers_exactly_the_assistant_replies(tok):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5."},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "5 x 4 = 20.\n#### 20"},
    ]
    ex = tokenize_conversation(tok, messages)
    assert len(ex["input_ids"]) == len(ex["labels"])
    assert ex["input_ids"] == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert trained_text(tok, ex) == "2 + 3 = 5.<|im_end|>5 x 4 = 20.\n#### 20<|im_end|>"
    # Every trained position carries its own input id, and the masked text is all the rest.
    assert all(l in (-100, i) for i, l in zip(ex["input_ids"], ex["labels"]))
    masked = tok.decode([i for i, l in zip(ex["input_ids"], ex["labels"]) if l == -100])
    assert masked == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                      "<|im_start|>assistant\n\n<|im_start|>user\nAnd times 4?<|im_end|>\n<|im_start|>assistant\n\n")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for l in ex["labels"] if l == im_end) == 2


def test_real_gsm8k_conversations_and_truncation(tok):
    rows = gsm8k_chats(20)
    for row in rows:
        ex = tokenize_conversation(tok, row["messages"])
        assert trained_text(tok, ex) == row["messages"][-1]["content"] + "<|im_end|>"
    lengths = [len(tokenize_conversation(tok, r["messages"])["input_ids"]) for r in rows]
    prompt_len = len(tok(tok.apply_chat_template(rows[0]["messages"][:2], tokenize=False,
                                                 add_generation_prompt=True), add_special_tokens=False)["input_ids"])
    # Truncating inside the first prompt leaves nothing to train: that conversation is dropped.
    examples, stats = build_examples(tok, [r["messages"] for r in rows], max_len=prompt_len)
    assert stats.truncated == sum(1 for n in lengths if n > prompt_len)
    assert stats.dropped_no_target >= 1 and stats.kept + stats.dropped_no_target == 20
    assert all(len(e["input_ids"]) <= prompt_len for e in examples)
    with pytest.raises(ValueError):
        tokenize_conversation(tok, [{"role": "robot", "content": "hi"}])


@pytest.mark.parametrize("loss_chunk", [0, 64])
def test_sft_loss_is_mean_nll_over_assistant_tokens(loss_chunk, base_model_dir, tmp_path, tok):
    from transformers import AutoModelForCausalLM

    rows = gsm8k_chats(4, start=100)
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # One step over all four conversations (2 micro-batches of 2), so step 1's loss is the base
    # model's loss on the whole file, whatever the order. With loss_chunk the packed rows' loss
    # goes through the chunked output projection + cross-entropy and must be the same.
    cfg = SFTConfig(base=str(base_model_dir), data=str(data), out_dir=str(tmp_path / "run"), max_steps=1,
                    micro_batch=2, grad_accum=2, val_fraction=0.0, max_len=512, device="cpu", log_every=1,
                    loss_chunk=loss_chunk)
    stats = sft(cfg)

    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    nll, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ex = tokenize_conversation(tok, r["messages"])
            n = sum(1 for l in ex["labels"][1:] if l != -100)
            out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            nll += out.loss.item() * n
            count += n
    assert stats["first_loss"] == pytest.approx(nll / count, abs=1e-5)
    assert (tmp_path / "run" / "model" / "config.json").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data_kept"] == 4 and summary["steps"] == 1


def test_sft_lowers_loss_on_gsm8k(base_model_dir, chat_jsonl, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rc = main(["--base", str(base_model_dir), "--data", str(chat_jsonl), "--out", str(tmp_path / "run"),
               "--max-steps", "12", "--micro-batch", "4", "--max-len", "256", "--lr", "3e-3", "--device", "cpu"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] - 0.5
    assert summary["val_loss"] is not None and summary["val_conversations"] == 3
    assert summary["engine"] == "plain"
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "model").chat_template


def test_sft_cli_bad_input(tmp_path, base_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no messages"}\n')
    assert main(["--base", str(base_model_dir), "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "messages" in capsys.readouterr().err
