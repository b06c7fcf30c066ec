"""The one place that loads the graph: `workspace.yaml` points here."""

from __future__ import annotations

import dagster as dg

import assets.crawl
import assets.data
import assets.evaluation
import assets.report
import assets.tokenizer
import assets.training
from pipelines.presets import PRESETS, run_config
from resources import ArtifactStore, TrainingLauncher

ASSET_MODULES = [assets.crawl, assets.data, assets.tokenizer, assets.training, assets.evaluation,
                 assets.report]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)

# One job per preset over the whole graph; `full_pipeline` is the tiny one.
jobs = [
    dg.define_asset_job(
        "full_pipeline" if preset == "tiny" else f"full_pipeline_{preset.replace('-', '_')}",
        selection=dg.AssetSelection.all(include_sources=False),
        config=run_config(preset),
        description=f"Every asset, crawl to report, with the `{preset}` preset.",
        tags={"preset": preset},
    )
    for preset in PRESETS
]

nightly = dg.ScheduleDefinition(
    name="nightly_full_pipeline",
    job_name="full_pipeline",
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    description="Crawl, curate, train and evaluate every night at 02:00 UTC.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs,
    schedules=[nightly],
    resources={"store": ArtifactStore(), "launcher": TrainingLauncher()},
)
