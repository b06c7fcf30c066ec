"""Direct Preference Optimization (Rafailov et al. 2023) on the shared training loop.

    lmforge dpo --base SFT_MODEL_DIR --data PAIRS.jsonl --out RUN_DIR [--beta 0.1] [--lora]

Each line of PAIRS.jsonl is ``{"prompt", "chosen", "rejected"}`` (``lmforge preferences`` builds
them). A sequence is the prompt rendered with the chat template and its generation prompt, then the
reply and its end-of-turn token; only the reply's tokens count. For a pair, with ``logp`` the
summed log-probability of a reply under the policy and ``ref`` under the reference (the model the
run starts from)::

    margin = beta * ((logp(chosen) - ref(chosen)) - (logp(rejected) - ref(rejected)))
    loss   = -log sigmoid(margin)

averaged over the step's pairs. ``beta * (logp - ref)`` is DPO's implicit reward; the metrics are
the loss, the reward margin, the chosen/rejected rewards and the preference accuracy (margin > 0,
a tie counting one half), on the training steps and on the held-out pairs.

The reference's log-probabilities are computed once per pair before training (no gradient, eval
mode), from the base weights (full fine-tuning: what a frozen copy of the base would give, without
holding the copy in memory) or from the PEFT model with its adapter disabled (``--lora``). So a
step is one forward and backward of the policy over the 2B rows of its B pairs (chosen and
rejected in one padded batch), and the first step's loss is log 2.

The run directory gets ``model/`` (HF + tokenizer; ``adapter/``, a PEFT adapter over base, with
``--lora``), ``summary.json`` (the held-out accuracy and margin before and after training),
``metrics.jsonl``, ``loss_curve.png``, ``checkpoints/`` (resume) and ``tensorboard/``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from lmforge.align.config import DPOConfig
from lmforge.align.generate import pad_token_id
from lmforge.align.preferences import collate_pairs
from lmforge.errors import LmforgeError
# A run's summary (also summary.json), as SFT's: a dict whose ``.model`` is the trained module.
from lmforge.train.sft import RunStats

if TYPE_CHECKING:
    import torch

IGNORE = -100


# ---------------------------------------------------------------------------------------------
# log-probabilities of the replies


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Summed log-probability of each row's reply tokens (``completion_mask``), shape [rows].

    Only the positions that predict a reply token are projected through the output layer (the
    prompt's are not): the same numbers as ``log_softmax(logits)`` gathered at the targets, with
    [reply tokens x vocab] logits instead of [rows x length x vocab]."""
    import torch

    from lmforge.train.model import causal_lm_parts

    ids, mask = batch["input_ids"], batch["attention_mask"]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    selected = batch["completion_mask"][:, 1:].bool()
    kwargs = dict(input_ids=inputs, attention_mask=mask[:, :-1], use_cache=False)
    parts = causal_lm_parts(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**kwargs).last_hidden_state[selected]
        logits = head(hidden)
    else:  # a model whose head is not one plain matrix: the standard forward
        logits = model(**kwargs).logits[selected]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[selected].unsqueeze(1)).squeeze(1)
    rows = selected.nonzero()[:, 0]
    return torch.zeros(ids.size(0), dtype=token_logps.dtype, device=ids.device).index_add(0, rows, token_logps)


