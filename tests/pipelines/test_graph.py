"""The Dagster layer: definitions load, and the whole graph materializes with the tiny preset."""

from __future__ import annotations

import datetime
import json

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
    assert defs.resolve_job_def("full_pipeline")
    schedule = defs.resolve_schedule_def("nightly_full_pipeline")
    assert schedule.cron_schedule == "0 2 * * *"
    request = schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 1, 1, 2, tzinfo=datetime.timezone.utc)))
    assert request.partition_key == "smoke"
    checked = {k.asset_key.to_user_string() for k in graph.asset_check_keys}
    for needed in ("extracted_documents", "filtered_documents", "deduplicated_documents",
                   "pretrained_model", "sft_model", "base_model_eval", "lora_model_eval"):
        assert needed in checked, f"no asset check on {needed}"


def test_presets_are_valid_run_config():
    """Every preset's run config is accepted by the job it belongs to."""
    from pipelines.definitions import defs
    from pipelines.presets import PRESETS, run_config

    job = defs.resolve_job_def("full_pipeline")
    for preset in PRESETS:
        dg.validate_run_config(job, run_config(preset))
    with pytest.raises(ValueError, match="unknown preset"):
        run_config("nope")


@pytest.mark.slow
def test_whole_graph_materializes_with_tiny_preset(tmp_path, monkeypatch):
    """Crawl to report on the tiny preset; the models and the adapter load with HF and PEFT."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "dagster").mkdir()
    from pipelines.definitions import defs
    from pipelines.presets import run_config

    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("full_pipeline").execute_in_process(
        run_config=run_config("tiny"), instance=instance, raise_on_error=False,
        partition_key="smoke")
    failures = [e.message for e in result.all_events if e.is_failure]
    assert result.success, failures

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        if graph.get(key).is_partitioned:
            assert instance.get_materialized_partitions(key) == {"smoke"}, f"{key}: no smoke eval"
        else:
            assert instance.get_latest_materialization_event(key) is not None, f"{key} not materialized"
    for check in result.get_asset_check_evaluations():
        if check.severity == dg.AssetCheckSeverity.ERROR:
            assert check.passed, f"{check.asset_check_key} failed: {check.description}"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    art = tmp_path / "artifacts"
    for model_dir in (art / "pretrained_model" / "run" / "model", art / "sft_model" / "run" / "model"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        ids = tok("def main():", return_tensors="pt").input_ids
        assert model(ids).logits.shape[-1] >= len(tok) - 8
    tok = AutoTokenizer.from_pretrained(art / "tokenizer" / "tokenizer")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    base = AutoModelForCausalLM.from_pretrained(art / "sft_model" / "run" / "model")
    adapted = PeftModel.from_pretrained(base, art / "lora_adapter" / "adapter")
    assert any("lora_" in n for n, _ in adapted.named_parameters())

    report = (art / "pipeline_report" / "report" / "report.md").read_text()
    assert "Data funnel" in report and "Evaluation" in report
    summary = json.loads((art / "base_model_eval" / "smoke" / "summary.json").read_text())
    assert any(t.get("score") is not None for t in summary["tasks"]), "no evaluation score"
