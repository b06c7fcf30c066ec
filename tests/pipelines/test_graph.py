"""The Dagster layer: definitions load, and the whole graph materializes with the tiny preset."""

from __future__ import annotations

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
    assert defs.resolve_job_def("full_pipeline") and defs.resolve_job_def("curation")
    schedule = defs.resolve_schedule_def("nightly_curation")
    assert schedule.cron_schedule == "0 2 * * *"
    assert defs.resolve_sensor_def("train_after_curation")
    checked = {k.asset_key.to_user_string() for k in graph.asset_check_keys}
    for needed in ("extracted_documents", "filtered_documents", "deduplicated_documents",
                   "pretrained_model", "sft_model", "base_model_eval", "lora_model_eval"):
        assert needed in checked, f"no asset check on {needed}"


def test_presets_are_valid_run_config():
    """Every preset's run config is accepted by the jobs it belongs to."""
    from pipelines.definitions import CURATION_ASSETS, MODEL_ASSETS, defs
    from pipelines.presets import PRESETS, job_name, run_config

    for preset in PRESETS:
        for kind, assets in (("curation", CURATION_ASSETS), ("full_pipeline", MODEL_ASSETS)):
            job = defs.resolve_job_def(job_name(kind, preset))
            dg.validate_run_config(job, run_config(preset, assets=assets))
    with pytest.raises(ValueError, match="unknown preset"):
        run_config("nope")


def _run(defs, name, partition, overrides=None):
    from pipelines.definitions import CURATION_ASSETS, MODEL_ASSETS
    from pipelines.presets import run_config

    assets = CURATION_ASSETS if name == "curation" else MODEL_ASSETS
    result = defs.resolve_job_def(name).execute_in_process(
        run_config=run_config("tiny", overrides, assets=assets), instance=dg.DagsterInstance.get(),
        raise_on_error=False, partition_key=partition)
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
    assert sorted(p.name for p in (dedup / "index").glob("*.pkl")) == ["2026-03-01.pkl",
                                                                      "2026-03-02.pkl"]


@pytest.mark.slow
def test_whole_graph_materializes_with_tiny_preset(instance_dirs):
    """Curation for one day, then tokenizer to report on the smoke suite; the models and the
    adapter load with HF and PEFT."""
    from pipelines.definitions import defs

    _run(defs, "curation", "2026-03-01")
    _run(defs, "full_pipeline", "smoke")
    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        parts = instance.get_materialized_partitions(key) if graph.get(key).is_partitioned else None
        if parts is not None:
            assert parts in ({"smoke"}, {"2026-03-01"}), f"{key}: {parts}"
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
    base = AutoModelForCausalLM.from_pretrained(art / "sft_model" / "run" / "model")
    adapted = PeftModel.from_pretrained(base, art / "lora_adapter" / "adapter")
    assert any("lora_" in n for n, _ in adapted.named_parameters())

    report = (art / "pipeline_report" / "report" / "report.md").read_text()
    assert "Data funnel" in report and "Evaluation" in report
    summary = json.loads((art / "base_model_eval" / "smoke" / "summary.json").read_text())
    assert any(t.get("score") is not None for t in summary["tasks"]), "no evaluation score"
