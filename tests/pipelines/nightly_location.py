"""The code location of the nightly test (test_nightly.py): the real graph, the `tiny` deployment
alone, with fewer pretraining, SFT and GRPO steps (so the whole chain runs in minutes on two
cores), automation evaluated every 5 seconds, each run in one process, and a schedule that ticks every minute instead of
at 02:00 (the same curation job and partition the nightly schedule starts)."""

from dataclasses import replace

import dagster as dg

from assets.partitions import DAILY
from pipelines.definitions import build_definitions
from pipelines.presets import PRESETS

SMALL = {
    "pretrained_model": {"max_steps": 40, "eval_every": 20},
    "sft_model": {"max_steps": 12},
    # Half the tiny preset's problems, two answers each (the on-policy sampling was 4 of the
    # chain's 11 minutes); the crawl, the adapters, the reward model and DPO at the tiny preset's
    # sizes: the adapters' comparison needs held-out signatures, and the blocking checks of the
    # reward model and DPO enough held-out pairs to beat chance.
    "preference_pairs": {"limit": 200, "samples": 2},
    "grpo_model": {"max_steps": 8},
    "arena_ratings": {"num_prompts": 16},
}
tiny = PRESETS["tiny"]
config = {name: {**tiny.config.get(name, {}), **values} for name, values in SMALL.items()}
small = replace(tiny, config={**tiny.config, **config})


@dg.schedule(cron_schedule="* * * * *", job_name="curation", name="curation_every_minute",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def curation_every_minute(context: dg.ScheduleEvaluationContext):
    """Today's curation, once."""
    day = DAILY.get_last_partition_key()
    done = context.instance.get_runs(filters=dg.RunsFilter(
        tags={"dagster/schedule_name": "curation_every_minute", "dagster/partition": day}), limit=1)
    if done:
        return dg.SkipReason(f"{day} was curated already")
    return dg.RunRequest(run_key=day, partition_key=day)


# One process per run (not per step): on two cores the chain's tens of runs would otherwise
# spend minutes starting step processes.
defs = dg.Definitions.merge(build_definitions({"tiny": small}, automation_interval=5,
                                              executor=dg.in_process_executor),
                            dg.Definitions(schedules=[curation_every_minute]))
