"""The chunked output projection + cross-entropy computes the standard path's loss and gradients.

``forward_nll(..., loss_chunk=N)`` never builds the [tokens x vocab] logits; it must still give
the summed NLL and every parameter's gradient that ``F.cross_entropy`` on the full logits gives.
In fp32 the only differences are summation order (the chunk's NLL sums, fp32 accumulation of the
head's gradient over chunks): relative 1e-5 is a tolerance three orders above what they produce
and far below any real error (a missed -100 mask moves the loss by whole units, a wrong softmax
gradient moves gradients by O(1) relative). Under bf16 autocast both paths round the logits and
their gradients to bf16 (8 bits of mantissa, ~4e-3) at different points, hence 2e-2 there.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from lmforge.train import model as model_mod
from lmforge.train.loop import forward_nll
from lmforge.train.model import build_model, causal_lm_parts, linear_cross_entropy, model_config
from lmforge.train.packing import pack_batch
from lmforge.train.pretrain import PretrainConfig, pretrain

FP32_RTOL = 1e-5
BF16_RTOL = 2e-2
VOCAB = 512


@pytest.fixture(scope="module")
def tiny_model():
    torch.set_num_threads(1)
    return build_model(model_config("tiny", VOCAB, seq_len=64), seed=0)


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 40), generator=g)
    targets = torch.randint(0, VOCAB, (3, 40), generator=g)
    targets[0, :7] = -100   # a masked prompt
    targets[2, 30:] = -100  # padding at the end
    return {"input_ids": ids, "targets": targets}


def _loss_and_grads(model, batch, loss_chunk, bf16=False):
    model = copy.deepcopy(model)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        nll = forward_nll(model, batch, loss_chunk=loss_chunk)
    nll.backward()
    return nll.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _assert_close(reference, chunked, rtol):
    (ref_loss, ref_grads), (loss, grads) = reference, chunked
    assert loss == pytest.approx(ref_loss, rel=rtol)
    assert ref_grads.keys() == grads.keys() and ref_grads
    for name, g in ref_grads.items():
        # Relative to the tensor's largest entry: elementwise relative error is meaningless for
        # entries that are zero up to rounding.
        # (A LoRA A matrix has a zero gradient while B is zero: then the difference must be 0.)
        err = (grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-30)
        assert err < rtol, (name, float(err))


@pytest.mark.parametrize("loss_chunk", [1, 7, 64, 4096])
def test_chunked_loss_and_gradients_match_standard_fp32(tiny_model, loss_chunk):
    batch = _batch()
    _assert_close(_loss_and_grads(tiny_model, batch, 0), _loss_and_grads(tiny_model, batch, loss_chunk), FP32_RTOL)


def test_chunked_loss_matches_standard_under_bf16_autocast(tiny_model):
    batch = _batch(1)
    _assert_close(_loss_and_grads(tiny_model, batch, 0, bf16=True),
                  _loss_and_grads(tiny_model, batch, 16, bf16=True), BF16_RTOL)


def _kernel_spy(monkeypatch) -> list[bool]:
    """Replace the chunk kernel (looked up when ``linear_cross_entropy`` runs) with one that
    records each call's ``need_grad``."""
    calls, kernel = [], model_mod._nll_and_grad_logits

    def spy(h, w, targets, need_grad):
        calls.append(need_grad)
        return kernel(h, w, targets, need_grad)

    monkeypatch.setattr(model_mod, "_nll_and_grad_logits", spy)
    return calls


def test_chunked_loss_without_grad_is_the_eval_loss_and_computes_no_gradients(tiny_model, monkeypatch):
    batch = _batch(2)
    calls = _kernel_spy(monkeypatch)
    with torch.no_grad():
        reference = forward_nll(tiny_model, batch).item()
        assert not calls
        assert forward_nll(tiny_model, batch, loss_chunk=5).item() == pytest.approx(reference, rel=FP32_RTOL)
    assert len(calls) == 3 * 40 // 5 and not any(calls)  # every chunk, none asked for gradients
    # Inputs that need no gradient, with grad mode on: the same.
    calls.clear()
    g = torch.Generator().manual_seed(7)
    hidden, weight = torch.randn(20, 16, generator=g), torch.randn(300, 16, generator=g)
    targets = torch.randint(0, 300, (20,), generator=g)
    out = linear_cross_entropy(hidden, weight, targets, chunk=6)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert out.item() == pytest.approx(ref.item(), rel=FP32_RTOL)
    assert calls == [False] * 4
    # With gradients wanted, the kernel is asked for them (the spy sees the training path too).
    calls.clear()
    linear_cross_entropy(hidden.requires_grad_(), weight, targets, chunk=6)
    assert calls == [True] * 4


