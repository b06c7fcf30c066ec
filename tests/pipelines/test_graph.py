"""The Dagster layer: definitions load, and the whole graph materializes with the tiny preset."""

from __future__ import annotations

import json
import math

import dagster as dg
import pytest


def test_definitions_load_and_declare_versions():
    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"crawled_pages", "extracted_documents", "filtered_documents", "quality_classifier",
            "quality_filtered_documents", "deduplicated_documents",
            "decontaminated_documents", "tokenizer", "token_shards", "sft_conversations",
            "pretrained_model", "sft_model", "lora_adapter", "base_model_eval", "sft_model_eval", "lora_model_eval",
            "pipeline_report"} <= keys
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key} has no code_version"
    for job in ("curation", "training", "adapters", "adapter_evaluation", "alignment", "scaling"):
        assert defs.resolve_job_def(job)
    # One partition per adapter task file, whatever tasks there are.
    from lmforge.train.tasks import task_names

    assert defs.resolve_job_def("adapters").partitions_def.get_partition_keys() == task_names()
    schedule = defs.resolve_schedule_def("nightly_curation")
    assert schedule.cron_schedule == "0 2 * * *"
    for sensor in ("train_after_curation", "adapters_after_training", "evaluate_adapters",
                   "align_after_training"):
        assert defs.resolve_sensor_def(sensor)
    checked = {k.asset_key.to_user_string() for k in graph.asset_check_keys}
    for needed in ("extracted_documents", "filtered_documents", "deduplicated_documents",
                   "pretrained_model", "sft_model", "base_model_eval", "lora_model_eval",
                   "reward_model", "dpo_model", "grpo_model", "arena_ratings"):
        assert needed in checked, f"no asset check on {needed}"


def test_every_preset_builds_its_jobs_schedule_and_run_config():
    """Every preset has its four jobs, its nightly schedule (running only where it says so) and a
    run config each of its jobs accepts; its suite is a suite."""
    from lmforge.evaluate.harness import suite_names
    from pipelines.definitions import JOB_ASSETS, defs
    from pipelines.presets import PRESETS, job_name, run_config, schedule_name

    for name, preset in PRESETS.items():
        assert preset.suite in suite_names()
        for kind, assets in JOB_ASSETS.items():
            job = defs.resolve_job_def(job_name(kind, name))
            assert job.tags["preset"] == name
            dg.validate_run_config(job, run_config(name, assets=assets))
        if preset.nightly_at:
            schedule = defs.resolve_schedule_def(schedule_name(name))
            hour, minute = preset.nightly_at
            assert schedule.cron_schedule == f"{minute} {hour} * * *"
            assert schedule.job_name == job_name("curation", name)
            assert (schedule.default_status == dg.DefaultScheduleStatus.RUNNING) == preset.schedule_running
    with pytest.raises(ValueError, match="unknown preset"):
        run_config("nope")


def test_a_preset_that_refers_to_something_missing_fails_in_one_line(monkeypatch):
    from lmforge.errors import LmforgeError
    from pipelines import presets
    from pipelines.definitions import _group_of

    assets = set(_group_of)
    tiny = presets.PRESETS["tiny"]
    monkeypatch.setitem(presets.PRESETS, "typo", presets.Preset("typo", "x", suite="smok"))
    with pytest.raises(LmforgeError, match="preset 'typo': suite 'smok'"):
        presets.validate_presets(assets, {"smoke", "standard"})
    monkeypatch.setitem(presets.PRESETS, "typo", presets.Preset(
        "typo", "x", suite="smoke", config={"tokeniser": {"vocab_size": 8}}))
    with pytest.raises(LmforgeError, match="unknown asset.*tokeniser"):
        presets.validate_presets(assets, {"smoke", "standard"})
    assert tiny.suite == "smoke"


def _run(defs, name, partition, overrides=None, tags=None):
    from pipelines.definitions import JOB_ASSETS
    from pipelines.presets import run_config

    result = defs.resolve_job_def(name).execute_in_process(
        run_config=run_config("tiny", overrides, assets=JOB_ASSETS[name]),
        instance=dg.DagsterInstance.get(), raise_on_error=False, partition_key=partition,
        tags=tags)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    for check in result.get_asset_check_evaluations():
        if check.severity == dg.AssetCheckSeverity.ERROR:
            assert check.passed, f"{check.asset_check_key} failed: {check.description}"
    return result


@pytest.fixture
def instance_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "dagster").mkdir()
    return tmp_path


