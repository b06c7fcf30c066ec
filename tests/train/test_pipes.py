"""Training as a separate process under Dagster Pipes: the process started from
``launch.command`` speaks the Pipes protocol (context in, messages out) that
``PipesSubprocessClient`` sets up, logging progress and reporting the materialization."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import dagster as dg
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR, encode_env_var

from lmforge.train.launch import command
from lmforge.train.pretrain import PretrainConfig
from resources import TrainingLauncher


def test_pretrain_under_pipes_reports_progress_and_metadata(shards_dir, tokenizer_dir, tmp_path):
    cfg = PretrainConfig(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir), out_dir=str(tmp_path / "run"),
                         seq_len=32, micro_batch=4, max_steps=4, warmup_steps=1, log_every=2, eval_batches=1,
                         device="cpu")
    config_path = tmp_path / "pretrain.json"
    config_path.write_text(cfg.model_dump_json())
    messages = tmp_path / "messages.jsonl"
    context = {"asset_keys": ["pretrained_model"], "code_version_by_asset_key": None,
               "provenance_by_asset_key": None, "partition_key": None, "partition_key_range": None,
               "partition_time_window": None, "run_id": "test-run", "job_name": None, "retry_number": 0,
               "extras": {}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_env_var({"data": context}),
           DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_env_var({"path": str(messages)})}
    proc = subprocess.run(command("lmforge.train.pretrain", config_path, 1, "python"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    msgs = [json.loads(line) for line in messages.read_text().splitlines()]
    methods = [m["method"] for m in msgs]
    assert methods[0] == "opened" and methods[-1] == "closed"
    logs = [m["params"]["message"] for m in msgs if m["method"] == "log"]
    assert any(line.startswith("step 2/4 loss") and "tokens/s" in line and "MFU" in line for line in logs)
    (report,) = [m["params"] for m in msgs if m["method"] == "report_asset_materialization"]
    metadata = {k: v["raw_value"] for k, v in report["metadata"].items()}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert metadata["final_loss"] == summary["final_loss"] and metadata["steps"] == 4
    assert {"tokens_per_s", "mfu", "params", "val_loss", "first_loss"} <= set(metadata)
    assert metadata["engine"] == "plain"
    # The loss curve arrives typed, so Dagster renders it as Markdown with the PNG inline.
    png = tmp_path / "run" / "loss_curve.png"
    assert report["metadata"]["loss_curve"]["type"] == "md"
    assert metadata["loss_curve"].startswith("![pretrain tiny](data:image/png;base64,")
    assert base64.b64decode(metadata["loss_curve"].split(",", 1)[1][:-1]) == png.read_bytes()
    assert report["metadata"]["loss_curve_path"] == {"raw_value": str(png), "type": "path"}
    assert "loss_curve" not in summary  # the picture is for the UI; summary.json stays small


def test_a_training_that_fails_fails_its_step_with_its_own_one_line_error(shards_dir, tokenizer_dir,
                                                                          tmp_path):
    """Through the TrainingLauncher, a training that stops before it opens Pipes (too little
    validation data for one window) fails the asset with the process's own error line, not
    only "failed with code 2"."""
    cfg = PretrainConfig(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir),
                         out_dir=str(tmp_path / "run"), seq_len=100_000, max_steps=2, device="cpu")

    @dg.asset
    def failing(context, launcher: TrainingLauncher):
        return launcher.run(context, "lmforge.train.pretrain", cfg.model_dump(mode="json"),
                            tmp_path / "config.json")

    result = dg.materialize([failing], resources={"launcher": TrainingLauncher()},
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "lmforge pretrain: error:" in message and "fewer than one window" in message, message
    assert not list(tmp_path.glob("config.*.errors")) and not list(tmp_path.glob("config.*.json"))
