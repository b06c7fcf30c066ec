"""The Dagster layer: definitions load, and the whole graph materializes with the tiny preset."""

from __future__ import annotations


import dagster as dg
import pytest


def test_definitions_load_and_declare_versions():
    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.path[-1] for k in graph.get_all_asset_keys() if k.path[0] == "tiny"}
    assert {"crawled_pages", "extracted_documents", "filtered_documents", "quality_classifier",
            "quality_filtered_documents", "deduplicated_documents",
            "decontaminated_documents", "tokenizer", "token_shards", "sft_conversations",
            "pretrained_model", "sft_model", "lora_adapter", "base_model_eval", "sft_model_eval",
            "lora_model_eval", "released_model", "pipeline_report"} <= keys
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key} has no code_version"
    for job in ("curation", "training", "adapters", "adapter_evaluation", "alignment", "scaling"):
        assert defs.resolve_job_def(job)
    # One partition per adapter task file, whatever tasks there are.
    from lmforge.train.tasks import task_names

    assert defs.resolve_job_def("adapters").partitions_def.get_partition_keys() == task_names()
    schedule = defs.resolve_schedule_def("nightly_curation")
    assert schedule.cron_schedule == "0 2 * * *"
    sensor = defs.resolve_sensor_def("tiny_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    checked = {k.asset_key.path[-1] for k in graph.asset_check_keys if k.asset_key.path[0] == "tiny"}
    for needed in ("extracted_documents", "filtered_documents", "deduplicated_documents",
                   "pretrained_model", "sft_model", "base_model_eval", "lora_model_eval",
                   "reward_model", "dpo_model", "grpo_model", "arena_ratings"):
        assert needed in checked, f"no asset check on {needed}"
    # Automation: training is gated on new tokens, evaluations on the deployment's suite.
    conditions = {k.path[-1]: graph.get(k).automation_condition for k in graph.get_all_asset_keys()
                  if k.path[0] == "tiny"}
    assert conditions["crawled_pages"] is None  # the schedule curates
    assert "new training tokens" in str(conditions["pretrained_model"].children[0].description)


def test_every_preset_is_a_deployment_that_does_not_collide():
    """Every preset is a deployment: its own asset keys (every asset of the graph under its
    prefix), its jobs, schedule and automation sensor, its settings as its assets' config
    defaults, and its own artifact directory; its suite is a suite."""
    from lmforge.evaluate.harness import suite_names
    from pipelines.definitions import JOB_ASSETS, defs
    from pipelines.presets import PRESETS, deployment_name, job_name, run_config, schedule_name

    graph = defs.resolve_asset_graph()
    by_deployment: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        by_deployment.setdefault(key.path[0], set()).add(key.path[-1])
    assert set(by_deployment) == {deployment_name(p) for p in PRESETS}
    assert len({frozenset(v) for v in by_deployment.values()}) == 1  # the same graph in each
    for name, preset in PRESETS.items():
        dep = deployment_name(name)
        assert preset.suite in suite_names()
        for kind, assets in JOB_ASSETS.items():
            job = defs.resolve_job_def(job_name(kind, name))
            assert job.tags["preset"] == name
            assert {k.path[0] for k in job.asset_layer.executable_asset_keys} == {dep}
            dg.validate_run_config(job, run_config(name, assets=assets))
        assert preset.nightly_at, f"{name} has no nightly schedule"
        schedule = defs.resolve_schedule_def(schedule_name(name))
        hour, minute = preset.nightly_at
        assert schedule.cron_schedule == f"{minute} {hour} * * *"
        assert schedule.job_name == job_name("curation", name)
        assert (schedule.default_status == dg.DefaultScheduleStatus.RUNNING) == preset.schedule_running
        assert defs.resolve_sensor_def(f"{dep}_automation")
        # The preset's settings are the defaults of its own assets' config, and nobody else's.
        for asset, values in preset.config.items():
            node = graph.get(dg.AssetKey([dep, asset]))
            defaults = defs.resolve_assets_def(node.key).node_def.config_schema.as_field().default_value
            for field, value in values.items():
                assert defaults[field] == value, (name, asset, field)
    gpt2 = defs.resolve_assets_def(dg.AssetKey(["gpt2_124m", "pretrained_model"]))
    tiny = defs.resolve_assets_def(dg.AssetKey(["tiny", "pretrained_model"]))
    gpt2_default = gpt2.node_def.config_schema.as_field().default_value
    tiny_default = tiny.node_def.config_schema.as_field().default_value
    assert gpt2_default["preset"] == "124m" and tiny_default["preset"] == "tiny"
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


def _run(defs, name, partition, overrides=None, tags=None, selection=None):
    from pipelines.definitions import JOB_ASSETS
    from pipelines.presets import run_config

    assets = set(selection) if selection else JOB_ASSETS[name]
    result = defs.resolve_job_def(name).execute_in_process(
        run_config=run_config("tiny", overrides, assets=assets),
        instance=dg.DagsterInstance.get(), raise_on_error=False, partition_key=partition,
        tags=tags, asset_selection=[dg.AssetKey(["tiny", a]) for a in selection] if selection else None)
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
    from lmforge.io import count_rows, read_parquet_rows, removed_files
    from pipelines.definitions import defs

    def rows(path, column):
        return [r[column] for r in read_parquet_rows(path, [column])]

    _run(defs, "curation", "2026-03-01", {"crawled_pages": {"max_pages": 30, "max_depth": 1}})
    day1_warcs = instance_dirs / "artifacts" / "tiny" / "crawled_pages" / "2026-03-01"
    small = {"crawled_pages": {"warc_sources": [str(day1_warcs)]}}
    _run(defs, "curation", "2026-03-02", small)
    dedup = instance_dirs / "artifacts" / "tiny" / "deduplicated_documents"
    day1_dir, day2_dir = dedup / "documents" / "2026-03-01", dedup / "documents" / "2026-03-02"
    day1 = rows(day1_dir, "id")
    day2_in = count_rows(instance_dirs / "artifacts" / "tiny" / "quality_filtered_documents" /
                         "documents" / "2026-03-02")
    removed = [r for f in removed_files(day2_dir) for r in read_parquet_rows(f)]
    assert day1 and day2_in
    # Day 2 holds the same pages; only a page day 1's quality filter dropped (the classifier is
    # retrained each day) may be new. Nothing day 1 kept is kept again.
    assert len(removed) >= 0.8 * day2_in, "day 2 repeats day 1 but was not found duplicate"
    day1_texts = set(rows(day1_dir, "text"))
    day2_kept = rows(day2_dir, "text")
    assert not day1_texts & set(day2_kept)
    assert {r["duplicate_of"] for r in removed} <= set(day1)
    kept_before = count_rows(day2_dir)
    _run(defs, "curation", "2026-03-02", small)  # again: against day 1's segment, same result
    assert count_rows(day2_dir) == kept_before
    # One index segment per day (Parquet, .npy and JSON: no pickle), and nothing else beside
    # the index's own hidden marker and lock (no temporary left behind).
    index = dedup / "index"
    names = sorted(p.name for p in index.iterdir())
    assert [n for n in names if not n.startswith(".")] == ["2026-03-01", "2026-03-02"]
    assert {n for n in names if n.startswith(".")} <= {".lmforge-output", ".lock"}
    assert (index / "2026-03-02" / "manifest.json").is_file()
    assert {p.suffix for p in (index / "2026-03-02").iterdir() if p.name != ".lmforge-output"} \
        <= {".parquet", ".npy", ".json"}
