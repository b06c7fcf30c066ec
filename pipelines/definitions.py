"""The one place that loads the graph: `workspace.yaml` points here.

Two jobs per preset, because Dagster runs one partitioning per run:
- `curation`: crawl to decontaminated documents (and the quality classifier), partitioned by
  day; the nightly schedule runs it for the new day.
- `full_pipeline`: tokenizer to report, reading every day's documents; partitioned by
  evaluation suite. A sensor starts it when a scheduled curation run succeeds.
`make demo` runs both, one after the other, for today and the `smoke` suite.
"""

import dagster as dg

import assets.crawl
import assets.data
import assets.evaluation
import assets.report
import assets.tokenizer
import assets.training
from pipelines.presets import PRESET_SUITES, PRESETS, job_name, run_config
from resources import ArtifactStore, TrainingLauncher

ASSET_MODULES = [assets.crawl, assets.data, assets.tokenizer, assets.training, assets.evaluation,
                 assets.report]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)

CURATION = dg.AssetSelection.groups("crawl", "data")
MODELS = dg.AssetSelection.all(include_sources=False) - CURATION


def _asset_names(module_groups: set[str]) -> set[str]:
    return {key.to_user_string() for a in all_assets for key in a.keys
            if a.group_names_by_key.get(key) in module_groups}


CURATION_ASSETS = _asset_names({"crawl", "data"})
MODEL_ASSETS = _asset_names({"tokenizer", "training", "evaluation", "report"})

jobs = []
for preset in PRESETS:
    jobs.append(dg.define_asset_job(
        job_name("curation", preset), selection=CURATION,
        config=run_config(preset, assets=CURATION_ASSETS), tags={"preset": preset},
        description=f"Crawl and curate one day (the partition), `{preset}` preset."))
    jobs.append(dg.define_asset_job(
        job_name("full_pipeline", preset), selection=MODELS,
        config=run_config(preset, assets=MODEL_ASSETS), tags={"preset": preset},
        description=f"Tokenizer to report over every curated day, `{preset}` preset; the "
        f"partition is the evaluation suite (`{PRESET_SUITES[preset]}` by default)."))

curation_job = next(j for j in jobs if j.name == "curation")
full_pipeline_job = next(j for j in jobs if j.name == "full_pipeline")

nightly_curation = dg.build_schedule_from_partitioned_job(
    curation_job, hour_of_day=2, name="nightly_curation",
    description="Every night at 02:00 UTC: crawl and curate the day that just ended.",
    default_status=dg.DefaultScheduleStatus.RUNNING)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[curation_job],
                      request_job=full_pipeline_job, default_status=dg.DefaultSensorStatus.RUNNING)
def train_after_curation(context: dg.RunStatusSensorContext):
    """When a scheduled curation run succeeds, train and evaluate on everything curated so far."""
    if "dagster/schedule_name" not in context.dagster_run.tags:
        return dg.SkipReason("curation was started by hand: train by hand too")
    return dg.RunRequest(run_key=context.dagster_run.run_id, partition_key=PRESET_SUITES["tiny"],
                         run_config=run_config("tiny", assets=MODEL_ASSETS))


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs,
    schedules=[nightly_curation],
    sensors=[train_after_curation],
    resources={"store": ArtifactStore(), "launcher": TrainingLauncher()},
)
