"""The plain PyTorch engine against DeepSpeed's: the same trajectory, interchangeable checkpoints,
and a clear error where the plain engine cannot train.

Why the weights are compared exactly: on CPU both engines run the same floating-point operations
in the same order (``train`` pins torch to ``cpu_threads``, 1 by default, for every run).
``PlainEngine`` divides each micro-batch's loss by grad_accum, sums the global gradient norm as
DeepSpeed's stage-0 clipping does (square root of the summed squared per-tensor norms), clips with
the same coefficient (max_norm / (norm + 1e-6), capped at 1), and the optimizer is the same torch
AdamW. No tolerance is safe here: when the plain engine took the norm with
``torch.nn.utils.clip_grad_norm_`` (the norm of the stacked norms, one float32 ulp off DeepSpeed's
in about 4 steps out of 10), AdamW amplified that into weights 1.2e-6 apart after two steps, on an
AVX2 CPU, and 1.2e-7 apart with PyTorch's non-vectorised kernels: how far such noise travels
depends on the machine. Gradient norms the loop logs for DeepSpeed are summed the other way (see
``train``), so those alone are compared to ``NORM_TOLERANCE``.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.train import data as data_mod
from lmforge.train.loop import (PlainEngine, TrainConfig, deepspeed_config, init_distributed, make_optimizer,
                                resolve_engine)
from lmforge.train.model import build_model, model_config
from lmforge.train.pretrain import PretrainConfig, main, pretrain

NORM_TOLERANCE = 1e-6


def _config(shards_dir, tokenizer_dir, out, **kw) -> PretrainConfig:
    base = dict(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir), out_dir=str(out), seq_len=32,
                micro_batch=4, grad_accum=2, max_steps=6, save_every=3, warmup_steps=2, lr=3e-3,
                eval_batches=2, log_every=1, device="cpu")
    base.update(kw)
    return PretrainConfig(**base)


def _train_lines(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


@pytest.fixture(scope="module")
def plain_run(shards_dir, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return out, pretrain(_config(shards_dir, tokenizer_dir, out, engine="auto"))


@pytest.fixture
def one_thread():
    """Pins torch to one thread, as ``train`` does, and gives the next test its setting back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_plain_engine_steps_like_deepspeed(grad_clip, one_thread):
    """Engine level: 3 accumulation steps, step() after each micro-batch as the loop calls it,
    with clipping off and with a threshold every step exceeds."""
    import deepspeed

    init_distributed("cpu")
    cfg = TrainConfig(micro_batch=2, grad_accum=3, grad_clip=grad_clip, lr=1e-2)
    data = torch.randint(0, 64, (2 * 3 * 2, 2, 9), generator=torch.Generator().manual_seed(0))

    def run(kind):
        model = build_model(model_config("tiny", 64, seq_len=16), seed=0)
        if kind == "plain":
            engine = PlainEngine(model, make_optimizer(model, cfg), grad_accum=3, grad_clip=grad_clip)
        else:
            engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(model, cfg),
                                              config=deepspeed_config(cfg, 1))
        norms, before = [], None
        for i, ids in enumerate(data):
            loss = torch.nn.functional.cross_entropy(engine(input_ids=ids[:, :-1]).logits.transpose(1, 2), ids[:, 1:])
            engine.backward(loss)
            if i % 3 == 2 and kind == "deepspeed":  # stage 0 DeepSpeed does not keep the norm
                before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            engine.step()
            if i % 3 == 2:
                norms.append(float(before if kind == "deepspeed" else engine.get_global_grad_norm()))
            # Gradients accumulate between boundaries and are dropped after the optimizer step.
            assert all(p.grad is None for p in model.parameters()) == (i % 3 == 2)
        return norms, [p.detach().clone() for p in model.parameters()]

    (plain_norms, plain_w), (ds_norms, ds_w) = run("plain"), run("deepspeed")
    assert plain_norms == pytest.approx(ds_norms, rel=NORM_TOLERANCE)
    if grad_clip:
        assert min(plain_norms) > grad_clip  # every step was clipped
    assert all(torch.equal(a, b) for a, b in zip(plain_w, ds_w))


