"""The code location of the nightly test (test_nightly.py): the real graph, the `tiny` deployment
alone, with smaller sizes (fewer pages and steps, so the whole chain runs in minutes on two
cores), automation evaluated every 5 seconds, and a schedule that ticks every minute instead of
at 02:00 (the same curation job and partition the nightly schedule starts)."""

from dataclasses import replace

import dagster as dg

from assets.partitions import DAILY
from pipelines.definitions import build_definitions
from pipelines.presets import PRESETS

SMALL = {
    "crawled_pages": {"max_pages": 40, "max_depth": 2},
    "pretrained_model": {"max_steps": 40, "eval_every": 20},
    "sft_model": {"max_steps": 12},
    "lora_adapter": {"max_steps": 12},
    "preference_pairs": {"limit": 48, "samples": 2},
    "reward_model": {"max_steps": 6},
    "dpo_model": {"max_steps": 6},
    "grpo_model": {"max_steps": 3},
    "arena_ratings": {"problems": 8},
}
tiny = PRESETS["tiny"]
config = {name: {**tiny.config.get(name, {}), **values} for name, values in SMALL.items()}
small = replace(tiny, config={**tiny.config, **config})


@dg.schedule(cron_schedule="* * * * *", job_name="curation", name="curation_every_minute",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def curation_every_minute(context: dg.ScheduleEvaluationContext):
    """Today's curation, once (its run key is the day)."""
    day = DAILY.get_last_partition_key(current_time=context.scheduled_execution_time)
    return dg.RunRequest(run_key=day, partition_key=day)


defs = dg.Definitions.merge(build_definitions({"tiny": small}, automation_interval=5),
                            dg.Definitions(schedules=[curation_every_minute]))
