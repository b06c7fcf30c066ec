"""A real ``kill -9`` in the middle of pretraining, then the same command again.

``test_pretrain.py`` simulates a crash inside one Python process; this test kills a separate
``python -m lmforge.train.pretrain`` process with SIGKILL (no ``finally``, no atexit, no flush), as
a preempted node or the OOM killer would, and checks that running the same command on the same
run directory resumes from the last complete checkpoint and ends exactly where an uninterrupted
run of the same command ends. Once with each engine: the plain one (the default on one process)
and DeepSpeed's; both write DeepSpeed's checkpoint layout.

Why exact equality and not a tolerance: on CPU with one thread per process every kernel is
deterministic, the data a step reads is a pure function of (seed, step), and the checkpoint holds
the weights, AdamW moments and RNG states bit for bit. So the resumed steps compute the same
floating-point operations on the same inputs as the uninterrupted ones; any difference at all
means resume lost or changed state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmforge.paths import REPO_ROOT
from lmforge.train.loop import latest_checkpoint

MAX_STEPS = 32
SAVE_EVERY = 4
# A checkpoint being saved: a temporary that lmforge.io.sweep_stale attributes to its process.
STAGING = ".step_*.lmforge-*.tmp"


def _command(shards_dir: Path, tokenizer_dir: Path, out: Path, engine: str) -> list[str]:
    # Small enough that a step takes tens of milliseconds on a busy core; enough steps that the
    # kill lands well before the end. One thread per process keeps the two runs bit-identical.
    extra = {"log_every": 1, "eval_every": 0, "eval_batches": 2, "warmup_steps": 4, "cpu_threads": 1,
             "engine": engine}
    return [sys.executable, "-m", "lmforge.train.pretrain", "--preset", "tiny",
            "--data", str(shards_dir), "--tokenizer", str(tokenizer_dir), "--out", str(out),
            "--seq-len", "32", "--micro-batch", "4", "--max-steps", str(MAX_STEPS),
            "--save-every", str(SAVE_EVERY), "--device", "cpu", "--seed", "7",
            "--config", json.dumps(extra)]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    # Not a rank of anything: the pretrain process must make its own one-process group.
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def _logged_steps(run: Path) -> list[int]:
    """Steps with a training-loss line in metrics.jsonl (a torn last line is ignored)."""
    steps = []
    path = run / "metrics.jsonl"
    if not path.exists():
        return steps
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            steps.append(record["step"])
    return steps


def _step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def _kill_after_checkpoint(proc: subprocess.Popen, run: Path, log: Path) -> str | None:
    """SIGKILL ``proc`` once a checkpoint exists and two more steps ran, preferably while a
    checkpoint is being written; returns the tag that was being staged at the kill, if any."""
    ckpt = run / "checkpoints"
    deadline = time.monotonic() + 120
    armed_at = None
    staged = None
    while proc.poll() is None:
        assert time.monotonic() < deadline, "pretrain never reached a checkpoint:\n" + log.read_text()[-3000:]
        tag = latest_checkpoint(run)
        if armed_at is None and tag is not None:
            steps = _logged_steps(run)
            if steps and max(steps) >= _step_of(tag) + 2:
                armed_at = time.monotonic()
        if armed_at is not None:
            # A save takes a good share of a step here, so polling usually catches one in flight.
            staging = [p.name for p in ckpt.glob(STAGING + "/step_*")]
            if staging or time.monotonic() - armed_at > 0.5:
                staged = staging[0] if staging else None
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended on its own (rc {proc.returncode}) before it could be killed:\n" + log.read_text()[-3000:])
    return staged


def _plant_torn_checkpoint(run: Path, latest: str) -> str:
    """What a crash in the middle of writing the next checkpoint in place would leave: a newer
    ``step_*`` directory with a truncated model file and no ``latest`` pointing at it."""
    ckpt = run / "checkpoints"
    torn = f"step_{_step_of(latest) + SAVE_EVERY:08d}"
    shutil.copytree(ckpt / latest, ckpt / torn, dirs_exist_ok=True)
    for f in (ckpt / torn).glob("*model_states.pt"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 3])
    (ckpt / torn / "rng_rank0.safetensors").unlink()
    return torn


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    assert tensors, f"no safetensors in {model_dir}"
    return tensors


@pytest.mark.parametrize("engine", ["plain", "deepspeed"])
def test_sigkill_then_same_command_resumes_exactly(engine, shards_dir, tokenizer_dir, tmp_path):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    # The reference and the run to be killed go side by side (one thread each) to save time.
    ref = _start(_command(shards_dir, tokenizer_dir, ref_dir, engine), tmp_path / "ref.log")
    victim = _start(_command(shards_dir, tokenizer_dir, run_dir, engine), tmp_path / "killed.log")
    try:
        staged = _kill_after_checkpoint(victim, run_dir, tmp_path / "killed.log")
        _check_resume(shards_dir, tokenizer_dir, tmp_path, ref, staged, engine)
    finally:
        for proc in (victim, ref):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check_resume(shards_dir, tokenizer_dir, tmp_path, ref, staged, engine):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"

    # The kill left a half-trained run: a complete checkpoint, no export, no summary.
    latest = latest_checkpoint(run_dir)
    assert latest is not None and _step_of(latest) < MAX_STEPS
    assert not (run_dir / "model").exists() and not (run_dir / "summary.json").exists()
    assert max(_logged_steps(run_dir)) >= _step_of(latest) + 1
    if staged is not None and staged != latest:
        # The kill caught a save in flight: its files lie half-written in staging.
        assert list((run_dir / "checkpoints").glob(f".{staged}.lmforge-*.tmp/{staged}"))
    # Whether or not the kill caught a save in flight, also leave the worst case a crash mid-save
    # could: a newer, torn checkpoint directory. Resume must go by ``latest``, not by listing.
    torn = _plant_torn_checkpoint(run_dir, latest)
    # Likewise a metrics line cut off mid-write (a full disk, a power cut): resume must not choke.
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": %d, "loss": 6.' % (max(_logged_steps(run_dir)) + 1))
    print(f"killed at step {max(_logged_steps(run_dir))}, latest {latest}, save in flight: {staged}")
    assert latest_checkpoint(run_dir) == latest

    resumed = subprocess.run(_command(shards_dir, tokenizer_dir, run_dir, engine), cwd=REPO_ROOT, timeout=120,
                             env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {latest}" in resumed.stderr
    assert ref.wait(timeout=120) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    full = json.loads((ref_dir / "summary.json").read_text())
    again = json.loads((run_dir / "summary.json").read_text())
    assert full["engine"] == again["engine"] == engine
    assert full["resumed_from"] is None and again["resumed_from"] == _step_of(latest)
    if staged is not None and staged != latest:  # a save was in flight at the kill: not used
        assert again["resumed_from"] < _step_of(staged)
    assert again["resumed_from"] < _step_of(torn)
    assert again["steps"] == full["steps"] == MAX_STEPS
    assert again["tokens"] == full["tokens"] == MAX_STEPS * 4 * 32
    assert again["first_loss"] == full["first_loss"]
    assert again["final_loss"] == full["final_loss"]
    assert again["val_loss"] == full["val_loss"]
    a, b = _weights(ref_dir / "model"), _weights(run_dir / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The steps the killed process ran past its checkpoint were dropped from metrics.jsonl and
    # run again: one line per step, in order, like the uninterrupted run.
    assert _logged_steps(run_dir) == _logged_steps(ref_dir) == list(range(1, MAX_STEPS + 1))
    # The torn directory was replaced by the real save of its step (and later pruned), and no
    # staging directory is left behind.
    ckpt = run_dir / "checkpoints"
    assert latest_checkpoint(run_dir) == f"step_{MAX_STEPS:08d}"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "run_fingerprint.json",
                                                      f"step_{MAX_STEPS - SAVE_EVERY:08d}",
                                                      f"step_{MAX_STEPS:08d}", "train_config.json"]
