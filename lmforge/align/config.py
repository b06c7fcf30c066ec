"""The configs of the preference stages (DPO, the reward model), as plain data: importing them
costs no torch. The Dagster graph imports these classes to declare its assets; the CLI flags
(``lmforge dpo --help``) are generated from the fields, so each one carries its default and its
description here and nowhere else."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.train.config import LLAMA_PROJECTIONS, TrainConfig


class PreferenceTrainConfig(TrainConfig):
    """What every stage that trains on preference pairs reads: a model, pairs, how they are cut."""

    base: str = Field("", description="HF model directory (with tokenizer files) to start from: the "
                      "SFT model")
    data: str = Field("", description='preference pairs JSONL: {"prompt", "chosen", "rejected"} per line')
    out_dir: str = Field("", description="run directory (resumes if it holds a checkpoint)")
    max_len: int = Field(512, ge=8, description="tokens of prompt + completion per sequence; longer "
                         "completions are cut at the end")
    max_prompt_len: int = Field(256, ge=4, description="tokens of the rendered prompt; longer prompts "
                                "keep their end (the question and the generation prompt)")
    epochs: float = Field(1.0, gt=0, description="passes over the pairs when max_steps is not set")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: from epochs)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of the pairs for the "
                                "preference accuracy")
    micro_batch: int = Field(8, ge=1, description="preference pairs per micro-batch (each is two "
                             "sequences: chosen and rejected)")
    warmup_steps: int = Field(5, ge=0, description="steps of linear warmup up to lr")
    eval_every: int = Field(0, ge=0, description="held-out metrics every N steps (0: only at the end)")
    eval_batches: int = Field(8, ge=0, description="micro-batches of held-out pairs per evaluation "
                              "(0: none)")
    log_every: int = Field(5, ge=1, description="log loss, accuracy, margin and throughput every N steps")


class DPOConfig(PreferenceTrainConfig):
    """Direct Preference Optimization (Rafailov et al. 2023); defaults suit the ``tiny`` model on a CPU."""

    beta: float = Field(0.1, gt=0, description="DPO beta: the strength of the pull towards the "
                        "reference model (the implicit reward is beta * log(pi / pi_ref))")
    sft_weight: float = Field(0.0, ge=0, description="add this times the chosen reply's mean "
                              "per-token NLL to each pair's loss (RPO, Pang et al. 2024): keeps the "
                              "chosen replies likely while the margin grows (0: plain DPO)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, on matrices only")
    schedule: Literal["cosine", "wsd", "constant"] = Field("constant", description="lr after warmup: cosine, wsd or constant")
    lora: bool = Field(False, description="train a LoRA adapter (the reference is the base: adapter "
                       "disabled) instead of the full weights (the reference is a frozen copy of base)")
    rank: int = Field(8, ge=1, description="LoRA rank r (with --lora)")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator, update = alpha/r * BA (with --lora)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input (with --lora)")
    targets: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                               description="module names that get adapters (with --lora)")


class RewardModelConfig(PreferenceTrainConfig):
    """A Bradley-Terry reward model: a scalar head on the SFT model, trained on preference pairs."""

    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, on matrices only")
    schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="lr after warmup: cosine, wsd or constant")
