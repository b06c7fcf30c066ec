"""The one place that loads the graph: `workspace.yaml` points here.

Five jobs per preset, because Dagster runs one partitioning per run:
- `curation`: crawl to decontaminated documents (and the quality classifier), partitioned by
  day; the nightly schedule runs it for the new day.
- `training`: tokenizer, pretraining and SFT over every curated day, the evaluation of the base
  and SFT models, and the report; partitioned by evaluation suite.
- `adapters`: one LoRA adapter over the SFT model, partitioned by adapter task.
- `adapter_evaluation`: one adapter on one suite (partition `task|suite`), and the report.
- `alignment`: preference pairs, the reward model, DPO, GRPO and the arena over the SFT model;
  the report.
Beside them, one job per scaling sweep (`sweeps/<name>.yaml`: `scaling` for the tiny CPU sweep,
`scaling_gpu`): the sweep's runs (a partition each) and the Chinchilla fit; run by hand.
Sensors chain them after the nightly curation: curation -> training -> one adapters run per task
-> the evaluation of each new adapter, and training -> alignment. `make demo` runs the same
sequence by hand (alignment last, so the arena meets the new adapters too).
"""

import dagster as dg

import assets.alignment
import assets.crawl
import assets.data
import assets.evaluation
import assets.report
import assets.scaling
import assets.tokenizer
import assets.training
from assets.partitions import adapter_eval_key
from assets.training import adapter_task_data
from pipelines.presets import PRESETS, job_name, run_config, schedule_name, validate_presets
from resources import ArtifactStore, TrainingLauncher

ASSET_MODULES = [assets.crawl, assets.data, assets.tokenizer, assets.training, assets.evaluation,
                 assets.alignment, assets.report, assets.scaling]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)

_group_of = {key.to_user_string(): a.group_names_by_key[key] for a in all_assets for key in a.keys}


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
# job kind -> the names of its assets (each job also gets only its own assets' run config)
JOB_ASSETS = {
    "curation": {n for n, g in _group_of.items() if g in ("crawl", "data")},
    "adapters": {"lora_adapter"},
    "adapter_evaluation": {"lora_model_eval", "pipeline_report"},
    "alignment": {n for n, g in _group_of.items() if g == "alignment"} | {"pipeline_report"},
}
# The scaling sweeps are their own jobs (`scaling`, `scaling_gpu`: assets.scaling), not a preset's.
SCALING_ASSETS = {n for n, g in _group_of.items() if g == "scaling"}
JOB_ASSETS["training"] = (set(_group_of) - JOB_ASSETS["curation"] - JOB_ASSETS["alignment"]
                          - SCALING_ASSETS - {"lora_adapter", "lora_model_eval"}) | {"pipeline_report"}
JOB_DESCRIPTIONS = {
    "curation": "Crawl and curate one day (the partition)",
    "training": "Tokenizer, pretraining and SFT over every curated day; the base and SFT models "
    "evaluated on the suite (the partition); the report",
    "adapters": "One LoRA adapter (the partition: its task) over the SFT model",
    "adapter_evaluation": "One adapter evaluated on one suite (the partition: task|suite); the report",
    "alignment": "Preference pairs, reward model, DPO and GRPO over the SFT model; the arena of "
    "every model; the report",
}

jobs = [dg.define_asset_job(job_name(kind, preset), selection=sorted(names),
                            config=run_config(preset, assets=names), tags={"preset": preset},
                            description=f"{JOB_DESCRIPTIONS[kind]}; `{preset}` preset.")
        for preset in PRESETS for kind, names in JOB_ASSETS.items()] + assets.scaling.scaling_jobs()


def jobs_of(kind: str) -> list:
    return [j for j in jobs if j.name in {job_name(kind, p) for p in PRESETS}]


