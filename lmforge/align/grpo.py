"""GRPO with verifiable rewards (Shao et al. 2024, DeepSeekMath): no value model; each prompt's
advantage baseline is its own group of samples.

    lmforge grpo --base SFT_MODEL_DIR --out RUN_DIR [--problems problems.jsonl] [--lora true]

Each optimizer step, for every prompt of the micro-batch, ``group_size`` completions are sampled
from the *current* policy (batched, KV cache: :mod:`lmforge.align.generate`) and scored by the
problem's reward (:mod:`lmforge.align.rewards`). A completion's advantage is its reward
normalised within its group, ``(r - mean) / (std + eps)``; every one of its tokens gets it. The
objective per completion token is the clipped surrogate of PPO minus a KL penalty to the
reference policy (the starting model, or for LoRA the base with the adapter switched off),
estimated with the unbiased k3 estimator ``exp(ref - logp) - (ref - logp) - 1``::

    loss_t = -( min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps) * A) - beta * KL_t )

``loss_norm="sequence"`` (the paper's) averages over each completion's tokens, then over
completions; ``"token"`` averages over all completion tokens of the step (longer completions
weigh more; DAPO / Dr. GRPO). One policy update per sampling: every micro-batch of a step is
sampled before the step, so the ratio is 1 at the step's forward (its gradient is not 0) unless
dropout is on; the clipped form is kept so that reusing samples for more updates stays correct.

The run uses the shared training loop (``lmforge.train.loop.train``: plain or DeepSpeed engine,
resume, ``metrics.jsonl``, TensorBoard, telemetry, loss curve; the step's stats ``reward``,
``kl``, ``clip_fraction`` and ``ratio`` are logged beside the loss). Rank 0 scores held-out
problems and a fixed set of training problems before and after training, greedy and sampled
(``heldout_samples`` completions each), and writes them into ``summary.json``, with each step's
mean sampled reward (``step_reward_curve``, rank 0's samples).

Problems: a JSONL of :mod:`lmforge.align.problems` records (``--problems``), or by default the
small arithmetic problems of GSM8K's calculator annotations (train split; held-out problems come
from the test split, never a train prompt). Sampling uses the models as they are (no ZeRO-3:
generation needs whole parameters on each rank).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmforge.errors import LmforgeError
from lmforge.train.config import LLAMA_PROJECTIONS, TrainConfig


class GRPOConfig(TrainConfig):
    """GRPO settings; defaults are the ``tiny`` CPU demo on arithmetic problems."""

    base: str = Field("", description="HF model directory (with tokenizer files) to start from; "
                      "also the reference policy of the KL penalty")
    out_dir: str = Field("", description="run directory (resumes if it holds a checkpoint)")
    problems: str = Field("", description="problems JSONL (id, prompt, answer, reward); empty: the "
                          "arithmetic problems of GSM8K's calculator annotations, train split")
    heldout_problems: str = Field("", description="held-out problems JSONL scored before and after "
                                  "training; empty: arithmetic problems of GSM8K's test split that "
                                  "are not train prompts")
    heldout_count: int = Field(200, ge=0, description="held-out problems scored before and after "
                               "training (0: none)")
    heldout_samples: int = Field(8, ge=0, description="completions sampled per held-out problem (at "
                                 "temperature) for the sampled mean reward, besides the greedy one "
                                 "(0: greedy only)")
    train_eval_count: int = Field(64, ge=0, description="training problems also scored before and "
                                  "after, the same way as the held-out ones: the reward on the task "
                                  "GRPO optimises, without the noise of each step's own prompts")
    train_problems: int | None = Field(None, ge=1, description="use at most this many training "
                                       "problems (None: all)")
    reward: str = Field("", description="reward that trains and scores every problem, a name in "
                        "lmforge.align.rewards (e.g. numeric_closeness, the dense form of "
                        "final_answer); empty: each problem's own. With it, the problems' own reward "
                        "is still reported on held-out problems (heldout_exact_*)")
    arithmetic_max_value: int = Field(20, ge=1, description="default problems: largest operand or "
                                      "result kept")
    arithmetic_ops: str = Field("+-*/", description="default problems: operations kept")
    micro_batch: int = Field(4, ge=1, description="prompts per micro-batch per process (each gives "
                             "group_size completions)")
    group_size: int = Field(8, ge=2, description="completions sampled per prompt (G)")
    max_new_tokens: int = Field(16, ge=1, description="longest completion sampled")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the group's completions")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: all)")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range: ratios outside "
                            "[1 - eps, 1 + eps] give no gradient in the direction of the advantage")
    kl_beta: float = Field(0.04, ge=0, description="weight of the KL penalty to the reference policy "
                           "(k3 estimator)")
    adv_eps: float = Field(1e-4, gt=0, description="added to the group's reward std before dividing")
    loss_norm: Literal["sequence", "token"] = Field(
        "sequence", description="sequence: mean over each completion's tokens, then over completions "
        "(the paper's); token: mean over all completion tokens of the step")
    gen_batch_size: int = Field(64, ge=1, description="sequences decoded together when sampling")
    max_steps: int = Field(30, ge=1, description="optimizer steps (one sampling each)")
    lr: float = Field(5e-4, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup up to lr")
    schedule: Literal["cosine", "wsd", "constant"] = Field("constant", description="lr after warmup")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices")
    eval_batches: int = Field(0, ge=0, description="unused by GRPO (its held-out measure is the "
                              "reward, see heldout_count)")
    log_every: int = Field(1, ge=1, description="log loss, reward, KL and clip fraction every N steps")
    lora: bool = Field(False, description="train a LoRA adapter (PEFT) instead of the full weights; "
                       "the reference policy is then the base with the adapter off")
    lora_rank: int = Field(8, ge=1, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (update = alpha/r * BA)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input (0 keeps "
                                "the ratio of a fresh sample exactly 1)")
    lora_targets: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                                    description="module names that get adapters")


# ---------------------------------------------------------------------------------------------
# the maths: advantages and the objective


def group_advantages(rewards, group_size: int, eps: float = 1e-4):
    """``(r - mean) / (std + eps)`` within each consecutive group of ``group_size`` rewards; std
    is the sample standard deviation (n - 1), as TRL computes it. A group whose rewards are all
    equal gets advantage 0 (it says nothing about which completion is better)."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    g = r.view(-1, group_size)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
    return adv.reshape(-1)


