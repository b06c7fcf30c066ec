"""A Bradley-Terry reward model: a scalar head on the SFT model, trained on preference pairs.

    lmforge reward-model --base SFT_MODEL_DIR --data PAIRS.jsonl --out RUN_DIR

The model is the SFT model's decoder with one linear head (``AutoModelForSequenceClassification``,
``num_labels=1``: ``LlamaForSequenceClassification`` for lmforge's models) read at the last token
of the sequence: the prompt rendered with the chat template and the generation prompt, the reply
and its end-of-turn token, exactly as DPO and generation see them. The head starts at zero (every
reward 0, the first loss log 2). For a pair the loss is Bradley-Terry's ``-log sigmoid(r(chosen) -
r(rejected))``, averaged over the step's pairs; the held-out accuracy (``r(chosen) > r(rejected)``,
a tie counting one half) and margin are in ``summary.json``, before and after training.

The run directory gets ``model/``: a Hugging Face directory (safetensors weights, config with
``num_labels=1``, tokenizer files) that ``load_reward_model(dir).score(prompts, completions)``
loads, and which ``AutoModelForSequenceClassification.from_pretrained`` reads as well; beside it
``summary.json``, ``metrics.jsonl``, ``loss_curve.png``, ``checkpoints/`` and ``tensorboard/``.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.align.config import RewardModelConfig
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

__all__ = ["RewardModelConfig", "BradleyTerryObjective", "RewardModel", "load_reward_model",
           "train_reward_model", "main"]


def _backbone_and_head(model):
    """The decoder and the scalar head of a ``*ForSequenceClassification`` model (through a
    training engine's ``.module``)."""
    module = getattr(model, "module", model)
    head = getattr(module, "score", None) or getattr(module, "classifier", None)
    if head is None:
        raise LmforgeError(f"{type(module).__name__} has no score head")
    return getattr(module, module.base_model_prefix), head


def last_token_rewards(model, batch: dict) -> torch.Tensor:
    """The head's scalar at each row's last real token (rows are right-padded), shape [rows], fp32.
    Read from the attention mask, not from the pad id: a tokenizer whose pad is its EOS would
    otherwise hide the end-of-turn token."""
    import torch

    backbone, head = _backbone_and_head(model)
    mask = batch["attention_mask"]
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False).last_hidden_state
    last = mask.sum(dim=1) - 1
    return head(hidden[torch.arange(hidden.size(0), device=hidden.device), last]).squeeze(-1).float()


def _accuracy(margin: torch.Tensor) -> torch.Tensor:
    return (margin > 0).float() + 0.5 * (margin == 0).float()


class BradleyTerryObjective:
    """``-log sigmoid(r_chosen - r_rejected)`` per pair, for the training loop (``objectives.py``)."""

    name = "bradley_terry"

    def count(self, batch: dict) -> int:
        return batch["input_ids"].size(0) // 2

    def loss(self, model, batch: dict):
        import torch.nn.functional as F

        chosen, rejected = last_token_rewards(model, batch).chunk(2)
        margin = chosen - rejected
        m = margin.detach()
        return -F.logsigmoid(margin).sum(), {"accuracy": _accuracy(m).sum(), "reward_margin": m.sum(),
                                             "chosen_reward": chosen.detach().sum(),
                                             "rejected_reward": rejected.detach().sum()}