@pytest.mark.slow
def test_a_new_day_is_deduplicated_against_earlier_days(instance_dirs):
    """Nightly curation: day 2 takes day 1's WARC files as an existing-WARC source, so its
    documents are all duplicates of day 1's (found through the persistent index), and
    materializing day 2 again gives the same result."""
    import pyarrow.parquet as pq

    from pipelines.definitions import defs

    _run(defs, "curation", "2026-03-01", {"crawled_pages": {"max_pages": 30, "max_depth": 1}})
    day1_warcs = instance_dirs / "artifacts" / "crawled_pages" / "2026-03-01"
    small = {"crawled_pages": {"warc_sources": [str(day1_warcs)]}}
    _run(defs, "curation", "2026-03-02", small)
    dedup = instance_dirs / "artifacts" / "deduplicated_documents"
    day1 = pq.read_table(dedup / "documents" / "2026-03-01.parquet").column("id").to_pylist()
    day2_in = pq.read_table(instance_dirs / "artifacts" / "quality_filtered_documents" /
                            "documents" / "2026-03-02.parquet").num_rows
    removed = pq.read_table(dedup / "documents" / "2026-03-02.removed.parquet").to_pylist()
    assert day1 and day2_in
    # Day 2 holds the same pages; only a page day 1's quality filter dropped (the classifier is
    # retrained each day) may be new. Nothing day 1 kept is kept again.
    assert len(removed) >= 0.8 * day2_in, "day 2 repeats day 1 but was not found duplicate"
    day1_texts = set(pq.read_table(dedup / "documents" / "2026-03-01.parquet").column("text").to_pylist())
    day2_kept = pq.read_table(dedup / "documents" / "2026-03-02.parquet").column("text").to_pylist()
    assert not day1_texts & set(day2_kept)
    assert {r["duplicate_of"] for r in removed} <= set(day1)
    kept_before = pq.read_table(dedup / "documents" / "2026-03-02.parquet").num_rows
    _run(defs, "curation", "2026-03-02", small)  # again: starts from day 1's index, same result
    assert pq.read_table(dedup / "documents" / "2026-03-02.parquet").num_rows == kept_before
    # One index directory per day (Parquet, .npy and JSON: no pickle), and nothing else.
    assert sorted(p.name for p in (dedup / "index").iterdir()) == ["2026-03-01", "2026-03-02"]
    assert (dedup / "index" / "2026-03-02" / "manifest.json").is_file()


def _sensor_requests(sensor, result, extra_tags=None, drop_tags=()):
    """What a run status sensor asks for after the run of ``result`` succeeded (with
    ``extra_tags`` added to that run's tags and ``drop_tags`` removed, to stand for how it was
    started)."""
    run = result.dagster_run
    if extra_tags or drop_tags:
        tags = {k: v for k, v in run.tags.items() if k not in drop_tags}
        run = run.with_tags({**tags, **(extra_tags or {})})
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=result.get_run_success_event(),
        dagster_instance=dg.DagsterInstance.get(), dagster_run=run)
    out = sensor(context)
    return out if isinstance(out, (list, dg.SkipReason)) else [out]


def _assistant_nll(model, tokenizer, conversations) -> float:
    """Mean NLL of the assistant tokens of ``conversations``, the way SFT trains them."""
    import torch

    from lmforge.train.sft import tokenize_conversation

    total, n = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            ex = tokenize_conversation(tokenizer, messages, max_len=256)
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum"))
            n += int((labels[:, 1:] != -100).sum())
    return total / n


