"""The one place that loads the graph: `workspace.yaml` points here.

Every preset is a **deployment** (``pipelines.presets``): the whole graph under its own asset
key prefix (``tiny/pretrained_model``, ``gpt2_124m/pretrained_model``), its own artifact
directory (``<root>/<deployment>/``), its own jobs, schedule and automation sensor, and its
preset's settings as the defaults of every asset's config (what the launchpad shows, and what
runs that automation starts use). Deployments share one Dagster instance and never touch each
other's assets or files.

What runs when, per deployment:
- the nightly schedule curates the day that just ended (the `curation` job, partitioned by day);
- automation conditions (``pipelines.automation``) do the rest as their inputs change: the
  tokenizer once (frozen unless asked), the token shards, pretraining when enough new tokens
  have been curated since the last training, SFT, the evaluations on the deployment's suite,
  the release (through its gate), the adapters and their evaluation, the alignment stages, the
  report.
- Jobs for running the same by hand (`make demo`, the launchpad): `curation`, `training`,
  `adapters`, `adapter_evaluation`, `alignment`, one per scaling sweep (`scaling`,
  `scaling_gpu`); named ``<kind>`` for tiny and ``<kind>_<deployment>`` for the others.
"""

from __future__ import annotations

import dagster as dg

import assets.alignment
import assets.crawl
import assets.data
import assets.evaluation
import assets.release
import assets.report
import assets.scaling
import assets.tokenizer
import assets.training
from pipelines.automation import conditions_for, deployment_sensor
from pipelines.presets import (PRESETS, Preset, deployment_name, job_name, preset_config,
                               schedule_name, validate_presets)
from resources import ArtifactStore, TrainingLauncher
from resources.config import for_deployment

ASSET_MODULES = [assets.crawl, assets.data, assets.tokenizer, assets.training, assets.evaluation,
                 assets.release, assets.alignment, assets.report, assets.scaling]

# The graph's shape, without a deployment: asset name -> group (what the jobs select).
_base_assets = dg.load_assets_from_modules(ASSET_MODULES)
_group_of = {key.to_user_string(): a.group_names_by_key[key] for a in _base_assets for key in a.keys}


def _check_configuration() -> None:
    """A preset or a suite that refers to something missing fails here, when the definitions
    load, in one line naming the file and the key (not in the middle of a run)."""
    from lmforge.evaluate.harness import load_suite, suite_names, suites_dir
    from lmforge.evaluate.tasks import check_local_tasks, local_task_names

    suites = set(suite_names())
    validate_presets(set(_group_of), suites)
    known = local_task_names()  # read the task YAMLs once for every suite
    for name in sorted(suites):
        check_local_tasks(load_suite(name), suites_dir() / f"{name}.yaml", known=known)


_check_configuration()
# job kind -> the names of its assets
JOB_ASSETS = {
    "curation": {n for n, g in _group_of.items() if g in ("crawl", "data")},
    "adapters": {"lora_adapter"},
    "adapter_evaluation": {"lora_model_eval", "pipeline_report"},
    "alignment": {n for n, g in _group_of.items() if g == "alignment"} | {"pipeline_report"},
}
# The scaling sweeps are their own jobs (`scaling`, `scaling_gpu`: assets.scaling).
SCALING_ASSETS = {n for n, g in _group_of.items() if g == "scaling"}
JOB_ASSETS["training"] = (set(_group_of) - JOB_ASSETS["curation"] - JOB_ASSETS["alignment"]
                          - SCALING_ASSETS - {"lora_adapter", "lora_model_eval"}) | {"pipeline_report"}
JOB_DESCRIPTIONS = {
    "curation": "Crawl and curate one day (the partition)",
    "training": "Tokenizer, pretraining and SFT over every curated day; the base and SFT models "
    "evaluated on the suite (the partition); the release through its gate; the report",
    "adapters": "One LoRA adapter (the partition: its task) over the SFT model",
    "adapter_evaluation": "One adapter evaluated on one suite (the partition: task|suite); the report",
    "alignment": "Preference pairs, reward model, DPO and GRPO over the SFT model; the arena of "
    "every model; the report",
}


def asset_key(preset: str, name: str) -> dg.AssetKey:
    """The key of asset ``name`` in the deployment of ``preset``."""
    return dg.AssetKey([deployment_name(preset), name])


def _deployment_defaults(preset: Preset) -> dict[str, dict]:
    """Per asset: the preset's config, plus what each deployment sets for itself (its suite)."""
    defaults = {name: dict(values) for name, values in preset_config(preset).items()}
    for name in ("released_model", "pipeline_report"):
        defaults.setdefault(name, {})["suite"] = preset.suite
    return defaults


def deployment(preset: Preset, automation_interval: int = 30) -> tuple[list, list, list, list, list]:
    """The assets, checks, jobs, schedules and sensors of one preset's deployment."""
    dep = deployment_name(preset.name)
    defaults = _deployment_defaults(preset)
    conditions = conditions_for(preset)
    made = []
    for a in dg.load_assets_from_modules(ASSET_MODULES, key_prefix=dep):
        name = next(iter(a.keys)).path[-1]
        a = for_deployment(a, dep, defaults.get(name))
        made.append(a.map_asset_specs(lambda spec: spec.replace_attributes(
            automation_condition=conditions.get(spec.key.path[-1]),
            tags={**spec.tags, "lmforge/deployment": dep})))
    checks = [for_deployment(c, dep)
              for c in dg.load_asset_checks_from_modules(ASSET_MODULES, asset_key_prefix=dep)]
    jobs = [dg.define_asset_job(job_name(kind, preset.name),
                                selection=[dg.AssetKey([dep, n]) for n in sorted(names)],
                                tags={"preset": preset.name},
                                description=f"{JOB_DESCRIPTIONS[kind]}; `{preset.name}` deployment.")
            for kind, names in JOB_ASSETS.items()]
    jobs += assets.scaling.scaling_jobs(dep, lambda kind: job_name(kind, preset.name))
    schedules = []
    if preset.nightly_at:
        hour, minute = preset.nightly_at
        schedules.append(dg.build_schedule_from_partitioned_job(
            next(j for j in jobs if j.name == job_name("curation", preset.name)),
            name=schedule_name(preset.name), hour_of_day=hour, minute_of_hour=minute,
            description=f"`{preset.name}`: every night at {hour:02d}:{minute:02d} UTC, crawl and "
            "curate the day that just ended.",
            default_status=(dg.DefaultScheduleStatus.RUNNING if preset.schedule_running
                            else dg.DefaultScheduleStatus.STOPPED)))
    sensors = [deployment_sensor(preset, automation_interval)]
    return made, checks, jobs, schedules, sensors


def build_definitions(presets: dict[str, Preset] | None = None, automation_interval: int = 30,
                      executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """The definitions of every deployment in ``presets`` (default: :data:`PRESETS`), their
    automation evaluated every ``automation_interval`` seconds."""
    all_assets, all_checks, all_jobs, all_schedules, all_sensors = [], [], [], [], []
    for preset in (presets or PRESETS).values():
        a, c, j, sc, se = deployment(preset, automation_interval)
        all_assets += a
        all_checks += c
        all_jobs += j
        all_schedules += sc
        all_sensors += se
    return dg.Definitions(assets=all_assets, asset_checks=all_checks, jobs=all_jobs,
                          schedules=all_schedules, sensors=all_sensors, executor=executor,
                          resources={"store": ArtifactStore(), "launcher": TrainingLauncher()})


defs = build_definitions()
