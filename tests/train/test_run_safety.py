"""Run directories are safe to share and to lose a process in.

* Nothing read from a run directory runs code: a pickle planted in a checkpoint (one whose
  ``__reduce__`` creates a file) is refused with one line, and its payload never runs, under both
  engines and under ZeRO (where DeepSpeed's own loader would unpickle anything).
* RNG states are data (safetensors + JSON), and resume stays exact under ZeRO too.
* ``--out`` is claimed: a directory lmforge did not make, a read-only place, a full disk are one
  line each (exit 2) and leave no staging behind; a run killed with SIGKILL while it retrains in an
  old run directory leaves the old model whole and consistent with its records.
* Bad inputs (token ids beyond the vocabulary, a directory or garbage as ``sft --data``, a base
  model without weights) are one line before the run directory is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.io import OUTPUT_MARKER
from lmforge.paths import REPO_ROOT
from lmforge.train import data as data_mod
from lmforge.train import loop
from lmforge.train.pretrain import main as pretrain_main

from .conftest import write_shard


class Payload:
    """A pickle that creates ``marker`` when it is unpickled (an attacker's code would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    path.unlink(missing_ok=True)
    torch.save({"module": Payload(marker)}, path)


def _pretrain_argv(shards_dir, tokenizer_dir, out, **kw) -> list[str]:
    args = {"--preset": "tiny", "--data": shards_dir, "--tokenizer": tokenizer_dir, "--out": out,
            "--seq-len": 32, "--micro-batch": 2, "--max-steps": 2, "--save-every": 2, "--device": "cpu",
            "--seed": 3, **kw}
    argv = [str(x) for kv in args.items() for x in kv]
    return argv + ["--config", json.dumps({"eval_batches": 0, "warmup_steps": 1, "log_every": 1})]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LMFORGE_DEBUG"):
        env.pop(k, None)
    return env


def _cli(module: str, argv: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"lmforge {command}: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]


def _digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# no code from the artifact store


def test_the_payload_is_live(tmp_path):
    """The planted file is a real attack: a plain ``torch.load`` runs it (so the tests below
    would fail if the loop still loaded checkpoints that way)."""
    marker = tmp_path / "pwned"
    _plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("planted", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
def test_planted_pickle_is_refused_on_resume_and_never_runs(planted, shards_dir, tokenizer_dir, tmp_path,
                                                            capsys):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    argv = _pretrain_argv(shards_dir, tokenizer_dir, run)
    assert pretrain_main(argv) == 0
    capsys.readouterr()
    tag_dir = run / "checkpoints" / "step_00000002"
    assert (tag_dir / "rng_rank0.safetensors").is_file() and not (tag_dir / "rng_rank0.pt").exists()
    _plant(tag_dir / planted, marker)

    # The same command resumes from that checkpoint: through the real CLI, one line, exit 2.
    proc = _cli("lmforge.train.pretrain", argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr, "pretrain")
    assert "refusing to load" in line and planted in line and "io.open" in line
    assert not marker.exists()


def test_zero_checkpoint_resumes_exactly_and_refuses_a_planted_optimizer_file(shards_dir, tokenizer_dir,
                                                                             tmp_path, monkeypatch):
    """ZeRO's optimizer files hold DeepSpeed's loss-scaler object: allowed by name, so resume
    works with weights-only loads and stays exact; any other object in them is refused."""
    from lmforge.train.pretrain import PretrainConfig, pretrain

    def config(out):
        return PretrainConfig(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir), out_dir=str(out),
                              seq_len=32, micro_batch=2, max_steps=4, save_every=2, warmup_steps=1,
                              eval_batches=0, device="cpu", engine="deepspeed", zero_stage=1)

    full = pretrain(config(tmp_path / "full"))
    real_batch = data_mod.TokenWindows.batch

    def crash_at_step_3(self, step, *a, **k):
        if step == 3:
            raise KeyboardInterrupt("simulated preemption")
        return real_batch(self, step, *a, **k)

    monkeypatch.setattr(data_mod.TokenWindows, "batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config(tmp_path / "crash"))
    monkeypatch.setattr(data_mod.TokenWindows, "batch", real_batch)
    optim = tmp_path / "crash" / "checkpoints" / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert optim.is_file()
    good = optim.read_bytes()
    marker = tmp_path / "pwned"
    _plant(optim, marker)
    with pytest.raises(LmforgeError, match="refusing to load .*optim_states.pt"):
        pretrain(config(tmp_path / "crash"))
    assert not marker.exists()

    optim.write_bytes(good)
    resumed = pretrain(config(tmp_path / "crash"))
    assert resumed["resumed_from"] == 2 and resumed["final_loss"] == full["final_loss"]
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))


def test_rng_state_round_trips_as_data(tmp_path):
    import random

    from safetensors import safe_open

    path = tmp_path / "rng.safetensors"
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    loop.save_rng_state(path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(3))
    loop.load_rng_state(path)
    again = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])
    with safe_open(str(path), framework="pt") as f:  # a safetensors file, nothing else
        assert {"torch", "numpy_keys"} <= set(f.keys()) and "python" in f.metadata()
    path.write_bytes(b"garbage")
    with pytest.raises(LmforgeError, match="cannot read the RNG state"):
        loop.load_rng_state(path)


