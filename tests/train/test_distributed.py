"""DeepSpeed ZeRO on two CPU processes (torchrun, gloo) follows the single-process run.

Both see the same tokens per step: the data order depends on (seed, step) only, and two ranks with
one micro-batch each split the global batch exactly as one process with two accumulation steps
does. What differs is only floating-point summation order (all-reduce vs accumulation, ZeRO's
flat partitions), so the losses agree to ~1e-6; the tolerance below is 1e-4. The single-process
reference runs on the plain engine (the default there), so this also pins the plain engine to
DeepSpeed ZeRO's trajectory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmforge.train.launch import command
from lmforge.train.pretrain import PretrainConfig, pretrain

STEPS = 5
TOLERANCE = 1e-4


def _config(shards_dir, tokenizer_dir, out, **kw) -> PretrainConfig:
    base = dict(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir), out_dir=str(out), seq_len=32,
                micro_batch=4, max_steps=STEPS, warmup_steps=2, lr=3e-3, eval_batches=2, log_every=1,
                device="cpu")
    base.update(kw)
    return PretrainConfig(**base)


def _losses(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


@pytest.fixture(scope="module")
def single_process_run(shards_dir, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    stats = pretrain(_config(shards_dir, tokenizer_dir, out, grad_accum=2))
    return out, stats


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_two_process_zero_matches_single_process(zero_stage, single_process_run, shards_dir, tokenizer_dir,
                                                 tmp_path):
    ref_dir, ref = single_process_run
    out = tmp_path / f"zero{zero_stage}"
    cfg = _config(shards_dir, tokenizer_dir, out, grad_accum=1, zero_stage=zero_stage)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    # The CLI path: --nproc 2 re-launches `python -m lmforge.train.pretrain` under torchrun.
    proc = subprocess.run([sys.executable, "-m", "lmforge.train.pretrain", "--config", cfg.model_dump_json(),
                           "--nproc", "2"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == zero_stage
    # The reference is the default single-process run: the plain engine, not DeepSpeed's.
    assert summary["engine"] == "deepspeed" and ref["engine"] == "plain"
    ours, theirs = _losses(out), _losses(ref_dir)
    assert len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < TOLERANCE, (ours, theirs)
    assert abs(summary["val_loss"] - ref["val_loss"]) < TOLERANCE
    assert ours[-1] < ours[0]
    # The export gathers ZeRO-3's partitions: it must be the full model, loadable on one process.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sum(p.numel() for p in model.parameters()) == ref["params"]


def test_launch_commands(tmp_path):
    cfg = tmp_path / "c.json"
    assert command("lmforge.train.pretrain", cfg, 1, "python") == [
        sys.executable, "-m", "lmforge.train.pretrain", "--config", str(cfg)]
    tr = command("lmforge.train.sft", cfg, 4, "torchrun")
    assert tr[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc-per-node=4" in tr
    assert "--standalone" in tr
    assert tr[-4:] == ["-m", "lmforge.train.sft", "--config", str(cfg)]
    ds = command("lmforge.train.lora", cfg, 8, "deepspeed")
    assert "deepspeed.launcher.runner" in ds and "--num_gpus=8" in ds and "--no_local_rank" in ds
    with pytest.raises(ValueError):
        command("m", cfg, 2, "python")
    with pytest.raises(ValueError):
        command("m", cfg, 1, "mpirun")
