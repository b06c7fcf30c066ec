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
