"""Sequence packing: a packed row is exactly its conversations run alone (logits and loss), the
first-fit packer is deterministic and respects capacity, and packed SFT trains."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.train.loop import forward_nll, input_tokens
from lmforge.train.packing import block_causal_mask, collate_packed, first_fit, pack_batch, pack_examples
from lmforge.train.sft import SFTConfig, collate, main, sft, tokenize_conversation

from .conftest import gsm8k_chats


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def model(base_model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    assert m.config._attn_implementation == "sdpa"
    return m.eval()


@pytest.fixture(scope="module")
def examples(tok):
    return [tokenize_conversation(tok, r["messages"]) for r in gsm8k_chats(7, start=300)]


def test_first_fit_is_first_fit():
    # 6 goes into row 0 (room 10), 5 opens row 1, 4 fits row 0 (room 4), 3 fits row 1, 2 fits row 1.
    assert first_fit([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    assert first_fit([10, 1], 10) == [[0], [1]]
    assert first_fit([], 4) == []
    with pytest.raises(ValueError, match="longer than a packed row"):
        first_fit([3, 11], 10)


def test_pack_examples_respects_capacity_and_order(examples):
    lengths = [len(e["input_ids"]) - 1 for e in examples]
    cap = max(lengths) + 40
    order = [6, 2, 0, 5, 1, 4, 3]
    rows = pack_examples(examples, cap, order)
    assert sorted(i for r in rows for i in r) == list(range(len(examples)))
    assert all(sum(lengths[i] for i in r) <= cap for r in rows)
    assert rows == pack_examples(examples, cap, order)  # deterministic
    assert rows[0][0] == 6                              # the order decides the first row
    # Fewer rows than conversations: real GSM8K conversations do share rows.
    assert len(pack_examples(examples, 2 * max(lengths), order)) < len(examples)


def test_block_causal_mask():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = block_causal_mask(seg)[0, 0]
    assert m.shape == (6, 6) and m.dtype == torch.bool
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_packed_logits_equal_each_conversation_alone(model, examples, tok):
    # Two rows of unequal fill (the shorter is padded): 3 conversations + 4 conversations.
    rows = [examples[:3], examples[3:]]
    batch = collate_packed(rows, tok.pad_token_id)
    assert batch["attention_mask"].shape == (2, 1, batch["input_ids"].size(1), batch["input_ids"].size(1))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        # Without the mask and the restarting positions the same row gives other logits: the
        # comparison below can fail.
        leaky = model(input_ids=batch["input_ids"]).logits
    for b, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e["input_ids"]) - 1
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([e["input_ids"][:-1]])).logits[0]
            torch.testing.assert_close(packed[b, at:at + n], alone, atol=1e-5, rtol=1e-5)
            if at > 0:
                assert not torch.allclose(leaky[b, at:at + n], alone, atol=1e-3)
            assert batch["position_ids"][b, at:at + n].tolist() == list(range(n))
            at += n
        assert (batch["targets"][b, at:] == -100).all()  # padding is never a target
    assert input_tokens(batch) == sum(len(e["input_ids"]) - 1 for e in examples)


def test_packed_loss_equals_unpacked_token_weighted_mean(model, examples, tok):
    batch = collate_packed([examples[:4], examples[4:]], tok.pad_token_id)
    with torch.no_grad():
        nll = forward_nll(model, batch).item()
        n = int((batch["targets"] != -100).sum())
        # Reference: each conversation alone through transformers' own shifted loss.
        ref_nll, ref_n = 0.0, 0
        for e in examples:
            k = sum(1 for t in e["labels"][1:] if t != -100)
            out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
            ref_nll += out.loss.item() * k
            ref_n += k
        padded = collate(examples, tok.pad_token_id)
        padded_nll = forward_nll(model, padded).item()
    assert n == ref_n == int((padded["targets"] != -100).sum())
    assert nll / n == pytest.approx(ref_nll / ref_n, abs=1e-5)
    assert nll == pytest.approx(padded_nll, rel=1e-5)


def test_pack_batch_holds_the_same_conversations_as_collate(model, examples, tok):
    cap = max(len(e["input_ids"]) for e in examples)
    batch = pack_batch(examples, cap, tok.pad_token_id)
    padded = collate(examples, tok.pad_token_id)
    assert batch["input_ids"].size(0) < len(examples)  # real conversations share rows
    assert batch["input_ids"].numel() < padded["input_ids"].numel()
    # The same multiset of (input, target) tokens, laid out differently.
    trained = sorted(batch["targets"][batch["targets"] != -100].tolist())
    assert trained == sorted(padded["targets"][padded["targets"] != -100].tolist())
    again = pack_batch(examples, cap, tok.pad_token_id)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # deterministic
    # Longest first: the first row starts with the longest conversation.
    longest = max(examples, key=lambda e: len(e["input_ids"]))
    n = len(longest["input_ids"]) - 1
    assert batch["input_ids"][0, :n].tolist() == longest["input_ids"][:-1]
    with pytest.raises(ValueError):
        pack_batch(examples, n - 1, tok.pad_token_id)


def test_sft_first_loss_is_the_same_packed_or_padded(base_model_dir, tmp_path, tok):
    rows = gsm8k_chats(6, start=500)
    data = tmp_path / "six.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for packing in (True, False):
        cfg = SFTConfig(base=str(base_model_dir), data=str(data), out_dir=str(tmp_path / f"run_{packing}"),
                        max_steps=1, micro_batch=3, grad_accum=2, val_fraction=0.0, max_len=512,
                        device="cpu", packing=packing)
        stats = sft(cfg)
        losses[packing] = stats["first_loss"]
        if packing:  # every conversation's tokens but its last are inputs, and no padding counts
            assert stats["tokens"] == sum(len(tokenize_conversation(tok, r["messages"])["input_ids"]) - 1
                                          for r in rows)
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_sft_with_packing_lowers_loss(base_model_dir, chat_jsonl, tmp_path):
    rc = main(["--base", str(base_model_dir), "--data", str(chat_jsonl), "--out", str(tmp_path / "run"),
               "--max-steps", "12", "--micro-batch", "2", "--max-len", "512", "--lr", "3e-3",
               "--device", "cpu", "--packing"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] - 0.5
    assert summary["val_loss"] is not None
