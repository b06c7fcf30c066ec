"""Model presets and FLOPs accounting; token windows (format checks, determinism, rank sharding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.train.data import TokenWindows, open_shard
from lmforge.train.loop import TrainConfig, lr_at
from lmforge.train.model import (build_model, chinchilla_steps, chinchilla_tokens, count_params,
                                 flops_per_token, matmul_params, model_config, preset_summary)


def test_tiny_preset_is_a_small_llama():
    cfg = model_config("tiny", 1024)
    model = build_model(cfg)
    n = count_params(model)
    assert 0.5e6 < n < 3e6
    assert type(model).__name__ == "LlamaForCausalLM" and model.config._attn_implementation == "sdpa"
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    # Every parameter but the (tied) embedding takes part in a matmul; the head is the embedding.
    assert matmul_params(cfg) == n - 128 - 4 * 2 * 128  # minus the RMSNorm weights
    assert flops_per_token(cfg, 256) == 6 * matmul_params(cfg) + 12 * 4 * 128 * 256
    with pytest.raises(ValueError):
        model_config("huge", 1024)


def test_large_presets_have_their_nominal_sizes():
    sizes = {name: preset_summary(name, 50304)["params"] for name in ("124m", "350m", "1b")}
    assert 100e6 < sizes["124m"] < 140e6
    assert 300e6 < sizes["350m"] < 400e6
    assert 0.9e9 < sizes["1b"] < 1.3e9
    assert chinchilla_tokens(124_000_000) == 2_480_000_000
    assert chinchilla_steps(1000, 300) == 67


def test_schedules():
    cos = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(99, cos) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(55, cos) == pytest.approx(0.55)
    wsd = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert [lr_at(s, wsd) for s in (20, 79)] == [1.0, 1.0]
    assert lr_at(90, wsd) == pytest.approx(0.5) and lr_at(100, wsd) == 0.0


def test_windows_are_deterministic_and_sharded(shards_dir):
    w = TokenWindows(shards_dir, "train", seq_len=32, seed=5)
    tokens, header = open_shard(shards_dir, "train")
    b = w.batch(step=3, micro=1, micro_batch=4, grad_accum=2)
    assert b["input_ids"].shape == (4, 32) and torch.equal(b["input_ids"][:, 1:], b["targets"][:, :-1])
    # The windows are real slices of the shard.
    start = int(w.step_offsets(3, 8)[4])
    assert b["input_ids"][0].tolist() == tokens[start:start + 32].tolist()
    # Same (seed, step) -> same batch; another step or seed -> another.
    assert torch.equal(b["input_ids"], TokenWindows(shards_dir, "train", 32, seed=5).batch(3, 1, 4, 2)["input_ids"])
    assert not torch.equal(b["input_ids"], w.batch(4, 1, 4, 2)["input_ids"])
    assert not torch.equal(b["input_ids"], TokenWindows(shards_dir, "train", 32, seed=6).batch(3, 1, 4, 2)["input_ids"])
    # Two ranks x 1 micro-batch read exactly what one process x 2 micro-batches reads.
    one = torch.cat([w.batch(7, m, 4, 2)["input_ids"] for m in range(2)])
    two = torch.cat([w.batch(7, 0, 4, 1, rank=r, world_size=2)["input_ids"] for r in range(2)])
    assert torch.equal(one, two)
    # Eval batches: fixed, and split across ranks without overlap.
    ev = TokenWindows(shards_dir, "val", 32)
    all_b = list(ev.eval_batches(4, 2))
    r0, r1 = list(ev.eval_batches(4, 2, 0, 2)), list(ev.eval_batches(4, 2, 1, 2))
    assert len(all_b) == 4 and len(r0) == len(r1) == 2
    assert torch.equal(torch.cat([all_b[0]["input_ids"], all_b[2]["input_ids"]]),
                       torch.cat([x["input_ids"] for x in r0]))


def test_bad_shards_are_rejected(tmp_path, shards_dir):
    with pytest.raises(LmforgeError, match="no token shard header"):
        TokenWindows(tmp_path, "train", 32)
    (tmp_path / "train.json").write_text(json.dumps({"dtype": "uint16", "num_tokens": 100, "vocab_size": 10,
                                                     "eos_id": 0, "num_documents": 1}))
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(LmforgeError, match="does not match header"):
        TokenWindows(tmp_path, "train", 32)
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(LmforgeError, match="fewer than one window"):
        TokenWindows(tmp_path, "train", 128)
    (tmp_path / "train.json").write_text(json.dumps({"dtype": "int8", "num_tokens": 100, "vocab_size": 10, "eos_id": 0}))
    with pytest.raises(LmforgeError, match="dtype"):
        TokenWindows(tmp_path, "train", 32)


# --------------------------------------------------------------------------- a list of day shards

def _day_list(shards_dir, root, cuts: list[int]):
    """``shards_dir``'s train and val tokens cut into day shard sets at ``cuts``, listed in a
    ``shards.json`` the way ``tokenize_days`` writes it (the day sets outside the list's dir)."""
    listing, days = root / "version" / "shards", root / "days"
    listing.mkdir(parents=True)
    pieces = {s: np.split(np.asarray(open_shard(shards_dir, s)[0]), cuts) for s in ("train", "val")}
    _, header = open_shard(shards_dir, "train")
    entries = []
    for i in range(len(cuts) + 1):
        d = days / f"2026-01-0{i + 1}" / "key"
        d.mkdir(parents=True)
        for split in ("train", "val"):
            pieces[split][i].astype(np.uint16).tofile(d / f"{split}.bin")
            (d / f"{split}.json").write_text(json.dumps({**header, "num_tokens": int(pieces[split][i].size)}))
        entries.append({"day": f"2026-01-0{i + 1}", "dir": f"../../days/2026-01-0{i + 1}/key"})
    (listing / "shards.json").write_text(json.dumps({"format": "lmforge-day-shards/1", "days": entries}))
    for split in ("train", "val"):  # the list's own headers, as tokenize_days writes them
        (listing / f"{split}.json").write_text(json.dumps(
            {**header, "num_tokens": sum(int(p.size) for p in pieces[split]), "shards": "shards.json"}))
    return listing


def test_a_list_of_day_shards_reads_as_their_concatenation(shards_dir, tmp_path):
    from lmforge.train.data import check_vocabulary, max_token_id, read_header, shard_files

    listing = _day_list(shards_dir, tmp_path, [1000, 1000, 5000])  # an empty day among them
    one, _ = open_shard(shards_dir, "train")
    many, header = open_shard(listing, "train")
    assert len(many) == len(one) and header["num_tokens"] == len(one) == read_header(listing, "train")["num_tokens"]
    for a, b in [(0, 10), (990, 1010), (995, 5005), (4999, 5001), (0, len(one)), (len(one) - 3, len(one) + 5)]:
        assert many[a:b].tolist() == one[a:b].tolist()
    w1, wn = TokenWindows(shards_dir, "train", 32, seed=2), TokenWindows(listing, "train", 32, seed=2)
    for step in range(5):
        assert torch.equal(w1.batch(step, 0, 8, 1)["input_ids"], wn.batch(step, 0, 8, 1)["input_ids"])
    check_vocabulary(listing, 1024)
    assert max_token_id(listing, "train") == int(one.max()) == max_token_id(shards_dir, "train")
    with pytest.raises(LmforgeError, match="vocab_size 1024 but the tokenizer has 1000"):
        check_vocabulary(listing, 1000)
    assert len(shard_files(listing)) == 1 + 4 * 4 and all(f.is_file() for f in shard_files(listing))
    # A damaged list, or one whose day shard is cut short, is one line.
    day3 = tmp_path / "days" / "2026-01-03" / "key" / "train.bin"
    day3.write_bytes(day3.read_bytes()[:-2])
    with pytest.raises(LmforgeError, match="does not match header"):
        TokenWindows(listing, "train", 32)
    (listing / "shards.json").write_text("{}")
    with pytest.raises(LmforgeError, match="not a token shard list"):
        TokenWindows(listing, "train", 32)


def test_pretraining_on_a_list_of_day_shards_equals_one_shard(shards_dir, tokenizer_dir, tmp_path):
    from lmforge.train.pretrain import PretrainConfig, pretrain

    listing = _day_list(shards_dir, tmp_path, [20_000, 40_000])
    summaries = []
    for name, data in (("one", shards_dir), ("days", listing)):
        out = tmp_path / f"run-{name}"
        pretrain(PretrainConfig(data_dir=str(data), tokenizer_dir=str(tokenizer_dir), out_dir=str(out),
                                seq_len=32, micro_batch=4, max_steps=4, warmup_steps=1, lr=3e-3,
                                eval_batches=1, eval_every=0, log_every=1, device="cpu"))
        summaries.append(json.loads((out / "summary.json").read_text()))
    assert summaries[0]["final_loss"] == summaries[1]["final_loss"]
    assert summaries[0]["val_loss"] == summaries[1]["val_loss"]
