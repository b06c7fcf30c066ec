"""The model: a Llama-style decoder built from transformers' ``LlamaConfig``.

Llama's recipe is the one most open models share (RMSNorm, rotary position embeddings, SwiGLU
MLP, grouped-query attention), and building it from ``LlamaForCausalLM`` means the exported
directory loads with ``AutoModelForCausalLM``, PEFT, lm-eval and vLLM with no conversion.

Presets change sizes, not code (``config.PRESETS``, plain data the graph reads without torch).
The vocabulary always comes from the tokenizer.

Two speed knobs live here because they are about the model's own compute: the output projection
and cross-entropy computed in chunks of tokens (``linear_cross_entropy``), and the choice of
PyTorch's scaled-dot-product-attention kernel (``attention_context``).
"""

from __future__ import annotations

import functools
import warnings
from contextlib import nullcontext
from dataclasses import asdict

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

# The sizes and the attention kernels are plain data, in the light config module (the graph
# imports them without torch); re-exported here where the model code reads them.
from lmforge.train.config import ATTENTION_BACKENDS, PRESETS, ModelPreset, get_preset  # noqa: F401

# Peak dense bf16 throughput of one H100 SXM, the usual denominator for MFU.
H100_BF16_PEAK_FLOPS = 989e12
# Chinchilla's compute-optimal ratio (Hoffmann et al., 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20


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


# ---------------------------------------------------------------------------------------------
# the loss head: output projection + cross-entropy in chunks of tokens

IGNORE_INDEX = -100


