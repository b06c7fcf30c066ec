"""Pretraining on real text with a real tokenizer: the loss falls, the export loads with
transformers and computes what the trained model computes, and resume is exact."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lmforge.train import data as data_mod
from lmforge.train.pretrain import PretrainConfig, main, pretrain


def small_config(shards_dir, tokenizer_dir, out_dir, **kw) -> PretrainConfig:
    base = dict(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir), out_dir=str(out_dir),
                seq_len=64, micro_batch=8, max_steps=30, warmup_steps=5, lr=3e-3, eval_batches=2,
                eval_every=0, log_every=5, device="cpu")
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(shards_dir, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    stats = pretrain(small_config(shards_dir, tokenizer_dir, out))
    return out, stats


def test_tiny_pretrain_loss_falls(tiny_run):
    out, stats = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    # From ~ln(1024) = 6.93 at initialisation; 30 steps of 512 tokens reach ~6.0 on GSM8K text.
    assert summary["first_loss"] > 6.5
    assert summary["final_loss"] < summary["first_loss"] - 0.7
    assert summary["val_loss"] < summary["first_loss"] - 0.7
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 8 * 64
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [1, 5, 10, 15, 20, 25, 30]
    assert all({"lr", "grad_norm", "tokens_per_s", "mfu"} <= set(x) for x in train_lines)
    assert all(x["grad_norm"] > 0 for x in train_lines)
    assert any("val_loss" in x for x in lines)
    assert any((out / "tensorboard").iterdir())
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000030"


def test_export_loads_and_matches_in_memory_model(tiny_run, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, stats = tiny_run
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert len(tok) == len(AutoTokenizer.from_pretrained(tokenizer_dir))
    assert tok.eos_token == "<|endoftext|>" and tok.chat_template
    ids = tok("Natalia sold 48 clips in April and half as many in May.", return_tensors="pt")["input_ids"]
    model.eval()
    stats.model.eval()
    with torch.no_grad():
        exported = model(ids).logits
        in_memory = stats.model(ids).logits
    assert torch.equal(exported, in_memory)


def test_loss_curve_png_and_its_metadata(tiny_run):
    import base64
    import io

    from matplotlib.image import imread

    from lmforge.train.plots import loss_curve_metadata, read_losses

    out, stats = tiny_run
    png = out / "loss_curve.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(io.BytesIO(data)).shape
    assert width > 300 and height > 200
    train, val = read_losses(out / "metrics.jsonl")
    assert [s for s, _ in train] == [1, 5, 10, 15, 20, 25, 30] and val and val[-1][1] == stats["val_loss"]

    meta = loss_curve_metadata(out, title="again")
    assert meta["loss_curve"]["type"] == "md" and meta["loss_curve_path"] == {"raw_value": str(png), "type": "path"}
    md = meta["loss_curve"]["raw_value"]
    prefix = "![again](data:image/png;base64,"
    assert md.startswith(prefix) and md.endswith(")")
    # The embedded image is the file the call (re)drew, byte for byte.
    assert base64.b64decode(md[len(prefix):-1]) == png.read_bytes()
    # Nothing to draw (a run that has not logged a step): no picture and no metadata.
    empty = out / "empty_run"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"step": 1, "loss": 6.')  # torn line only
    assert loss_curve_metadata(empty) == {} and not (empty / "loss_curve.png").exists()


def test_resume_after_crash_is_exact(shards_dir, tokenizer_dir, tmp_path, monkeypatch):
    kw = dict(max_steps=6, save_every=3, log_every=1, eval_batches=1)
    full = pretrain(small_config(shards_dir, tokenizer_dir, tmp_path / "full", **kw))

    real_batch = data_mod.TokenWindows.batch

    def crash_at_step_4(self, step, *a, **k):
        if step == 4:  # 0-based: the fifth step, after the checkpoint at step 3
            raise KeyboardInterrupt("simulated preemption")
        return real_batch(self, step, *a, **k)

    monkeypatch.setattr(data_mod.TokenWindows, "batch", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_config(shards_dir, tokenizer_dir, tmp_path / "crash", **kw))
    monkeypatch.setattr(data_mod.TokenWindows, "batch", real_batch)
    assert (tmp_path / "crash" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert not (tmp_path / "crash" / "model").exists()

    resumed = pretrain(small_config(shards_dir, tokenizer_dir, tmp_path / "crash", **kw))
    assert resumed["resumed_from"] == 3 and resumed["steps"] == 6
    assert resumed["final_loss"] == full["final_loss"]
    assert resumed["val_loss"] == full["val_loss"]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    steps = [json.loads(x)["step"] for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]  # lines of the crashed step 4 were dropped on resume

    # The same command on a finished run trains nothing and reports the same figures.
    again = pretrain(small_config(shards_dir, tokenizer_dir, tmp_path / "crash", **kw))
    assert again["resumed_from"] == 6 and again["steps"] == 6
    assert (again["first_loss"], again["final_loss"], again["val_loss"]) == (
        full["first_loss"], full["final_loss"], full["val_loss"])

    # After an upstream change (the shards written again: new files) the same command trains
    # again from scratch, to the same figures; so it does after a change of a setting that
    # matters, and then the figures differ.
    train_bin = shards_dir / "train.bin"
    st = train_bin.stat()
    os.utime(train_bin, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fresh = pretrain(small_config(shards_dir, tokenizer_dir, tmp_path / "crash", **kw))
    assert fresh["resumed_from"] is None and fresh["steps"] == 6
    assert fresh["final_loss"] == full["final_loss"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]
    other_lr = pretrain(small_config(shards_dir, tokenizer_dir, tmp_path / "crash", **{**kw, "lr": 1e-3}))
    assert other_lr["resumed_from"] is None and other_lr["final_loss"] != full["final_loss"]


def test_cli_rejects_bad_input(tmp_path, tokenizer_dir, capsys):
    from lmforge.cli import run

    rc = run("pretrain", main, ["--data", str(tmp_path / "nope"), "--tokenizer", str(tokenizer_dir),
                                "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "no token shard header" in capsys.readouterr().err
    assert run("pretrain", main, ["--preset", "huge", "--data", "x", "--tokenizer", "y",
                                  "--out", "z"]) == 2
    # the model's shape is a config field: a head layout that cannot work is one line
    assert run("pretrain", main, ["--n-heads", "3", "--data", "x", "--tokenizer", "y",
                                  "--out", "z"]) == 2
    assert "head layout" in capsys.readouterr().err
