"""DPO: the pairs' tokens, the loss against an independent computation (one unpadded forward per
sequence, log-softmax by hand), and whole runs on full weights and through a LoRA adapter that
learn a held-out preference from the first step's loss of log 2."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from lmforge.align.dpo import DPOConfig, DPOObjective, dpo, precompute_reference
from lmforge.align.preferences import collate_pairs, read_pairs, tokenize_pair, tokenize_pairs, write_pairs
from lmforge.errors import InputError
from lmforge.train.distributed import Dist

from .conftest import arithmetic_pairs


def hedged_pairs(n: int, seed: int = 0) -> list[dict]:
    """A preference a tiny model can learn and carry to held-out prompts: the plain result is
    chosen, a hedged wrong one ("I think 26") rejected."""
    rng = random.Random(seed)
    return [{**p, "rejected": f"I think {int(p['chosen']) + rng.choice([-2, -1, 1, 2])}"}
            for p in arithmetic_pairs(n, seed)]


@pytest.fixture(scope="module")
def hedged_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("hedged") / "pairs.jsonl"
    write_pairs(hedged_pairs(64), path)
    return path


def test_read_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "2+2=", "chosen": "4", "rejected": "5"}) + "\n"
                    + json.dumps({"prompt": "3+3=", "chosen": "6"}) + "\n")
    with pytest.raises(InputError, match=r"pairs.jsonl:2: .*'rejected'"):
        read_pairs(path)
    path.write_text(json.dumps({"prompt": "2+2=", "chosen": "4", "rejected": "4"}) + "\n")
    with pytest.raises(InputError, match="same text"):
        read_pairs(path)


def test_a_pair_is_the_rendered_prompt_then_each_reply_and_its_end_of_turn(base_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    ex, cut = tokenize_pair(tok, {"prompt": "48/2=", "chosen": "24", "rejected": "I think 25"}, 64, 32)
    assert not cut
    assert tok.decode(ex["prompt_ids"]) == "<|im_start|>user\n48/2=<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex["chosen_ids"]) == "24<|im_end|>" and tok.decode(ex["rejected_ids"]) == "I think 25<|im_end|>"
    batch = collate_pairs([ex, ex], tok.pad_token_id)
    # rows: chosen, chosen, rejected, rejected; the mask covers exactly the replies' tokens
    assert batch["input_ids"].shape[0] == 4
    assert batch["completion_mask"][0].sum() == len(ex["chosen_ids"])
    assert batch["completion_mask"][2].sum() == len(ex["rejected_ids"])
    p = len(ex["prompt_ids"])
    assert batch["completion_mask"][:, :p].sum() == 0
    # a long prompt keeps its end (the generation prompt); a long reply is cut with its prompt
    ex, cut = tokenize_pair(tok, {"prompt": "1+1= " * 40, "chosen": "2 " * 40, "rejected": "3"}, 24, 12)
    assert cut and len(ex["prompt_ids"]) == 12 and tok.decode(ex["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert len(ex["prompt_ids"]) + len(ex["chosen_ids"]) == 24


def _independent_logp(model, prompt_ids: list[int], reply_ids: list[int]) -> torch.Tensor:
    """Summed log-prob of the reply: one unpadded forward of this sequence alone, every logit."""
    ids = torch.tensor([prompt_ids + reply_ids])
    logits = model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    targets = ids[0, 1:]
    positions = range(len(prompt_ids) - 1, ids.size(1) - 1)  # position j predicts token j + 1
    return sum(logp[j, targets[j]] for j in positions)


def test_dpo_loss_matches_an_independent_computation(base_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()
    policy = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a policy that has moved away from the reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    pairs = hedged_pairs(5) + [{"prompt": "What is 7 times 6? Answer with the number.", "chosen": "42",
                                "rejected": "I think it is 41, or maybe 43"}]
    examples, _ = tokenize_pairs(tok, pairs, 128, 64)
    beta = 0.3

    precompute_reference(reference, examples, DPOConfig(micro_batch=4, precision="fp32"),
                         Dist(0, 1, 0, torch.device("cpu")), tok.pad_token_id)
    losses, margins = [], []
    with torch.no_grad():
        for ex in examples:
            ref = {s: _independent_logp(reference, ex["prompt_ids"], ex[f"{s}_ids"]) for s in ("chosen", "rejected")}
            assert ex["ref_chosen_logp"] == pytest.approx(float(ref["chosen"]), abs=1e-4)
            assert ex["ref_rejected_logp"] == pytest.approx(float(ref["rejected"]), abs=1e-4)
            pol = {s: _independent_logp(policy, ex["prompt_ids"], ex[f"{s}_ids"]) for s in ("chosen", "rejected")}
            margin = beta * ((pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"]))
            margins.append(float(margin))
            losses.append(math.log1p(math.exp(-float(margin))))  # -log sigmoid(margin)
    assert max(abs(m) for m in margins) > 0.05, "the perturbed policy should differ from the reference"

    objective = DPOObjective(beta)
    batch = collate_pairs(examples, tok.pad_token_id)  # padded: replies of different lengths
    assert objective.count(batch) == len(examples)
    loss, stats = objective.loss(policy, batch)
    assert float(loss.detach()) / len(examples) == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert float(stats["reward_margin"]) / len(examples) == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    assert float(stats["accuracy"]) == sum(m > 0 for m in margins)

    # RPO: plus the chosen reply's mean per-token NLL, weighted
    rpo_loss, rpo_stats = DPOObjective(beta, sft_weight=0.5).loss(policy, batch)
    with torch.no_grad():
        nll = sum(-float(_independent_logp(policy, ex["prompt_ids"], ex["chosen_ids"])) / len(ex["chosen_ids"])
                  for ex in examples)
    assert float(rpo_loss.detach()) == pytest.approx(float(loss.detach()) + 0.5 * nll, rel=1e-5)
    assert float(rpo_stats["chosen_nll"]) == pytest.approx(nll, rel=1e-5)

    # and the gradient: the same loss written independently, differentiated by autograd
    policy.zero_grad()
    loss.backward()
    ours = policy.get_input_embeddings().weight.grad.clone()
    policy.zero_grad()
    independent = 0
    for ex in examples:
        c = _independent_logp(policy, ex["prompt_ids"], ex["chosen_ids"])
        r = _independent_logp(policy, ex["prompt_ids"], ex["rejected_ids"])
        margin = beta * ((c - ex["ref_chosen_logp"]) - (r - ex["ref_rejected_logp"]))
        independent = independent - torch.nn.functional.logsigmoid(margin)
    independent.backward()
    theirs = policy.get_input_embeddings().weight.grad
    assert torch.allclose(ours, theirs.to(ours.dtype), rtol=1e-3, atol=1e-6)


def _run(tmp_path, base, data, **kw):
    cfg = DPOConfig(base=str(base), data=str(data), out_dir=str(tmp_path / "run"), micro_batch=8,
                    val_fraction=0.25, warmup_steps=0, log_every=1, eval_batches=2, seed=0, **kw)
    return dpo(cfg), tmp_path / "run"


def test_dpo_full_weights_learns_a_held_out_preference(tmp_path, base_model_dir, hedged_jsonl):
    from transformers import AutoModelForCausalLM

    stats, run = _run(tmp_path, base_model_dir, hedged_jsonl, max_steps=24, lr=2e-3, beta=0.1)
    # The policy starts as the reference: the first step's loss is log 2, the held-out margin 0.
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert stats["val_loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    assert stats["val_reward_margin_before"] == 0.0 and stats["val_accuracy_before"] == 0.5
    assert stats["val_pairs"] == 16
    # After training the implicit reward ranks the held-out pairs, and the loss fell.
    assert stats["val_accuracy_after"] >= 0.9, stats
    assert stats["val_reward_margin_after"] > 0.1
    assert stats["val_loss_after"] < 0.6 and stats["final_loss"] < 0.6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_accuracy_after"] == stats["val_accuracy_after"]
    assert (run / "loss_curve.png").stat().st_size > 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "loss" in m]
    assert len(train_lines) == 24 and {"accuracy", "reward_margin", "chosen_reward"} <= set(train_lines[0])
    assert any("val_accuracy" in m for m in lines)
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert sum(p.numel() for p in model.parameters()) == stats["params"]
    assert (run / "model" / "tokenizer.json").exists()


def test_dpo_lora_trains_an_adapter_against_the_disabled_adapter(tmp_path, base_model_dir, hedged_jsonl):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stats, run = _run(tmp_path, base_model_dir, hedged_jsonl, max_steps=24, lr=1e-2, beta=0.1, lora=True, rank=8)
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert stats["trainable_params"] < 0.2 * stats["params"]
    assert stats["val_accuracy_after"] >= 0.9, stats
    assert stats["val_reward_margin_after"] > 0.05
    assert (run / "adapter" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_dpo_command_reports_a_bad_input_in_one_line(tmp_path, base_model_dir, capsys):
    from lmforge.align.dpo import main

    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "1+1=", "chosen": "2"}\n')
    code = main(["--base", str(base_model_dir), "--data", str(bad), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "pairs.jsonl:1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_dpo_on_the_deepspeed_engine_steps_like_the_plain_one(tmp_path, base_model_dir, hedged_jsonl):
    """The stage runs on the training engine: DeepSpeed (ZeRO-1, CPU) gives the plain engine's
    per-step DPO losses."""

    def losses(run):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [m["loss"] for m in lines if "loss" in m]

    common = dict(max_steps=4, lr=2e-3, beta=0.1, precision="fp32", cpu_threads=1)
    plain, plain_run = _run(tmp_path / "plain", base_model_dir, hedged_jsonl, **common)
    ds, ds_run = _run(tmp_path / "ds", base_model_dir, hedged_jsonl, engine="deepspeed", zero_stage=1, **common)
    assert plain["engine"] == "plain" and ds["engine"] == "deepspeed"
    assert losses(ds_run) == pytest.approx(losses(plain_run), rel=1e-5)
    assert ds["val_accuracy_after"] == pytest.approx(plain["val_accuracy_after"])


@pytest.mark.slow
def test_dpo_on_two_ranks_shares_the_reference_pass(tmp_path, base_model_dir, hedged_jsonl):
    """Two processes (DeepSpeed over gloo) each compute half of the reference log-probs and
    exchange them: every pair has its reference, so the first loss is log 2 on both ranks' pairs."""
    from lmforge.align.dpo import main

    out = tmp_path / "run"
    code = main(["--base", str(base_model_dir), "--data", str(hedged_jsonl), "--out", str(out), "--nproc", "2",
                 "--max-steps", "3", "--micro-batch", "4", "--val-fraction", "0.25", "--lr", "2e-3",
                 "--warmup-steps", "0", "--log-every", "1", "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["engine"] == "deepspeed"
    assert summary["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert summary["val_loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    assert summary["steps"] == 3 and (out / "model" / "config.json").exists()