def test_pretrain_plain_engine_matches_deepspeed(plain_run, shards_dir, tokenizer_dir, tmp_path):
    plain_dir, plain = plain_run
    ds = pretrain(_config(shards_dir, tokenizer_dir, tmp_path / "ds", engine="deepspeed"))
    assert plain["engine"] == "plain" and ds["engine"] == "deepspeed"
    ours, theirs = _train_lines(plain_dir), _train_lines(tmp_path / "ds")
    assert [x["step"] for x in ours] == [x["step"] for x in theirs] == list(range(1, 7))
    for a, b in zip(ours, theirs):
        assert a["loss"] == b["loss"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=NORM_TOLERANCE)
    assert ours[-1]["loss"] < ours[0]["loss"]
    assert plain["val_loss"] == ds["val_loss"]
    for (name, a), b in zip(plain.model.named_parameters(), ds.model.parameters()):
        assert torch.equal(a, b), f"{name}: max |diff| {(a - b).abs().max().item():.3g}"
    # Same checkpoint layout: DeepSpeed's stage-0 file under each tag.
    for run in (plain_dir, tmp_path / "ds"):
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "latest", "run_fingerprint.json", "step_00000003", "step_00000006", "train_config.json"]
        assert (run / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt").exists()


def test_deepspeed_checkpoint_resumes_under_plain_engine(plain_run, shards_dir, tokenizer_dir, tmp_path,
                                                         monkeypatch):
    """A run started before the plain engine existed (DeepSpeed on one process) continues under
    the new default and ends exactly where an uninterrupted plain run ends."""
    _, full = plain_run
    real_batch = data_mod.TokenWindows.batch

    def crash_at_step_4(self, step, *a, **k):
        if step == 4:
            raise KeyboardInterrupt("simulated preemption")
        return real_batch(self, step, *a, **k)

    monkeypatch.setattr(data_mod.TokenWindows, "batch", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(shards_dir, tokenizer_dir, tmp_path, engine="deepspeed"))
    monkeypatch.setattr(data_mod.TokenWindows, "batch", real_batch)

    resumed = pretrain(_config(shards_dir, tokenizer_dir, tmp_path, engine="auto"))
    assert resumed["engine"] == "plain" and resumed["resumed_from"] == 3
    assert resumed["final_loss"] == full["final_loss"] and resumed["val_loss"] == full["val_loss"]
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))


