"""The training configs and the model sizes, as plain data: importing them costs no torch.

``TrainConfig`` holds the optimisation settings every training stage shares; ``PretrainConfig``,
``SFTConfig`` and ``LoraConfig`` add what each stage reads and writes. The CLI flags (``lmforge
pretrain --help``) and the Dagster launchpad are generated from these fields, so each one carries
its default and its description here and nowhere else. The Dagster graph imports these classes
to declare its assets; the training itself (torch, transformers, DeepSpeed, PEFT) is imported
only by the processes that train.

Model presets change sizes, not code: ``tiny`` trains on a laptop CPU in a minute; the others
are the usual GPT-2/Llama-sized points. The vocabulary always comes from the tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

# The kernels of PyTorch's scaled-dot-product attention a run may pin (``model.attention_context``).
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


@dataclass(frozen=True)
class ModelPreset:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int            # SwiGLU hidden width (about 8/3 d_model, rounded for matmul efficiency)
    seq_len: int
    tie_embeddings: bool  # small models spend a large share of parameters on embeddings
    rope_theta: float = 10_000.0


PRESETS: dict[str, ModelPreset] = {
    # ~1-3M parameters with a few-thousand-token vocabulary: the CPU demo.
    "tiny": ModelPreset(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, seq_len=256,
                        tie_embeddings=True),
    # GPT-2 small's shape with Llama's blocks.
    "124m": ModelPreset(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048, seq_len=1024,
                        tie_embeddings=True),
    "350m": ModelPreset(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=8, d_ff=2816,
                        seq_len=1024, tie_embeddings=True),
    # Llama 3.2 1B's shape.
    "1b": ModelPreset(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192, seq_len=2048,
                      tie_embeddings=True, rope_theta=500_000.0),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


class TrainConfig(BaseModel):
    """Optimisation settings shared by every training stage; defaults are the ``tiny`` CPU demo."""

    max_steps: int = Field(150, ge=1, description="optimizer steps to train")
    micro_batch: int = Field(16, ge=1, description="sequences per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr")
    warmup_steps: int = Field(20, ge=0, description="steps of linear warmup up to lr")
    schedule: Literal["cosine", "wsd", "constant"] = Field(
        "cosine", description="lr after warmup: cosine decay, warmup-stable-decay (hold lr, then "
        "decay linearly over decay_fraction of the run; extendable from any pre-decay checkpoint), "
        "or constant")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: share of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, on matrices only "
                                "(not norms or biases), as in GPT-2")
    beta1: float = Field(0.9, description="AdamW beta1 (decay of the gradient's running mean)")
    beta2: float = Field(0.95, description="AdamW beta2 (decay of the squared gradient's running mean)")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient L2 norm to this; "
                             "0 disables clipping")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept; older ones are removed")
    eval_every: int = Field(50, ge=0, description="val loss every N steps (0: only at the end)")
    eval_batches: int = Field(8, ge=0, description="micro-batches of validation data per val loss "
                              "(0: no val loss)")
    log_every: int = Field(10, ge=1, description="log loss, lr, gradient norm and throughput every "
                           "N steps")
    seed: int = Field(1337, description="seed of the weights' initialisation and the data order")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when torch sees a GPU, the CPU otherwise")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool | None = Field(None, description="torch.compile the model (default: on GPU only)")
    engine: Literal["auto", "deepspeed", "plain"] = Field(
        "auto", description="auto: plain PyTorch on one process with zero_stage 0 and no extra "
        "deepspeed config (fastest on one GPU), the DeepSpeed engine otherwise")
    loss_chunk: int = Field(0, ge=0, description="compute the output projection and cross-entropy "
                            "this many tokens at a time, so the [tokens x vocab] fp32 logits never "
                            "exist at once (0: all at once)")
    attention_backend: Literal[ATTENTION_BACKENDS] = Field(
        "auto", description="SDPA kernel: auto (PyTorch picks per call), cudnn, flash, efficient or "
        "math; on CPU only auto, flash and math run")
    cpu_threads: int = Field(1, ge=1, description="torch threads per process on CPU: tiny models run "
                             "several times faster on one thread than with OpenMP across busy cores")
    peak_flops: float = Field(989e12, gt=0, description="per-device peak FLOP/s for MFU (H100 bf16)")
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="extra DeepSpeed config, merged last")


class PretrainConfig(TrainConfig):
    """Defaults are the ``tiny`` preset: trains on two CPU cores in about a minute."""

    preset: str = Field("tiny", description=f"model size: one of {sorted(PRESETS)}")
    data_dir: str = Field("", description="token shards: train.bin/.json, val.bin/.json")
    tokenizer_dir: str = Field("", description="Hugging Face tokenizer directory")
    out_dir: str = Field("", description="run directory (resumes if it holds a checkpoint)")
    init_from: str = Field("", description="a Hugging Face model directory of the same shape and "
                           "vocabulary to start from (continued pretraining: its weights, a fresh "
                           "optimizer and warmup); empty: random initialisation")
    seq_len: int | None = Field(None, ge=8, description="context length (None: the preset's)")
    # The model's shape: the preset's, with any of these set on top, so a new size is a config,
    # not a new engine preset.
    d_model: int | None = Field(None, ge=8, description="model width (None: the preset's)")
    n_layers: int | None = Field(None, ge=1, description="transformer blocks (None: the preset's)")
    n_heads: int | None = Field(None, ge=1, description="attention heads; must divide d_model "
                                "(None: the preset's)")
    n_kv_heads: int | None = Field(None, ge=1, description="key/value heads for grouped-query "
                                   "attention; must divide n_heads (None: the preset's)")
    d_ff: int | None = Field(None, ge=8, description="SwiGLU hidden width (None: the preset's)")

    def model_shape(self) -> ModelPreset:
        """The preset's shape with this config's overrides (seq_len included)."""
        shape = get_preset(self.preset)
        overrides = {k: getattr(self, k) for k in
                     ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "seq_len")
                     if getattr(self, k) is not None}
        return dataclasses.replace(shape, **overrides)


class SFTConfig(TrainConfig):
    """Defaults suit the ``tiny`` model on a CPU."""

    base: str = Field("", description="HF model directory (with tokenizer files) to fine-tune")
    data: str = Field("", description="chat JSONL: {\"messages\": [{\"role\", \"content\"}, ...]}")
    out_dir: str = Field("", description="run directory (resumes if it holds a checkpoint)")
    max_len: int = Field(512, ge=8, description="tokens per conversation; longer ones are truncated")
    epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is not set")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: from epochs)")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="held-out share of conversations for val loss")
    micro_batch: int = Field(8, ge=1, description="conversations per micro-batch (packed or padded)")
    packing: bool = Field(True, description="pack each micro-batch's conversations into rows of max_len "
                          "positions (block-diagonal attention, restarting positions: the loss of padding)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(10, ge=0, description="steps of linear warmup up to lr")
    eval_every: int = Field(0, ge=0, description="val loss every N steps (0: only at the end)")
    eval_batches: int = Field(4, ge=0, description="micro-batches of held-out conversations per val "
                              "loss (0: no val loss)")


LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(SFTConfig):
    """SFT settings plus the adapter's shape; defaults suit the ``tiny`` model on a CPU."""

    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (update = alpha/r * BA)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    targets: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                               description="module names that get adapters (attention and MLP projections)")
    qlora: bool = Field(False, description="4-bit NF4 base via bitsandbytes (CUDA only)")
    merge: bool = Field(False, description="also export out_dir/merged: base + adapter as one HF model")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW) of the adapter's weights")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the adapter's matrices")