def _nightly(preset) -> dg.ScheduleDefinition:
    """The preset's curation of the day that just ended, at the preset's time of night."""
    job = next(j for j in jobs if j.name == job_name("curation", preset.name))
    hour, minute = preset.nightly_at
    return dg.build_schedule_from_partitioned_job(
        job, name=schedule_name(preset.name), hour_of_day=hour, minute_of_hour=minute,
        description=f"`{preset.name}`: every night at {hour:02d}:{minute:02d} UTC, crawl and "
        "curate the day that just ended.",
        default_status=(dg.DefaultScheduleStatus.RUNNING if preset.schedule_running
                        else dg.DefaultScheduleStatus.STOPPED))


schedules = [_nightly(p) for p in PRESETS.values() if p.nightly_at]

# Runs the sensors start carry this tag (the id of the scheduled curation run that began the
# chain): only those are followed, so a stage run by hand does not set off the next ones.
CHAIN_TAG = "lmforge/chain"
SUITE_TAG = "lmforge/suite"


def _request(kind: str, preset: str, partition_key: str | None, run_key: str, chain: str,
             **tags: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, job_name=job_name(kind, preset),
                         partition_key=partition_key, tags={CHAIN_TAG: chain, **tags},
                         run_config=run_config(preset, assets=JOB_ASSETS[kind]))


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=jobs_of("curation"),
                      request_jobs=jobs_of("training"),
                      default_status=dg.DefaultSensorStatus.RUNNING)
def train_after_curation(context: dg.RunStatusSensorContext):
    """When a scheduled curation run succeeds, train and evaluate on everything curated so far."""
    run = context.dagster_run
    if "dagster/schedule_name" not in run.tags:
        return dg.SkipReason("curation was started by hand: train by hand too")
    preset = run.tags.get("preset", "tiny")
    return _request("training", preset, PRESETS[preset].suite, run.run_id, run.run_id)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=jobs_of("training"),
                      request_jobs=jobs_of("adapters"),
                      default_status=dg.DefaultSensorStatus.RUNNING)
def adapters_after_training(context: dg.RunStatusSensorContext):
    """When a chained training run succeeds, train one adapter for each task with data."""
    run = context.dagster_run
    if CHAIN_TAG not in run.tags:
        return dg.SkipReason("training was started by hand: train the adapters by hand too")
    tasks, _ = adapter_task_data(context.instance)
    if not tasks:
        return dg.SkipReason("sft_conversations built no adapter task data")
    preset = run.tags.get("preset", "tiny")
    return [_request("adapters", preset, task, f"{run.run_id}:{task}", run.tags[CHAIN_TAG],
                     **{SUITE_TAG: run.tags.get("dagster/partition", PRESETS[preset].suite)})
            for task in tasks]


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=jobs_of("training"),
                      request_jobs=jobs_of("alignment"),
                      default_status=dg.DefaultSensorStatus.RUNNING)
def align_after_training(context: dg.RunStatusSensorContext):
    """When a chained training run succeeds, run the alignment stages and the arena."""
    run = context.dagster_run
    if CHAIN_TAG not in run.tags:
        return dg.SkipReason("training was started by hand: run the alignment by hand too")
    preset = run.tags.get("preset", "tiny")
    return _request("alignment", preset, None, f"{run.run_id}:alignment", run.tags[CHAIN_TAG])


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=jobs_of("adapters"),
                      request_jobs=jobs_of("adapter_evaluation"),
                      default_status=dg.DefaultSensorStatus.RUNNING)
def evaluate_adapters(context: dg.RunStatusSensorContext):
    """When a chained adapter run succeeds, evaluate that adapter on the chain's suite."""
    run = context.dagster_run
    if CHAIN_TAG not in run.tags:
        return dg.SkipReason("the adapter was trained by hand: evaluate it by hand too")
    preset = run.tags.get("preset", "tiny")
    suite = run.tags.get(SUITE_TAG, PRESETS[preset].suite)
    return _request("adapter_evaluation", preset,
                    adapter_eval_key(run.tags["dagster/partition"], suite), run.run_id,
                    run.tags[CHAIN_TAG])


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs,
    schedules=schedules,
    sensors=[train_after_curation, adapters_after_training, evaluate_adapters, align_after_training],
    resources={"store": ArtifactStore(), "launcher": TrainingLauncher()},
)