@pytest.mark.slow
def test_whole_graph_materializes_with_tiny_preset(instance_dirs):
    """Curation for one day, training on the smoke suite, one adapter per task, an adapter
    evaluation: each chained by the sensors; the models load with HF, the adapters with PEFT,
    and swapping adapters swaps tasks."""
    from pipelines.definitions import (CHAIN_TAG, JOB_ASSETS, SCALING_ASSETS, SUITE_TAG,
                                       adapters_after_training, align_after_training, defs,
                                       evaluate_adapters, train_after_curation)

    curation = _run(defs, "curation", "2026-03-01")
    assert isinstance(_sensor_requests(train_after_curation, curation), dg.SkipReason), \
        "a curation run started by hand must not start training"
    (scheduled,) = _sensor_requests(train_after_curation, curation,
                                    {"dagster/schedule_name": "nightly_curation"})
    assert (scheduled.job_name, scheduled.partition_key) == ("training", "smoke")
    assert scheduled.tags[CHAIN_TAG] == curation.run_id
    training = _run(defs, "training", "smoke", tags={CHAIN_TAG: "test-chain"})
    requests = _sensor_requests(adapters_after_training, training)
    assert sorted(r.partition_key for r in requests) == ["math", "signatures"]
    assert {r.job_name for r in requests} == {"adapters"}
    for request in requests:
        adapter = _run(defs, "adapters", request.partition_key, tags=request.tags)
    (evaluation,) = _sensor_requests(evaluate_adapters, adapter)  # the last one: signatures
    assert evaluation.job_name == "adapter_evaluation"
    assert str(evaluation.partition_key) == "signatures|smoke"
    # The suite travels with the chain: adapters trained after a `standard` training run are
    # evaluated on `standard`.
    (standard,) = _sensor_requests(evaluate_adapters, adapter, {SUITE_TAG: "standard"})
    assert str(standard.partition_key) == "signatures|standard"
    assert isinstance(_sensor_requests(evaluate_adapters, adapter, drop_tags=[CHAIN_TAG]),
                      dg.SkipReason), "an adapter trained by hand must not set off its evaluation"
    _run(defs, "adapter_evaluation", evaluation.partition_key)
    # Past SFT: the chain runs the alignment job after training; the arena meets every model.
    (align,) = _sensor_requests(align_after_training, training)
    assert align.job_name == "alignment" and align.tags[CHAIN_TAG] == "test-chain"
    assert isinstance(_sensor_requests(align_after_training, training, drop_tags=[CHAIN_TAG]),
                      dg.SkipReason)
    _run(defs, "alignment", None, tags=align.tags)

    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    expected = {"lora_adapter": {"math", "signatures"}, "lora_model_eval": {"signatures|smoke"},
                **{name: {"2026-03-01"} for name in JOB_ASSETS["curation"]}}
    for key in graph.get_all_asset_keys():
        if key.to_user_string() in SCALING_ASSETS:  # their own job, run by hand
            continue
        if graph.get(key).is_partitioned:
            parts = {str(p) for p in instance.get_materialized_partitions(key)}
            assert parts == expected.get(key.to_user_string(), {"smoke"}), f"{key}: {parts}"
        else:
            assert instance.get_latest_materialization_event(key) is not None, f"{key} not materialized"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    art = instance_dirs / "artifacts"
    for model_dir in (art / "pretrained_model" / "run" / "model", art / "sft_model" / "run" / "model"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        ids = tok("def main():", return_tensors="pt").input_ids
        assert model(ids).logits.shape[-1] >= len(tok) - 8
    tok = AutoTokenizer.from_pretrained(art / "tokenizer" / "tokenizer")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)

    # One base model, two adapters: held-out questions of each task are answered better (lower
    # assistant-token loss) with that task's adapter than with the other task's.
    from lmforge.paths import benchmarks_dir
    from lmforge.train.sft_data import read_conversations, sft_data_from_documents, sft_data_from_qa

    held_math = instance_dirs / "math_test.jsonl"
    sft_data_from_qa(benchmarks_dir() / "gsm8k" / "test.jsonl", held_math, limit=40)
    all_signatures = instance_dirs / "signatures_all.jsonl"
    sft_data_from_documents(art / "decontaminated_documents" / "documents", all_signatures,
                            max_examples=10_000, kinds=["signature"])
    trained = {json.dumps(c) for c in
               read_conversations(art / "sft_conversations" / "tasks" / "signatures.jsonl")}
    held_signatures = [c for c in read_conversations(all_signatures) if json.dumps(c) not in trained]
    assert len(held_signatures) >= 20
    held = {"math": list(read_conversations(held_math)), "signatures": held_signatures[:40]}

    base = AutoModelForCausalLM.from_pretrained(art / "sft_model" / "run" / "model")
    tok = AutoTokenizer.from_pretrained(art / "lora_adapter" / "math" / "adapter")
    model = PeftModel.from_pretrained(base, art / "lora_adapter" / "math" / "adapter", adapter_name="math")
    model.load_adapter(art / "lora_adapter" / "signatures" / "adapter", adapter_name="signatures")
    model.eval()
    nll = {}
    for adapter in ("math", "signatures"):
        model.set_adapter(adapter)
        nll[adapter] = {task: _assistant_nll(model, tok, convs) for task, convs in held.items()}
    assert nll["math"]["math"] < nll["signatures"]["math"], nll
    assert nll["signatures"]["signatures"] < nll["math"]["signatures"], nll

    report = (art / "pipeline_report" / "report" / "report.md").read_text()
    assert "Data funnel" in report and "lora:math" in report and "lora:signatures (smoke)" in report
    assert "## Alignment" in report and "## Arena" in report
    ratings = json.loads((art / "arena_ratings" / "arena" / "ratings.json").read_text())
    assert set(ratings["ratings"]["models"]) == {"base", "sft", "lora:math", "lora:signatures",
                                                 "dpo", "grpo"}
    pairs = [json.loads(line) for line in
             (art / "preference_pairs" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all({"prompt", "chosen", "rejected"} <= set(p) for p in pairs)
    dpo = json.loads((art / "dpo_model" / "run" / "summary.json").read_text())
    assert abs(dpo["first_loss"] - 0.6931) < 1e-3  # policy = reference at the first step
    from lmforge.align.reward_model import load_reward_model

    rm = load_reward_model(art / "reward_model" / "run" / "model")
    scores = rm.score([p["prompt"] for p in pairs[:8]] * 2,
                      [p["chosen"] for p in pairs[:8]] + [p["rejected"] for p in pairs[:8]])
    assert len(scores) == 16 and all(math.isfinite(x) for x in scores)
    assert AutoModelForCausalLM.from_pretrained(art / "grpo_model" / "run" / "model")
    summary = json.loads((art / "base_model_eval" / "smoke" / "summary.json").read_text())
    assert any(t.get("score") is not None for t in summary["tasks"]), "no evaluation score"
    adapter_summary = json.loads((art / "lora_model_eval" / "signatures" / "smoke" / "summary.json").read_text())
    assert any(t.get("score") is not None for t in adapter_summary["tasks"])

