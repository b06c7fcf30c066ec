"""How the graph is partitioned.

Crawl and curation are partitioned by day: the nightly run crawls and curates only the new day,
and deduplicates it against everything kept on earlier days. Everything downstream (tokenizer,
training) reads all days. Evaluation is partitioned by suite (``eval_suites/<suite>.yaml``).
LoRA adapters are partitioned by task (``adapter_tasks/<task>.yaml``): one base model, one
adapter per task; their evaluation by adapter and suite.
"""

import dagster as dg

from lmforge.evaluate.harness import suite_names
from lmforge.train.tasks import task_names

# A day's partition is the crawl made on that day (end_offset=1: today's partition exists
# already, so the nightly run at 02:00 and `make demo` crawl into the current day).
DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)
SUITES = dg.StaticPartitionsDefinition(suite_names())
ADAPTER_TASKS = dg.StaticPartitionsDefinition(task_names())
ADAPTER_EVALS = dg.MultiPartitionsDefinition({"adapter": ADAPTER_TASKS, "suite": SUITES})


def adapter_eval_key(adapter: str, suite: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"adapter": adapter, "suite": suite})
