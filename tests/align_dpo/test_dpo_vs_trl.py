"""lmforge's DPO against TRL's DPOTrainer (the real one, offline) on the same tiny model, the same
pairs in the same order and the same optimiser settings (AdamW 0.9/0.95, constant lr, no warmup,
no weight decay, clipping at 1.0, fp32, one thread, no dropout): TRL tokenizes the pairs into the
same ids as lmforge, the first step's loss is log 2 for both, and the per-step losses agree to
1e-5 relative (measured: ~3e-7, float32 rounding: TRL computes its reference in every step,
lmforge once before training)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from lmforge.align.preferences import read_pairs, tokenize_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from dpo_vs_trl import run_lmforge, run_trl, step_order  # noqa: E402

pytest.importorskip("trl")

STEPS, MICRO_BATCH = 5, 4
TOLERANCE = 1e-5  # relative, per step


def _compare(tmp_path, base_model_dir, pairs_jsonl, **kw):
    from transformers import AutoTokenizer

    kw = dict(steps=STEPS, micro_batch=MICRO_BATCH, beta=0.1, lr=2e-3, seed=0, threads=1, **kw)
    ours = run_lmforge(base_model_dir, pairs_jsonl, tmp_path / "lmforge", **kw)
    pairs = read_pairs(pairs_jsonl)
    in_order = [pairs[i] for step in step_order(len(pairs), MICRO_BATCH, STEPS, 0) for i in step]
    theirs = run_trl(base_model_dir, in_order, tmp_path / "trl", **kw)

    # The same token ids went in: TRL's own tokenization of the rendered prompt and each reply + EOS
    # (= <|im_end|>) against lmforge's.
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    examples, _ = tokenize_pairs(tok, in_order, 256, 256)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert theirs["ids"][key] == [e[key] for e in examples], key

    assert len(ours["losses"]) == len(theirs["losses"]) == STEPS
    assert ours["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert theirs["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
    for step, (a, b) in enumerate(zip(ours["losses"], theirs["losses"]), 1):
        assert a == pytest.approx(b, rel=TOLERANCE), f"step {step}: lmforge {a} TRL {b}"
    # the weights moved: the losses after the first step are not log 2 any more
    assert max(abs(x - math.log(2)) for x in ours["losses"][1:]) > 1e-3
    return ours, theirs


def test_dpo_losses_match_trl_full_weights(tmp_path, base_model_dir, pairs_jsonl):
    _compare(tmp_path, base_model_dir, pairs_jsonl)


def test_dpo_losses_match_trl_lora(tmp_path, base_model_dir, pairs_jsonl):
    ours, theirs = _compare(tmp_path, base_model_dir, pairs_jsonl, lora=True, rank=4)
    assert ours["trainable_params"] == theirs["trainable_params"]