def dpo_terms(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair loss, margin and rewards from the [2B] log-probs (chosen rows first)."""
    import torch.nn.functional as F

    chosen, rejected = logps.float().chunk(2)
    ref_chosen, ref_rejected = ref_logps.float().chunk(2)
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    return {"loss": -F.logsigmoid(margin), "margin": margin, "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward}


def _accuracy(margin: torch.Tensor) -> torch.Tensor:
    """Pairs the implicit reward ranks right; a tie (the policy is the reference) counts one half."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


class DPOObjective:
    """The DPO loss for the training loop (``lmforge.train.objectives``): the mean over pairs.
    ``sft_weight > 0`` adds that times the chosen reply's mean per-token NLL to each pair (RPO)."""

    name = "dpo"

    def __init__(self, beta: float, sft_weight: float = 0.0):
        self.beta, self.sft_weight = beta, sft_weight

    def count(self, batch: dict) -> int:
        return batch["input_ids"].size(0) // 2

    def loss(self, model, batch: dict):
        logps = sequence_logps(model, batch)
        terms = dpo_terms(logps, batch["ref_logps"], self.beta)
        margin = terms["margin"].detach()
        stats = {"reward_margin": margin.sum(), "accuracy": _accuracy(margin).sum(),
                 "chosen_reward": terms["chosen_reward"].detach().sum(),
                 "rejected_reward": terms["rejected_reward"].detach().sum()}
        loss = terms["loss"].sum()
        if self.sft_weight:
            chosen_tokens = batch["completion_mask"][:, 1:].sum(dim=1).chunk(2)[0].clamp(min=1)
            chosen_nll = -(logps.chunk(2)[0] / chosen_tokens).sum()
            loss = loss + self.sft_weight * chosen_nll
            stats["chosen_nll"] = chosen_nll.detach()
        return loss, stats


# ---------------------------------------------------------------------------------------------
# the reference and the held-out metrics


def _autocast(cfg, device):
    import torch

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _batches(examples: list[dict], size: int):
    for i in range(0, len(examples), size):
        yield examples[i:i + size]


def precompute_reference(model, examples: list[dict], cfg, dist, pad_id: int) -> None:
    """Store each pair's reference log-probs in it (``ref_chosen_logp``, ``ref_rejected_logp``):
    one no-grad, eval-mode pass; the ranks share the work and exchange the results."""
    import torch

    model.eval()
    out = torch.zeros(len(examples), 2, dtype=torch.float64, device=dist.device)
    mine = list(range(dist.rank, len(examples), dist.world_size))
    with torch.no_grad(), _autocast(cfg, dist.device):
        for chunk in _batches(mine, cfg.micro_batch):
            batch = {k: v.to(dist.device) for k, v in collate_pairs([examples[i] for i in chunk], pad_id).items()}
            out[chunk] = sequence_logps(model, batch).double().view(2, -1).T
    if dist.world_size > 1:
        torch.distributed.all_reduce(out)
    for ex, (c, r) in zip(examples, out.tolist()):
        ex["ref_chosen_logp"], ex["ref_rejected_logp"] = c, r
    model.train()


def preference_metrics(model, examples: list[dict], beta: float, cfg, device, pad_id: int) -> dict[str, float]:
    """DPO's loss, implicit-reward accuracy and margin over ``examples`` (which carry the
    reference's log-probs), and how often the model itself gives the chosen reply the higher
    log-probability (``logp_accuracy``; the reference's is ``ref_logp_accuracy``)."""
    import torch

    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("loss", "accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                          "logp_accuracy", "ref_logp_accuracy"), 0.0)
    with torch.no_grad(), _autocast(cfg, device):
        for chunk in _batches(examples, cfg.micro_batch):
            batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
            logps = sequence_logps(model, batch)
            t = dpo_terms(logps, batch["ref_logps"], beta)
            c, r = logps.chunk(2)
            rc, rr = batch["ref_logps"].chunk(2)
            for name, v in (("loss", t["loss"]), ("accuracy", _accuracy(t["margin"])),
                            ("reward_margin", t["margin"]), ("chosen_reward", t["chosen_reward"]),
                            ("rejected_reward", t["rejected_reward"]), ("logp_accuracy", (c > r).float()),
                            ("ref_logp_accuracy", (rc > rr).float())):
                sums[name] += float(v.sum())
    model.train(was_training)
    return {k: v / max(1, len(examples)) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
# the run


def check_inputs(cfg) -> list[dict[str, Any]]:
    """The base model, the pairs and the destination, before any work; returns the pairs."""
    from lmforge.align.preferences import read_pairs
    from lmforge.io import check_output
    from lmforge.train.sft import check_base_model

    for name in ("base", "data", "out_dir"):
        if not getattr(cfg, name):
            raise LmforgeError(f"{name} is required")
    check_base_model(cfg.base)
    pairs = read_pairs(cfg.data)
    check_output(cfg.out_dir, "dir")
    return pairs


def prepare_pairs(cfg, tokenizer, pairs: list[dict], world_size: int):
    """Tokenized train/held-out pairs, the resolved step count and the order of the pairs."""
    from lmforge.align.preferences import tokenize_pairs
    from lmforge.train.sft import ExampleOrder, split_validation

    examples, data_stats = tokenize_pairs(tokenizer, pairs, cfg.max_len, cfg.max_prompt_len)
    train_ex, val_ex = split_validation(examples, cfg.val_fraction, cfg.seed)
    if not train_ex:
        raise LmforgeError(f"{cfg.data}: no pair left to train on after holding out {cfg.val_fraction:.0%}")
    per_step = cfg.micro_batch * cfg.grad_accum * world_size
    max_steps = cfg.max_steps or max(1, int(round(cfg.epochs * len(train_ex) / per_step)))
    return data_stats, train_ex, val_ex, max_steps, ExampleOrder(len(train_ex), cfg.seed)


def batch_functions(cfg, train_ex: list[dict], val_ex: list[dict], order, pad_id: int):
    """The loop's ``batch_fn`` and ``eval_fn`` over tokenized pairs."""

    def batch_fn(step, micro, rank, world):
        idx = order.indices(step, micro, cfg.micro_batch, cfg.grad_accum, rank, world)
        return collate_pairs([train_ex[i] for i in idx], pad_id)

    def eval_fn(rank, world):
        n_batches = min(cfg.eval_batches, -(-len(val_ex) // cfg.micro_batch))
        if world > 1 and n_batches >= world:  # every rank runs the same number of forwards
            n_batches -= n_batches % world
        for b in range(rank, n_batches, world):
            yield collate_pairs(val_ex[b * cfg.micro_batch:(b + 1) * cfg.micro_batch], pad_id)

    return batch_fn, (eval_fn if val_ex and cfg.eval_batches else None)


def start_pair_run(cfg):
    """What DPO and the reward model do before building their model: check the inputs, join the
    process group, load the tokenizer, tokenize and split the pairs, fix the number of steps."""
    import torch
    from transformers import AutoTokenizer

    from lmforge.train.loop import init_distributed

    pairs = check_inputs(cfg)
    dist = init_distributed(cfg.device)
    if dist.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, local_files_only=True)
    pad_id = pad_token_id(tokenizer)
    data_stats, train_ex, val_ex, max_steps, order = prepare_pairs(cfg, tokenizer, pairs, dist.world_size)
    run_cfg = cfg.model_copy(update={"max_steps": max_steps})
    return dist, tokenizer, pad_id, data_stats, train_ex, val_ex, run_cfg, order


def dpo(cfg: DPOConfig) -> RunStats:
    """Train ``cfg.base`` on ``cfg.data`` with DPO; every rank calls this, rank 0 writes the outputs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.io import claim_output_dir
    from lmforge.train.loop import report_run, save_hf_model, train
    from lmforge.train.model import flops_per_token
    from lmforge.train.telemetry import Telemetry

    dist, tokenizer, pad_id, data_stats, train_ex, val_ex, run_cfg, order = start_pair_run(cfg)
    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.float32, local_files_only=True)
    if cfg.lora:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in cfg.targets if t not in present]
        if missing:
            raise LmforgeError(f"target modules {missing} are not in the base model")
        torch.manual_seed(cfg.seed)  # the adapter's A matrices come from the global RNG
        model = get_peft_model(model, PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                     target_modules=cfg.targets, task_type="CAUSAL_LM"))
    model.to(dist.device)
    out = claim_output_dir(cfg.out_dir)

    with Telemetry(dist.rank, prefix="dpo") as tel:
        tel.log(f"{data_stats['kept']} pairs ({data_stats['dropped']} dropped, {data_stats['truncated']} "
                f"truncated), {len(val_ex)} held out; {run_cfg.max_steps} steps; beta {cfg.beta}"
                + ("; LoRA r=%d" % cfg.rank if cfg.lora else ""))
        # The reference: the base weights, or the PEFT model with its adapter disabled.
        t0 = time.perf_counter()
        with (model.disable_adapter() if cfg.lora else nullcontext()):
            precompute_reference(model, train_ex + val_ex, cfg, dist, pad_id)
            reference_s = time.perf_counter() - t0
            before = preference_metrics(model, val_ex, cfg.beta, cfg, dist.device, pad_id) if val_ex else None
        batch_fn, eval_fn = batch_functions(cfg, train_ex, val_ex, order, pad_id)
        result = train(model, run_cfg, out, batch_fn=batch_fn, eval_fn=eval_fn, dist=dist, telemetry=tel,
                       flops_per_token=flops_per_token(model.config, cfg.max_len),
                       config_record=run_cfg.model_dump(), inputs=[cfg.base, cfg.data],
                       objective=DPOObjective(cfg.beta, cfg.sft_weight))
        trained = result.engine.module
        after = preference_metrics(trained, val_ex, cfg.beta, cfg, dist.device, pad_id) if val_ex else None
        model_dir = out / ("adapter" if cfg.lora else "model")
        save_hf_model(result.engine, model_dir, dist, tokenizer_dir=cfg.base, records=result.records)
        stats = RunStats(**result.to_metadata(), **{f"data_{k}": v for k, v in data_stats.items()},
                         beta=cfg.beta, lora=cfg.lora, val_pairs=len(val_ex), world_size=dist.world_size,
                         zero_stage=cfg.zero_stage, reference_s=reference_s, reference="precomputed: " + (
                             "base with the adapter disabled" if cfg.lora else "base weights"),
                         **({"adapter_dir": str(model_dir)} if cfg.lora else {"model_dir": str(model_dir)}))
        stats["val_loss"] = stats.pop("final_val_loss")
        for when, metrics in (("before", before), ("after", after)):
            for k, v in (metrics or {}).items():
                stats[f"val_{k}_{when}"] = v
        if not cfg.sft_weight and result.first_loss is not None and abs(result.first_loss - math.log(2)) > 1e-3:
            tel.log(f"note: first loss {result.first_loss:.6f} is not log 2 = {math.log(2):.6f}")
        report_run(out, stats, dist, tel, title=f"DPO beta={cfg.beta}" + (" (LoRA)" if cfg.lora else ""))
    stats.model = trained
    return stats


def main(argv: list[str] | None = None) -> int:
    from lmforge.train.launch import run_cli, training_parser

    p = training_parser("lmforge dpo", __doc__, DPOConfig, {"--out": "out_dir"})
    return run_cli("lmforge.align.dpo", DPOConfig, dpo, p, argv)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run("dpo", main, sys.argv[1:]))