def pair_metrics(model, examples: list[dict], cfg, device, pad_id: int) -> dict[str, float]:
    """Loss, accuracy and margin over ``examples`` (no gradient, eval mode)."""
    import torch
    import torch.nn.functional as F

    from lmforge.align.preferences import collate_pairs

    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "accuracy": 0.0, "reward_margin": 0.0}
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    with torch.no_grad(), (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()):
        for i in range(0, len(examples), cfg.micro_batch):
            batch = {k: v.to(device) for k, v in collate_pairs(examples[i:i + cfg.micro_batch], pad_id).items()}
            chosen, rejected = last_token_rewards(model, batch).chunk(2)
            margin = chosen - rejected
            sums["loss"] += float(-F.logsigmoid(margin).sum())
            sums["accuracy"] += float(_accuracy(margin).sum())
            sums["reward_margin"] += float(margin.sum())
    model.train(was_training)
    return {k: v / max(1, len(examples)) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
# the trained model


class RewardModel:
    """A trained reward model: ``score(prompts, completions)`` -> one float per pair (higher = better)."""

    def __init__(self, model, tokenizer, device="cpu", max_len: int = 512, max_prompt_len: int = 256):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_len, self.max_prompt_len = max_len, max_prompt_len
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    def score(self, prompts: list[str], completions: list[str], batch_size: int = 32) -> list[float]:
        import torch

        from lmforge.align.preferences import tokenize_pair

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out: list[float] = []
        for i in range(0, len(prompts), batch_size):
            rows = []
            for prompt, completion in zip(prompts[i:i + batch_size], completions[i:i + batch_size]):
                # tokenize_pair's two replies; here both sides are the one completion
                ex, _ = tokenize_pair(self.tokenizer, {"prompt": prompt, "chosen": completion, "rejected": completion},
                                      self.max_len, self.max_prompt_len)
                rows.append(ex["prompt_ids"] + ex["chosen_ids"])
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
            with torch.no_grad():
                out += last_token_rewards(self.model, {"input_ids": ids.to(self.device),
                                                       "attention_mask": mask.to(self.device)}).tolist()
        return out


def load_reward_model(model_dir: str | os.PathLike, device: str = "cpu") -> RewardModel:
    """The reward model saved by ``train_reward_model`` (``RUN_DIR/model``): safetensors weights only."""
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise LmforgeError(f"no reward model (config.json) in {model_dir}")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("num_labels", len(config.get("id2label", {}) or {})) != 1:
        raise LmforgeError(f"{model_dir} is not a reward model (a one-label sequence classifier)")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                               use_safetensors=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    train_cfg = model_dir / "train_config.json"
    lens = json.loads(train_cfg.read_text()) if train_cfg.is_file() else {}
    return RewardModel(model, tokenizer, device, lens.get("max_len", 512), lens.get("max_prompt_len", 256))


# ---------------------------------------------------------------------------------------------
# the run


def train_reward_model(cfg: RewardModelConfig):
    """Train a reward model on ``cfg.data`` from ``cfg.base``; every rank calls this, rank 0 writes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmforge.align.dpo import RunStats, batch_functions, start_pair_run
    from lmforge.io import claim_output_dir
    from lmforge.train.loop import report_run, save_hf_model, train
    from lmforge.train.model import flops_per_token
    from lmforge.train.telemetry import Telemetry

    dist, tokenizer, pad_id, data_stats, train_ex, val_ex, run_cfg, order = start_pair_run(cfg)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.base, num_labels=1, dtype=torch.float32,
                                                               local_files_only=True)
    model.config.pad_token_id = pad_id  # HF's own forward finds the last token by it
    _, head = _backbone_and_head(model)
    with torch.no_grad():  # every reward starts at 0: the first loss is log 2
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
    model.to(dist.device)
    out = claim_output_dir(cfg.out_dir)

    with Telemetry(dist.rank, prefix="reward-model") as tel:
        tel.log(f"{data_stats['kept']} pairs ({data_stats['dropped']} dropped, {data_stats['truncated']} "
                f"truncated), {len(val_ex)} held out; {run_cfg.max_steps} steps")
        before = pair_metrics(model, val_ex, cfg, dist.device, pad_id) if val_ex else None
        batch_fn, eval_fn = batch_functions(cfg, train_ex, val_ex, order, pad_id)
        result = train(model, run_cfg, out, batch_fn=batch_fn, eval_fn=eval_fn, dist=dist, telemetry=tel,
                       flops_per_token=flops_per_token(model.config, cfg.max_len),
                       config_record=run_cfg.model_dump(), inputs=[cfg.base, cfg.data],
                       objective=BradleyTerryObjective())
        trained = result.engine.module
        after = pair_metrics(trained, val_ex, cfg, dist.device, pad_id) if val_ex else None
        save_hf_model(result.engine, out / "model", dist, tokenizer_dir=cfg.base, records=result.records)
        stats = RunStats(**result.to_metadata(), **{f"data_{k}": v for k, v in data_stats.items()},
                         val_pairs=len(val_ex), world_size=dist.world_size, zero_stage=cfg.zero_stage,
                         model_dir=str(out / "model"))
        stats["val_loss"] = stats.pop("final_val_loss")
        for when, metrics in (("before", before), ("after", after)):
            for k, v in (metrics or {}).items():
                stats[f"val_{k}_{when}"] = v
        report_run(out, stats, dist, tel, title="reward model (Bradley-Terry)")
    stats.model = trained
    return stats


def main(argv: list[str] | None = None) -> int:
    from lmforge.train.launch import run_cli, training_parser

    p = training_parser("lmforge reward-model", __doc__, RewardModelConfig, {"--out": "out_dir"})
    return run_cli("lmforge.align.reward_model", RewardModelConfig, train_reward_model, p, argv)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run("reward-model", main, sys.argv[1:]))