def test_a_model_that_transforms_its_logits_takes_the_standard_path(tiny_model, monkeypatch):
    """Granite divides the head's logits by ``logits_scaling``: the chunked loss, which multiplies
    the hidden states by the head's weight itself, would skip that (here a factor 20 on the
    logits), so a Granite model must take the standard path, and a Llama still the chunked one."""
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    granite = GraniteForCausalLM(GraniteConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               logits_scaling=0.05, max_position_embeddings=64))
    assert causal_lm_parts(granite) is None
    calls = _kernel_spy(monkeypatch)
    batch = _batch(8)
    _assert_close(_loss_and_grads(granite, batch, 0), _loss_and_grads(granite, batch, 8), FP32_RTOL)
    assert not calls
    # What the chunked path would have given is a different loss: the check above can fail.
    decoder, head = granite.get_decoder(), granite.get_output_embeddings()
    with torch.no_grad():
        hidden = decoder(input_ids=batch["input_ids"]).last_hidden_state
        unscaled = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight,
                                        batch["targets"].reshape(-1), 8).item()
        assert unscaled != pytest.approx(forward_nll(granite, batch).item(), rel=1e-2)
    calls.clear()
    parts = causal_lm_parts(tiny_model)
    assert parts is not None and parts[0] is tiny_model.model and parts[1] is tiny_model.lm_head
    forward_nll(tiny_model, batch, loss_chunk=8)
    assert calls == [True] * (3 * 40 // 8)


def test_linear_cross_entropy_against_f_cross_entropy():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 300, (50,), generator=g)
    targets[::4] = -100
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=-100, reduction="sum")
    ref_grads = torch.autograd.grad(2.5 * ref, [hidden, weight])  # a scale, as the loop applies
    out = linear_cross_entropy(hidden, weight, targets, chunk=8)
    grads = torch.autograd.grad(2.5 * out, [hidden, weight])
    assert out.item() == pytest.approx(ref.item(), rel=FP32_RTOL)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=FP32_RTOL, atol=1e-6)
    with pytest.raises(ValueError):
        linear_cross_entropy(hidden, weight, targets, chunk=0)


def _compile_unavailable() -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler for torch.compile's CPU backend (inductor)"
    return None


@pytest.mark.skipif(_compile_unavailable() is not None, reason=str(_compile_unavailable()))
def test_compiled_chunk_kernel_matches_the_uncompiled_one():
    g = torch.Generator().manual_seed(9)
    hidden = torch.randn(24, 16, generator=g, requires_grad=True)
    weight = torch.randn(100, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 100, (24,), generator=g)
    targets[::5] = -100
    results = []
    for compiled in (False, True):
        out = linear_cross_entropy(hidden, weight, targets, chunk=8, compiled=compiled)
        results.append((out, torch.autograd.grad(out, [hidden, weight])))
    (ref, ref_grads), (out, grads) = results
    assert out.item() == pytest.approx(ref.item(), rel=FP32_RTOL)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=FP32_RTOL, atol=1e-6)


def _packed_sft_batch(seed: int = 4) -> dict:
    """Three conversations of different lengths in packed rows: restarting position ids and a
    block-diagonal 4D mask, prompt tokens masked out."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n, prompt in ((30, 10), (18, 5), (25, 12)):
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    batch = pack_batch(examples, pack_len=48, pad_id=0)
    assert batch["attention_mask"].dim() == 4 and batch["input_ids"].size(0) == 2
    return batch


def test_chunked_loss_through_peft_lora_on_packed_rows(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                 target_modules=["q_proj", "v_proj", "down_proj"]))
    # LoRA's B starts at zero, which would leave A's gradients at zero: move it off.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(5))
    parts = causal_lm_parts(model)
    assert parts is not None and parts[1] is model.get_base_model().lm_head
    batch = _packed_sft_batch()
    reference, chunked = _loss_and_grads(model, batch, 0), _loss_and_grads(model, batch, 9)
    assert all("lora_" in name for name in reference[1])
    _assert_close(reference, chunked, FP32_RTOL)


def test_a_head_that_is_not_one_matrix_takes_the_standard_path(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["lm_head"]))
    assert causal_lm_parts(model) is None
    batch = _batch(6)
    _assert_close(_loss_and_grads(model, batch, 0), _loss_and_grads(model, batch, 8), FP32_RTOL)


def test_pretrain_with_loss_chunk_follows_the_standard_run(shards_dir, tokenizer_dir, tmp_path):
    def run(name, **kw):
        cfg = PretrainConfig(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir), out_dir=str(tmp_path / name),
                             seq_len=32, micro_batch=4, grad_accum=2, max_steps=5, warmup_steps=2, lr=3e-3,
                             eval_batches=2, log_every=1, device="cpu", **kw)
        stats = pretrain(cfg)
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return stats, [x["loss"] for x in lines if "loss" in x]

    (ref, ref_losses), (chunked, losses) = run("standard"), run("chunked", loss_chunk=24)
    assert chunked["loss_chunk"] == 24 and len(losses) == len(ref_losses) == 5
    assert losses == pytest.approx(ref_losses, rel=FP32_RTOL)
    assert chunked["val_loss"] == pytest.approx(ref["val_loss"], rel=FP32_RTOL)
