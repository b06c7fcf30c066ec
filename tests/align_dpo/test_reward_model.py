"""The Bradley-Terry reward model: it learns a separable preference to a high held-out accuracy
from a first loss of log 2, and the saved directory is a plain Hugging Face sequence classifier
whose scores ``load_reward_model`` and transformers' own forward agree on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.align.preferences import write_pairs
from lmforge.align.reward_model import (BradleyTerryObjective, RewardModelConfig, load_reward_model,
                                        train_reward_model)
from lmforge.errors import LmforgeError

from .test_dpo import hedged_pairs


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, base_model_dir):
    tmp = tmp_path_factory.mktemp("rm")
    write_pairs(hedged_pairs(96, seed=1), tmp / "pairs.jsonl")
    cfg = RewardModelConfig(base=str(base_model_dir), data=str(tmp / "pairs.jsonl"), out_dir=str(tmp / "run"),
                            max_steps=30, micro_batch=8, lr=1e-3, warmup_steps=3, val_fraction=0.25,
                            log_every=5, eval_batches=2, seed=0)
    return train_reward_model(cfg), tmp / "run"


def test_reward_model_learns_a_held_out_preference(reward_run):
    stats, run = reward_run
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-6)  # the head starts at zero
    assert stats["val_accuracy_before"] == 0.5 and stats["val_reward_margin_before"] == 0.0
    assert stats["val_pairs"] == 24
    assert stats["val_accuracy_after"] >= 0.9, stats
    assert stats["val_reward_margin_after"] > 0.5 and stats["val_loss_after"] < 0.5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_accuracy_after"] == stats["val_accuracy_after"]
    assert (run / "loss_curve.png").exists() and (run / "model" / "model.safetensors").exists()
    assert not list((run / "model").glob("*.bin")) and not list((run / "model").glob("*.pt"))


def test_saved_reward_model_scores_like_transformers_reads_it(reward_run, base_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.align.preferences import render_prompt

    _, run = reward_run
    rm = load_reward_model(run / "model")
    prompts = ["12+7=", "30-4=", "6*3="]
    good, hedged = ["19", "26", "18"], ["I think 20", "I think 25", "I think 17"]
    scores_good, scores_hedged = rm.score(prompts, good), rm.score(prompts, hedged)
    assert all(g > h for g, h in zip(scores_good, scores_hedged))
    # transformers' own forward (last non-pad token by pad_token_id) on the same text, one at a time
    tok = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    for prompt, reply, ours in zip(prompts, good, scores_good):
        ids = tok(render_prompt(tok, prompt) + reply + "<|im_end|>", add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            theirs = float(model(**ids).logits[0, 0])
        assert ours == pytest.approx(theirs, abs=1e-4)
    with pytest.raises(LmforgeError, match="not a reward model|no reward model"):
        load_reward_model(base_model_dir)


def test_bradley_terry_loss_is_the_mean_negative_log_sigmoid_of_the_margin(base_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.align.preferences import collate_pairs, tokenize_pairs

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base_model_dir, num_labels=1).eval()
    model.config.pad_token_id = tok.pad_token_id
    examples, _ = tokenize_pairs(tok, hedged_pairs(4), 64, 32)
    loss, stats = BradleyTerryObjective().loss(model, collate_pairs(examples, tok.pad_token_id))
    expected, margins = 0.0, []
    with torch.no_grad():
        for ex in examples:  # each sequence alone, read by transformers' own forward
            r = [float(model(input_ids=torch.tensor([ex["prompt_ids"] + ex[f"{s}_ids"]])).logits[0, 0])
                 for s in ("chosen", "rejected")]
            margins.append(r[0] - r[1])
            expected += math.log1p(math.exp(-(r[0] - r[1])))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(stats["reward_margin"]) == pytest.approx(sum(margins), abs=1e-5)