def test_engine_choice_and_clear_errors(shards_dir, tokenizer_dir, tmp_path, capsys):
    assert resolve_engine(TrainConfig(), 1) == "plain"
    assert resolve_engine(TrainConfig(), 2) == "deepspeed"
    assert resolve_engine(TrainConfig(zero_stage=2), 1) == "deepspeed"
    assert resolve_engine(TrainConfig(deepspeed={"bf16": {"enabled": True}}), 1) == "deepspeed"
    assert resolve_engine(TrainConfig(engine="deepspeed"), 1) == "deepspeed"
    assert resolve_engine(TrainConfig(loss_chunk=256, engine="deepspeed"), 2) == "deepspeed"
    with pytest.raises(ValueError, match="engine='plain' trains one process.*2 process"):
        resolve_engine(TrainConfig(engine="plain"), 2)
    with pytest.raises(ValueError, match="engine='plain'.*zero_stage=1"):
        resolve_engine(TrainConfig(engine="plain", zero_stage=1), 1)
    with pytest.raises(ValueError, match="loss_chunk works with the plain engine"):
        resolve_engine(TrainConfig(loss_chunk=256, zero_stage=3), 2)
    with pytest.raises(ValueError):
        TrainConfig(engine="ddp")
    # The CLI: one line, exit code 2, before any training.
    rc = main(["--data", str(shards_dir), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "r"),
               "--device", "cpu", "--engine", "plain", "--zero-stage", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "engine='plain' trains one process" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_attention_backend_math_trains_and_an_unusable_one_is_a_clear_error(plain_run, shards_dir, tokenizer_dir,
                                                                             tmp_path, capsys):
    from lmforge.train.model import check_attention_backend

    _, auto = plain_run
    math = pretrain(_config(shards_dir, tokenizer_dir, tmp_path / "math", attention_backend="math"))
    assert math["attention_backend"] == "math"
    # Another kernel, the same attention: only rounding differs from PyTorch's own choice.
    assert math["final_loss"] == pytest.approx(auto["final_loss"], rel=1e-4)
    assert math["final_loss"] < math["first_loss"]

    model = build_model(model_config("tiny", 64), seed=0)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query
    cpu = torch.device("cpu")
    for masked in (False, True):  # unmasked rows (enable_gqa, is_causal), masked rows (repeated KV, bool mask)
        for name in ("cudnn", "efficient"):  # GPU-only kernels
            with pytest.raises(ValueError, match=f"attention_backend='{name}' cannot run this model's attention "
                                                 f"on cpu") as err:
                check_attention_backend(name, model, cpu, torch.float32, masked=masked)
            # The grouped-query note belongs to the unmasked probe only (masked rows repeat the KV heads).
            assert ("enable_gqa) only with the flash and math kernels" in str(err.value)) == (not masked)
            assert ("masked (padded or packed) rows" in str(err.value)) == masked
        check_attention_backend("math", model, cpu, torch.float32, masked=masked)
        check_attention_backend("flash", model, cpu, torch.float32, masked=masked)  # PyTorch has a CPU flash kernel

    # PyTorch says why it refused a kernel in warnings, not in the error: they reach the message.
    # And a torch without enable_gqa (< 2.5, a TypeError) is the same clear error.
    def refusing_sdpa(*args, **kwargs):
        import warnings
        warnings.warn("Flash attention does not support non-null attn_mask.")
        raise RuntimeError("No available kernel. Aborting execution.")

    def old_sdpa(*args, enable_gqa=None, **kwargs):
        raise TypeError("scaled_dot_product_attention() got an unexpected keyword argument 'enable_gqa'")

    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        calls.append((q.size(1), k.size(1), kwargs))
        return sdpa(q, k, v, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        # Probed as transformers calls SDPA: unmasked rows with enable_gqa and is_causal, masked
        # rows with the KV heads repeated and a causal boolean mask.
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
        check_attention_backend("math", model, cpu, torch.float32)
        check_attention_backend("math", model, cpu, torch.float32, masked=True)
        (q_heads, kv_heads, unmasked), (_, masked_kv_heads, masked) = calls
        assert kv_heads == model.config.num_key_value_heads and unmasked == {"is_causal": True, "enable_gqa": True}
        assert masked_kv_heads == q_heads and masked.keys() == {"attn_mask"}
        mask = masked["attn_mask"]
        assert mask.dtype == torch.bool and mask.shape == (1, 1, 16, 16) and torch.equal(mask[0, 0], mask[0, 0].tril())
        assert not mask[0, 0, 0, 1] and mask[0, 0, 1, 0]

        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", refusing_sdpa)
        with pytest.raises(ValueError, match="PyTorch's warnings: Flash attention does not support non-null attn_mask"):
            check_attention_backend("flash", model, cpu, torch.float32, masked=True)
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", old_sdpa)
        with pytest.raises(ValueError, match="lacks enable_gqa; lmforge needs torch >= 2.5"):
            check_attention_backend("math", model, cpu, torch.float32)

    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="needs the model's attention to be SDPA"):
        check_attention_backend("math", model, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError):
        TrainConfig(attention_backend="flex")
    rc = main(["--data", str(shards_dir), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "r"),
               "--device", "cpu", "--attention-backend", "cudnn"])
    err = capsys.readouterr().err
    assert rc == 2 and "attention_backend='cudnn' cannot run" in err and "Traceback" not in err
