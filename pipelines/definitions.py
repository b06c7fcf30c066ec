"""The one place that loads the graph: `workspace.yaml` points here."""

from __future__ import annotations

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

# One job per preset over the whole graph; `full_pipeline` is the tiny one. The jobs are
# partitioned by evaluation suite (the evaluation assets' partitions): a run's partition key
# says which suite evaluates its models.
jobs = [
    dg.define_asset_job(
        job_name(preset),
        selection=dg.AssetSelection.all(include_sources=False),
        config=run_config(preset),
        description=f"Every asset, crawl to report, with the `{preset}` preset "
        f"(evaluate with the `{PRESET_SUITES[preset]}` suite).",
        tags={"preset": preset},
    )
    for preset in PRESETS
]


@dg.schedule(job_name="full_pipeline", cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def nightly_full_pipeline(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Crawl, curate, train and evaluate every night at 02:00 UTC."""
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat(),
                         partition_key=PRESET_SUITES["tiny"], run_config=run_config("tiny"))

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs,
    schedules=[nightly_full_pipeline],
    resources={"store": ArtifactStore(), "launcher": TrainingLauncher()},
)