def token_logprobs(model, batch: dict):
    """Log-probability of every next token: ``[B, L-1]``, position t scoring ``input_ids[:, t+1]``."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class GRPOObjective:
    """The clipped surrogate plus ``beta`` x KL(policy || reference), for the shared loop.

    A batch holds ``input_ids``, ``attention_mask``, ``position_ids``, ``completion_mask``,
    ``old_logprobs`` and ``ref_logprobs`` (``[B, L-1]``, aligned with the next-token positions),
    ``advantages`` and ``rewards`` (``[B]``). ``count`` is completion tokens (``loss_norm``
    "token") or completions ("sequence"); ``loss`` returns the summed loss and summed stats
    (``kl``, ``clip_fraction``, ``reward``, ``ratio``), which the loop divides by the count.
    """

    name = "grpo"

    def __init__(self, clip_eps: float = 0.2, kl_beta: float = 0.04, loss_norm: str = "sequence"):
        if loss_norm not in ("sequence", "token"):
            raise ValueError(f"loss_norm must be 'sequence' or 'token', got {loss_norm!r}")
        self.clip_eps, self.kl_beta, self.loss_norm = clip_eps, kl_beta, loss_norm

    def count(self, batch: dict) -> int:
        mask = batch["completion_mask"][:, 1:]
        if self.loss_norm == "token":
            return int(mask.sum())
        return int((mask.sum(1) > 0).sum())

    def per_token(self, logp, batch: dict):
        """(loss per token, KL per token, clipped-or-not per token), all ``[B, L-1]``."""
        import torch

        adv = batch["advantages"].to(logp.dtype)[:, None]
        ratio = torch.exp(logp - batch["old_logprobs"])
        clipped = torch.clamp(ratio, 1 - self.clip_eps, 1 + self.clip_eps)
        surrogate = torch.minimum(ratio * adv, clipped * adv)
        delta = batch["ref_logprobs"] - logp
        kl = torch.exp(delta) - delta - 1  # k3: unbiased, always >= 0
        # A token is "clipped" when the clipped term is the one min() took and it differs.
        is_clipped = ((clipped * adv) < (ratio * adv)).to(logp.dtype)
        return -(surrogate - self.kl_beta * kl), kl, is_clipped, ratio

    def loss(self, model, batch: dict):
        logp = token_logprobs(model, batch)
        return self.loss_from_logprobs(logp, batch)

    def loss_from_logprobs(self, logp, batch: dict):
        mask = batch["completion_mask"][:, 1:].to(logp.dtype)
        loss_t, kl, clip, ratio = self.per_token(logp, batch)
        rewards = batch["rewards"].to(logp.dtype)
        if self.loss_norm == "token":
            def total(x):
                return (x * mask).sum()
            reward = (rewards * mask.sum(1)).sum()  # token-weighted: divided by the token count
        else:
            n = mask.sum(1)
            has = (n > 0).to(logp.dtype)

            def total(x):
                return ((x * mask).sum(1) / n.clamp(min=1) * has).sum()
            reward = (rewards * has).sum()
        return total(loss_t), {"kl": total(kl).detach(), "clip_fraction": total(clip).detach(),
                               "reward": reward.detach(), "ratio": total(ratio).detach()}


# ---------------------------------------------------------------------------------------------
# the run


def load_problems(cfg: GRPOConfig) -> tuple[list[dict], list[dict]]:
    """(train problems, held-out problems) as the config says."""
    from lmforge.align.problems import arithmetic_problems, read_problems

    if cfg.problems:
        train = read_problems(cfg.problems)
    else:
        train = arithmetic_problems("train", seed=cfg.seed, max_value=cfg.arithmetic_max_value,
                                    ops=cfg.arithmetic_ops)
    if cfg.train_problems is not None:
        train = train[:cfg.train_problems]
    if cfg.heldout_problems:
        heldout = read_problems(cfg.heldout_problems)
    elif cfg.problems:
        heldout = []  # no default held-out set for a user's own problems
    else:
        heldout = arithmetic_problems("test", seed=cfg.seed, max_value=cfg.arithmetic_max_value,
                                      ops=cfg.arithmetic_ops)
    train_prompts = {p["prompt"] for p in train}
    heldout = [p for p in heldout if p["prompt"] not in train_prompts][:cfg.heldout_count]
    if not train:
        raise LmforgeError("no training problems (check --problems or the GSM8K mirror)")
    if cfg.reward:
        from lmforge.align.rewards import get_reward

        get_reward(cfg.reward)  # an unknown name fails here, in one line
        train = [{**p, "reward": cfg.reward} for p in train]
        heldout = [{**p, "reward": cfg.reward, "own_reward": p["reward"]} for p in heldout]
    return train, heldout


def heldout_reward(model, tokenizer, problems: list[dict], max_new_tokens: int, *,
                   samples: int = 0, temperature: float = 1.0, seed: int = 0,
                   batch_size: int = 64) -> dict[str, Any]:
    """Mean reward on ``problems`` of the greedy completion (``greedy``) and, with ``samples``,
    of ``samples`` completions each at ``temperature`` (``sampled``: the policy's expected
    reward, what GRPO maximises), plus a few greedy examples."""
    from lmforge.align.generate import generate
    from lmforge.align.rewards import score

    if not problems:
        return {"greedy": None, "sampled": None, "problems": 0, "examples": []}
    prompts = [p["prompt"] for p in problems]
    outs = generate(model, tokenizer, prompts, chat=True, greedy=True,
                    max_new_tokens=max_new_tokens, batch_size=batch_size)
    rewards = [score(p, o[0]) for p, o in zip(problems, outs)]
    own = [score({**p, "reward": p["own_reward"]}, o[0]) for p, o in zip(problems, outs)
           if "own_reward" in p]
    result = {"greedy": sum(rewards) / len(rewards), "sampled": None, "problems": len(problems),
              "greedy_own": sum(own) / len(own) if own else None,
              "examples": [{"prompt": p["prompt"], "answer": p["answer"], "completion": o[0]}
                           for p, o in zip(problems[:5], outs[:5])]}
    if samples:
        drawn = generate(model, tokenizer, prompts, chat=True, n=samples, temperature=temperature,
                         max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
        scores = [score(p, t) for p, group in zip(problems, drawn) for t in group]
        result["sampled"] = sum(scores) / len(scores)
    return result


class GroupSampler:
    """``batch_fn`` of the loop: samples groups from the current policy and builds a GRPO batch.

    Deterministic in (seed, step, micro, rank); the batch of (step, micro) is kept so the loop's
    probe call and the step itself see the same samples."""

    def __init__(self, cfg: GRPOConfig, policy, reference, tokenizer, problems: list[dict]):
        from lmforge.train.sft import ExampleOrder

        self.cfg, self.policy, self.reference, self.tok = cfg, policy, reference, tokenizer
        self.problems = problems
        self.order = ExampleOrder(len(problems), cfg.seed)
        self.cache: dict[tuple[int, int], dict] = {}
        self.step_rewards: dict[int, list[float]] = {}

    def __call__(self, step: int, micro: int, rank: int, world: int) -> dict:
        key = (step, micro)
        if key not in self.cache:
            self.cache = {k: v for k, v in self.cache.items() if k[0] >= step}
            self.cache[key] = self.sample(step, micro, rank, world)
        return self.cache[key]

    def sample(self, step: int, micro: int, rank: int, world: int) -> dict:
        import torch

        from lmforge.align.generate import generate_ids, pad_token_id
        from lmforge.align.rewards import score

        cfg = self.cfg
        idx = self.order.indices(step, micro, cfg.micro_batch, cfg.grad_accum, rank, world)
        problems = [self.problems[i] for i in idx]
        seed = ((cfg.seed * 1_000_003 + step) * 1009 + micro) * 101 + rank
        gen = generate_ids(self.policy, self.tok, [p["prompt"] for p in problems], chat=True,
                           n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, seed=seed,
                           batch_size=cfg.gen_batch_size)
        rewards = [score(problems[r // cfg.group_size], text) for r, text in enumerate(gen.texts)]
        self.step_rewards.setdefault(step, []).extend(rewards)
        batch = gen.to_batch(pad_token_id(self.tok))
        device = next(self.policy.parameters()).device
        on_device = {k: v.to(device) for k, v in batch.items()}
        was_training = self.policy.training
        self.policy.eval()
        with torch.no_grad():
            old = token_logprobs(self.policy, on_device)
            if self.reference is None:  # LoRA: the reference is the base, adapter off
                with self.policy.disable_adapter():
                    ref = token_logprobs(self.policy, on_device)
            else:
                ref = token_logprobs(self.reference, on_device)
        self.policy.train(was_training)
        batch.update(old_logprobs=old.cpu(), ref_logprobs=ref.cpu(),
                     rewards=torch.tensor(rewards, dtype=torch.float32),
                     advantages=group_advantages(rewards, cfg.group_size, cfg.adv_eps))
        return batch


def check_inputs(cfg: GRPOConfig) -> None:
    from lmforge.io import check_output
    from lmforge.train.sft import check_base_model

    for name in ("base", "out_dir"):
        if not getattr(cfg, name):
            raise LmforgeError(f"{name} is required")
    check_base_model(cfg.base)
    if cfg.zero_stage == 3:
        raise LmforgeError("GRPO samples from the policy on each rank and needs whole parameters: "
                           "use zero_stage 0, 1 or 2")
    check_output(cfg.out_dir, "dir")


def _save_adapter(engine, out: Path, base: str, dist) -> Path:
    """Rank 0 writes the PEFT adapter (and the tokenizer's files) to ``out/adapter``."""
    from lmforge.io import atomic_path
    from lmforge.train.distributed import barrier
    from lmforge.train.export import copy_tokenizer_files

    target = out / "adapter"
    if dist.rank == 0:
        with atomic_path(target, "dir") as tmp:
            engine.module.save_pretrained(str(tmp))
            copy_tokenizer_files(base, tmp)
    barrier(dist)
    return target


def grpo(cfg: GRPOConfig) -> dict:
    """Train with GRPO; every rank calls this, rank 0 writes the outputs. Returns the summary."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.io import claim_output_dir
    from lmforge.train.loop import init_distributed, report_run, save_hf_model, train
    from lmforge.train.model import flops_per_token
    from lmforge.train.sft import RunStats
    from lmforge.train.telemetry import Telemetry

    check_inputs(cfg)
    train_problems, heldout = load_problems(cfg)
    dist = init_distributed(cfg.device)
    if dist.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.float32, local_files_only=True)
    model.to(dist.device)
    if cfg.lora:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        torch.manual_seed(cfg.seed)  # LoRA's A matrices come from the global RNG
        model = get_peft_model(model, PeftLoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=cfg.lora_dropout,
                                                     target_modules=cfg.lora_targets,
                                                     task_type="CAUSAL_LM"))
        reference = None
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    out = claim_output_dir(cfg.out_dir)

    with Telemetry(dist.rank, prefix="grpo") as tel:
        tel.log(f"{len(train_problems)} training problems, {len(heldout)} held out; G={cfg.group_size}, "
                f"{cfg.micro_batch} prompts x {cfg.grad_accum} micro-batches x {dist.world_size} ranks "
                f"per step; {cfg.max_steps} steps" + (", LoRA" if cfg.lora else ", full weights"))
        def measure(policy, when: str, problems: list[dict], name: str) -> dict:
            if dist.rank != 0 or not problems:
                return {}
            r = heldout_reward(policy, tokenizer, problems, cfg.max_new_tokens,
                               samples=cfg.heldout_samples, temperature=cfg.temperature,
                               seed=cfg.seed, batch_size=cfg.gen_batch_size)
            tel.log(f"{name} mean reward {when}: greedy {r['greedy']:.4f}"
                    + (f", sampled {r['sampled']:.4f}" if r["sampled"] is not None else "")
                    + (f", problems' own reward (greedy) {r['greedy_own']:.4f}"
                       if r.get("greedy_own") is not None else "")
                    + f" ({len(problems)} problems)")
            return r

        train_eval = train_problems[:cfg.train_eval_count]
        before = measure(model, "before", heldout, "held-out")
        train_before = measure(model, "before", train_eval, "train")
        sampler = GroupSampler(cfg, model, reference, tokenizer, train_problems)
        objective = GRPOObjective(cfg.clip_eps, cfg.kl_beta, cfg.loss_norm)
        seq_len = 64 + cfg.max_new_tokens
        result = train(model, cfg, out, batch_fn=sampler, eval_fn=None, dist=dist, telemetry=tel,
                       flops_per_token=flops_per_token(model.config, seq_len),
                       config_record=cfg.model_dump(),
                       inputs=[p for p in (cfg.base, cfg.problems, cfg.heldout_problems) if p],
                       objective=objective)
        policy = result.engine.module
        after = measure(policy, "after", heldout, "held-out")
        train_after = measure(policy, "after", train_eval, "train")
        if cfg.lora:
            where = {"adapter_dir": str(_save_adapter(result.engine, out, cfg.base, dist))}
        else:
            save_hf_model(result.engine, out / "model", dist, tokenizer_dir=cfg.base,
                          records=result.records)
            where = {"model_dir": str(out / "model")}
        curve = [sum(v) / len(v) for _, v in sorted(sampler.step_rewards.items())]
        stats = RunStats(**result.to_metadata(), world_size=dist.world_size, zero_stage=cfg.zero_stage,
                         lora=cfg.lora, group_size=cfg.group_size, loss_norm=cfg.loss_norm,
                         train_problems=len(train_problems), heldout_problems=len(heldout),
                         heldout_reward_before=before.get("greedy"),
                         heldout_reward_after=after.get("greedy"),
                         heldout_sampled_reward_before=before.get("sampled"),
                         heldout_sampled_reward_after=after.get("sampled"),
                         reward=cfg.reward or "each problem's own",
                         **({"heldout_exact_before": before.get("greedy_own"),
                             "heldout_exact_after": after.get("greedy_own")} if cfg.reward else {}),
                         heldout_examples_after=after.get("examples", []),
                         train_eval_problems=len(train_eval),
                         train_reward_before=train_before.get("greedy"),
                         train_reward_after=train_after.get("greedy"),
                         train_sampled_reward_before=train_before.get("sampled"),
                         train_sampled_reward_after=train_after.get("sampled"),
                         step_reward_curve=curve, **where)
        report_run(out, stats, dist, tel, title="GRPO" + (" (LoRA)" if cfg.lora else ""))
    return stats


def main(argv: list[str] | None = None) -> int:
    from lmforge.train.launch import run_cli, training_parser

    p = training_parser("lmforge grpo", __doc__, GRPOConfig, {"--base": "base", "--out": "out_dir"})
    return run_cli("lmforge.align.grpo", GRPOConfig, grpo, p, argv)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run("grpo", main, sys.argv[1:]))