# ---------------------------------------------------------------------------------------------
# run directories


def test_out_that_lmforge_did_not_make_is_refused(shards_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert pretrain_main(_pretrain_argv(shards_dir, tokenizer_dir, out)) == 2
    assert "lmforge did not make" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def _mount(args: list[str], target: Path) -> None:
    target.mkdir()
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


def test_read_only_out_is_one_line_before_any_work(shards_dir, tokenizer_dir, base_model_dir, chat_jsonl,
                                                   tmp_path, capsys):
    # chmod does not stop root: a read-only mount does.
    ro = tmp_path / "ro"
    _mount(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"], ro)
    try:
        from lmforge.train.lora import main as lora_main
        from lmforge.train.sft import main as sft_main

        assert pretrain_main(_pretrain_argv(shards_dir, tokenizer_dir, ro / "run")) == 2
        assert "cannot write" in capsys.readouterr().err
        for main in (sft_main, lora_main):
            assert main(["--base", str(base_model_dir), "--data", str(chat_jsonl), "--out", str(ro / "run"),
                         "--max-steps", "1", "--device", "cpu"]) == 2
            err = capsys.readouterr().err
            assert "cannot write" in err and "Traceback" not in err
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", str(ro)])


def test_full_disk_is_one_line_leaves_no_staging_and_the_next_run_recovers(shards_dir, tokenizer_dir,
                                                                          tmp_path, capsys):
    disk = tmp_path / "disk"
    # Room for the run's logs, not for one checkpoint (weights + AdamW moments of ~0.9M params).
    _mount(["-t", "tmpfs", "-o", "size=3m", "tmpfs"], disk)
    try:
        argv = _pretrain_argv(shards_dir, tokenizer_dir, disk / "run", **{"--save-every": 1})
        assert pretrain_main(argv) == 2
        err = capsys.readouterr().err
        assert "no space left on the device" in err and "Traceback" not in err
        assert _temporaries(disk) == []
        assert not (disk / "run" / "model").exists()
        assert loop.latest_checkpoint(disk / "run") is None

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert pretrain_main(argv) == 0
        assert (disk / "run" / "model" / "model.safetensors").is_file()
        assert _temporaries(disk) == []
    finally:
        subprocess.run(["umount", str(disk)])


def test_sigkill_while_retraining_leaves_the_previous_model_whole(shards_dir, tokenizer_dir, tmp_path):
    """A finished run, then the same run directory trained again from scratch with another
    learning rate, killed with SIGKILL after its first checkpoint: model/ is still the first
    run's, with the first run's config and fingerprint; the same command again finishes and
    replaces both together."""
    run = tmp_path / "run"
    assert pretrain_main(_pretrain_argv(shards_dir, tokenizer_dir, run, **{"--lr": 3e-3})) == 0
    model = run / "model"
    first_digest = _digest(model)
    first_config = json.loads((model / "train_config.json").read_text())
    first_fingerprint = (model / "run_fingerprint.json").read_text()
    assert first_config["lr"] == 3e-3 and (run / OUTPUT_MARKER).is_file()
    assert not (run / "train_config.json").exists() and not (run / "run_fingerprint.json").exists()

    argv = _pretrain_argv(shards_dir, tokenizer_dir, run, **{"--lr": 1e-3, "--max-steps": 200,
                                                              "--save-every": 2})
    log = tmp_path / "second.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "lmforge.train.pretrain", *argv], cwd=REPO_ROOT,
                                env=_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while loop.latest_checkpoint(run) != "step_00000004":  # the new run's second save
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # The first run's model, whole, with its own records; the new run's are in checkpoints/.
    assert _digest(model) == first_digest
    assert json.loads((model / "train_config.json").read_text()) == first_config
    assert (model / "run_fingerprint.json").read_text() == first_fingerprint
    assert json.loads((run / "checkpoints" / "train_config.json").read_text())["lr"] == 1e-3

    # The same command again (how often it saves is not part of the fingerprint) resumes the new
    # run, finishes it, and replaces the model and its records together.
    done = _cli("lmforge.train.pretrain", _pretrain_argv(shards_dir, tokenizer_dir, run,
                                                          **{"--lr": 1e-3, "--max-steps": 200,
                                                             "--save-every": 100}), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((model / "train_config.json").read_text())["lr"] == 1e-3
    assert _digest(model) != first_digest
    assert json.loads((model / "run_fingerprint.json").read_text()) == json.loads(
        (run / "checkpoints" / "run_fingerprint.json").read_text())
    assert _temporaries(run) == []


# ---------------------------------------------------------------------------------------------
# bad inputs: one line, before the run directory is made


def test_token_ids_beyond_the_vocabulary_are_refused_before_the_run_directory(shards_dir, tokenizer_dir,
                                                                             tmp_path):
    bad = tmp_path / "bad_shards"
    bad.mkdir()
    tokens = np.fromfile(shards_dir / "train.bin", dtype=np.uint16)[:5000].tolist()
    tokens[1234] = 4000  # the tokenizer has 1024 tokens; the header still says 1024
    write_shard(bad, "train", [tokens], vocab_size=1024, eos_id=0)
    out = tmp_path / "run"
    proc = _cli("lmforge.train.pretrain", _pretrain_argv(bad, tokenizer_dir, out))
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr, "pretrain")
    assert "token id 4000" in line and "1024" in line
    assert not out.exists()


def test_a_header_with_a_larger_vocabulary_is_refused(shards_dir, tokenizer_dir, tmp_path, capsys):
    bad = tmp_path / "bad_shards"
    bad.mkdir()
    write_shard(bad, "train", [list(range(100))], vocab_size=50_000, eos_id=0)
    assert pretrain_main(_pretrain_argv(bad, tokenizer_dir, tmp_path / "run")) == 2
    assert "vocab_size 50000" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_sft_inputs_are_one_line_and_make_nothing(base_model_dir, chat_jsonl, tmp_path, capsys):
    from lmforge.train.sft import main as sft_main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\xff\xfe binary")
    not_chat = tmp_path / "rows.jsonl"
    not_chat.write_text(json.dumps({"text": "a document"}) + "\n")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((base_model_dir / "config.json").read_text())
    out = tmp_path / "run"
    cases = [
        (["--data", str(tmp_path)], "is not a file"),
        (["--data", str(tmp_path / "missing.jsonl")], "no chat data"),
        (["--data", str(empty)], "no conversations"),
        (["--data", str(garbage)], "garbage.jsonl"),
        (["--data", str(not_chat)], "not a chat row"),
        (["--base", str(no_weights), "--data", str(chat_jsonl)], "no weights"),
        (["--base", str(tmp_path / "nope"), "--data", str(chat_jsonl)], "no model directory"),
    ]
    for args, why in cases:
        argv = ["--base", str(base_model_dir), "--out", str(out), "--device", "cpu", *args]
        assert sft_main(argv) == 2, args
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("lmforge sft: error:")]
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in err, (args, err)
        assert not out.exists(), args