# Model types whose ``ForCausalLM.forward`` computes exactly ``lm_head(model(...).last_hidden_state)``
# and nothing after it, checked in transformers' modeling code for each. The chunked loss
# multiplies the decoder's hidden states by the head's weight itself, so any transformation of the
# logits after the head would be silently skipped: Granite divides them by ``logits_scaling``,
# Gemma 2/3 soft-cap them (``final_logit_softcapping``), Cohere multiplies by ``logit_scale``, and
# so on. The same head and decoder attributes are no evidence that the forward is plain, so only
# the listed types take the chunked path; every other model takes the standard one.
CHUNKED_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def causal_lm_parts(model) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder (input ids -> final hidden states) and the output projection of a causal LM.

    Looks through a training engine (``.module``) and a PEFT wrapper: LoRA injects its adapters
    into the base model's layers, so the base model's own decoder and head compute exactly what
    the PEFT model's forward does. Returns None where that split is not plain, and the caller
    takes the standard path: a model type outside ``CHUNKED_LOSS_MODEL_TYPES`` (its forward may
    transform the logits after the head), prompt-learning PEFT methods (prefix / prompt tuning)
    change the inputs in the wrapper's forward, and a head that is not a bias-free ``nn.Linear``
    (a LoRA'd or quantized ``lm_head``) is not one matrix to multiply chunk by chunk.
    """
    module = getattr(model, "module", model)
    if hasattr(module, "peft_config") and hasattr(module, "get_base_model"):
        if module.active_peft_config.is_prompt_learning:
            return None
        module = module.get_base_model()
    if getattr(getattr(module, "config", None), "model_type", None) not in CHUNKED_LOSS_MODEL_TYPES:
        return None
    if not (hasattr(module, "get_decoder") and hasattr(module, "get_output_embeddings")):
        return None
    head = module.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    return module.get_decoder(), head


def _nll_and_grad_logits(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, need_grad: bool):
    """One chunk: the summed NLL of ``targets`` under ``h @ w.T``, and d(NLL)/d(logits).

    The logits are rounded to ``h``'s dtype by the matmul (bf16 under autocast, as the standard
    path's ``lm_head`` does) and the softmax runs in fp32, as ``F.cross_entropy(logits.float())``.
    """
    logits = (h @ w.T).float()
    lse = torch.logsumexp(logits, dim=-1)
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)[:, None]
    nll = ((lse - logits.gather(1, safe).squeeze(1)) * valid).sum()
    if not need_grad:
        return nll, None
    # d nll / d logits = softmax - onehot(target) on trained rows, 0 on ignored ones; computed
    # in the logits' own memory, so a chunk costs one [chunk x vocab] fp32 buffer, not two.
    grad = logits.sub_(lse[:, None]).exp_()
    grad.scatter_add_(1, safe, -valid[:, None].to(grad.dtype))
    grad.mul_(valid[:, None])
    return nll, grad.to(h.dtype)


@functools.cache
def _compiled_chunk_kernel():
    # One fused kernel per chunk for the softmax / gather / one-hot work instead of several
    # passes over the [chunk x vocab] fp32 logits; compiled once per process, on first use.
    return torch.compile(_nll_and_grad_logits)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed NLL of ``hidden @ weight.T`` against ``targets``, one chunk of rows at a time.

    The gradients are computed in the forward pass, chunk by chunk, while each chunk's logits
    exist (as Liger-Kernel's fused linear cross-entropy does): backward then only scales them.
    Peak memory holds one chunk's logits instead of all of them, and nothing is recomputed (a
    ``torch.utils.checkpoint`` per chunk would redo the head's matmul, ~10% of a small model's
    training FLOPs).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype, kernel):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Explicit dtypes below (``dtype`` is what autocast would have used), so autocast's own
        # per-op casting must not second-guess them.
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            for start in range(0, hidden.size(0), chunk):
                h = hidden[start:start + chunk].to(dtype)
                nll, g = kernel(h, w, targets[start:start + chunk], need_h or need_w)
                total += nll
                if need_h:
                    grad_h[start:start + chunk] = g @ w
                if need_w:
                    grad_w += g.T @ h  # fp32 accumulation across chunks
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = grad_h * grad_out if grad_h is not None else None
        grad_w = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int, compiled: bool = False) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100, reduction="sum")``
    without the ``[tokens x vocab]`` logits: at most ``chunk`` rows of them exist at a time.

    ``hidden`` is ``[tokens, d]``, ``weight`` the ``[vocab, d]`` output projection. Under autocast
    the matmuls run in autocast's dtype (bf16) and the softmax in fp32, like the standard path.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    kernel = _compiled_chunk_kernel() if compiled else _nll_and_grad_logits
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        # Evaluation (no_grad) or nothing to differentiate: only the NLL, chunk by chunk. The
        # autograd Function would compute the gradient buffers anyway, since
        # ``ctx.needs_input_grad`` follows the inputs' requires_grad, not the grad mode.
        return _chunked_nll(hidden, weight, targets, chunk, dtype, kernel)
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, dtype, kernel)


def _chunked_nll(hidden, weight, targets, chunk, dtype, kernel) -> torch.Tensor:
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            nll, _ = kernel(hidden[start:start + chunk].to(dtype), w, targets[start:start + chunk], False)
            total += nll
    return total


# ---------------------------------------------------------------------------------------------
# attention kernels

def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def attention_context(name: str):
    """A context in which SDPA runs only the named kernel; ``auto`` lets PyTorch choose per call.

    The kernel is picked when the forward runs and its backward follows it, but the training
    loop holds the context around both, so nothing depends on that detail.
    """
    if name == "auto":
        return nullcontext()
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([_sdpa_backend(name)])


def check_attention_backend(name: str, model: nn.Module, device: torch.device, dtype: torch.dtype, *,
                            masked: bool = False) -> None:
    """Raise ValueError unless attention kernel ``name`` can train ``model`` on ``device``.

    PyTorch only says that a kernel is unusable when a call needs it ("No available kernel"),
    which would be the first training step; a forward and backward of SDPA with the model's head
    layout and the training dtype, called the way transformers calls it, finds out before any
    work. ``masked=False``: unmasked rows, ``is_causal=True`` and, for grouped-query attention,
    ``enable_gqa``. ``masked=True``: masked rows (padded or packed batches), a boolean attention
    mask and the KV heads repeated to the query heads. "auto" always works.
    """
    if name == "auto":
        return
    config = model.config
    impl = getattr(config, "_attn_implementation", None)
    if impl != "sdpa":
        raise ValueError(f"attention_backend={name!r} needs the model's attention to be SDPA, "
                         f"but it is {impl!r}; use attention_backend='auto'")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    gqa = kv_heads != heads
    # As transformers' sdpa_attention_forward: enable_gqa only without a mask (and head_dim <= 256),
    # otherwise the KV heads repeated (repeat_kv) to the query heads.
    enable_gqa = gqa and not masked and head_dim <= 256
    # Constant inputs: the values do not matter, and the global RNG stream must not move.
    q = torch.ones(1, heads, 16, head_dim, device=device, dtype=dtype, requires_grad=True)
    kv = torch.ones(1, kv_heads if enable_gqa else heads, 16, head_dim, device=device, dtype=dtype,
                    requires_grad=True)
    if masked:
        mask = torch.ones(16, 16, dtype=torch.bool, device=device).tril()[None, None]
        kwargs = {"attn_mask": mask}
    else:
        kwargs = {"is_causal": True, **({"enable_gqa": True} if enable_gqa else {})}
    # PyTorch explains why it refused a kernel in warnings ("Flash attention does not support
    # ..."), not in the error: keep them for the message.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with attention_context(name):
                out = torch.nn.functional.scaled_dot_product_attention(q, kv, kv, **kwargs)
                out.sum().backward()
            return
        except TypeError as e:  # torch < 2.5 has no enable_gqa
            error, hint = e, "this PyTorch's SDPA lacks enable_gqa; lmforge needs torch >= 2.5"
        except RuntimeError as e:
            error = e
            hint = "on CPU only 'math', 'flash' and 'auto' run" if device.type == "cpu" else (
                "this GPU, dtype or PyTorch build lacks it")
    reason = " ".join(str(error).split())[:300]
    said = "; ".join(dict.fromkeys(" ".join(str(w.message).split())[:300] for w in caught))[:1500]
    rows = "masked (padded or packed) rows" if masked else "unmasked rows"
    gqa_note = ""
    if enable_gqa and name in ("cudnn", "efficient"):
        gqa_note = (" This model uses grouped-query attention, and PyTorch's SDPA runs grouped-query "
                    "attention (enable_gqa) only with the flash and math kernels on CUDA.")
    raise ValueError(f"attention_backend={name!r} cannot run this model's attention on {device} in {dtype} "
                     f"for {rows} ({hint}); use 'auto' or another backend.{gqa_note} PyTorch said: {reason}"
                     + (f" PyTorch's warnings: {said}" if said else "")) from None
