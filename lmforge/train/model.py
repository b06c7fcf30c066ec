"""The model: a Llama-style decoder built from transformers' ``LlamaConfig``.

Llama's recipe is the one most open models share (RMSNorm, rotary position embeddings, SwiGLU
MLP, grouped-query attention), and building it from ``LlamaForCausalLM`` means the exported
directory loads with ``AutoModelForCausalLM``, PEFT, lm-eval and vLLM with no conversion.

Presets change sizes, not code. ``tiny`` trains on a laptop CPU in a minute; the others are the
usual GPT-2/Llama-sized points. The vocabulary always comes from the tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Peak dense bf16 throughput of one H100 SXM, the usual denominator for MFU.
H100_BF16_PEAK_FLOPS = 989e12
# Chinchilla's compute-optimal ratio (Hoffmann et al., 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20


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


def model_config(preset: str | ModelPreset, vocab_size: int, *, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None,
                 seq_len: int | None = None) -> LlamaConfig:
    """The ``LlamaConfig`` for a preset and a tokenizer's vocabulary."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if p.d_model % p.n_heads or p.n_heads % p.n_kv_heads:
        raise ValueError(f"bad head layout: d={p.d_model}, heads={p.n_heads}, kv={p.n_kv_heads}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.d_model,
        intermediate_size=p.d_ff,
        num_hidden_layers=p.n_layers,
        num_attention_heads=p.n_heads,
        num_key_value_heads=p.n_kv_heads,
        max_position_embeddings=seq_len or p.seq_len,
        rope_theta=p.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=p.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        # SDPA picks flash / memory-efficient kernels on GPU and a fused kernel on CPU.
        attn_implementation="sdpa",
    )


def build_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives the same weights on every rank."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def matmul_params(config: LlamaConfig) -> int:
    """Parameters that take part in a matmul per token: every linear layer plus the output head.

    The input embedding is a lookup, not a matmul, so it is left out (as in the PaLM/nanoGPT MFU
    accounting); the output projection is a matmul even when its weight is tied to the embedding.
    """
    d, L, f = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    attn = d * d + 2 * d * kv + d * d          # q, k, v, o
    mlp = 3 * d * f                            # gate, up, down
    return L * (attn + mlp) + d * config.vocab_size


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params (forward + backward) + attention scores.

    The attention term 12 x layers x width x seq_len is the forward QK^T and AV products (2 x 2 x
    L x d x T) tripled for the backward pass, as in the PaLM paper's appendix B.
    """
    return 6.0 * matmul_params(config) + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def mfu(tokens_per_s: float, config: LlamaConfig, seq_len: int, n_devices: int = 1,
        peak_flops: float = H100_BF16_PEAK_FLOPS) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak."""
    return tokens_per_s * flops_per_token(config, seq_len) / (peak_flops * max(1, n_devices))


def chinchilla_tokens(n_params: int) -> int:
    """Compute-optimal training tokens for a model of ``n_params`` parameters."""
    return CHINCHILLA_TOKENS_PER_PARAM * int(n_params)


def chinchilla_steps(n_params: int, tokens_per_step: int) -> int:
    return max(1, -(-chinchilla_tokens(n_params) // max(1, tokens_per_step)))


def preset_summary(name: str, vocab_size: int) -> dict:
    """Parameter counts of a preset without allocating its weights (built on the meta device)."""
    cfg = model_config(name, vocab_size)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    n = count_params(model)
    return {"preset": name, **asdict(get_preset(name)), "vocab_size": vocab_size, "params": n,
            "matmul_params": matmul_params(cfg), "chinchilla_tokens": chinchilla_tokens(n),
            "flops_per_token": flops_per_token(cfg, cfg.max_position_embeddings)}
