"""When each asset of a deployment runs by itself: Dagster automation conditions.

The nightly schedule curates the new day (``pipelines.definitions``); from there the conditions
below carry the chain, evaluated by one automation sensor per deployment (on the code server,
since two conditions read materialization metadata):

- ``tokenizer``: once, when the corpus first exists; then frozen (a deployment that sets
  ``retrain_tokenizer`` retrains it whenever the corpus changes).
- ``token_shards``, ``sft_conversations``: whenever their inputs change.
- ``pretrained_model``: when the token shards hold at least ``train_after_tokens`` more training
  tokens than the last pretraining saw (:class:`EnoughNewTokens`); it continues from the current
  release's pretrained ancestor when the tokenizer and shape are unchanged (``assets.training``).
- ``sft_model``, the alignment stages, the release, the report: when an input changes.
- evaluations: only the deployment's suite (:class:`InPartitions`); adapters: only the tasks
  ``sft_conversations`` built data for (:class:`AdapterTasksWithData`).

Every condition waits while an input is being materialized, and none runs an asset twice at once.
"""

from __future__ import annotations

import dagster as dg

from pipelines.presets import Preset, deployment_name

AC = dg.AutomationCondition


class _Stateless(AC):
    """A condition that reads the instance as it is now, and keeps no cursor between ticks."""

    @property
    def requires_cursor(self) -> bool:
        return False


def _only(context, keys) -> dg.AutomationResult:
    """The candidate partitions whose key is one of ``keys``."""
    return dg.AutomationResult(
        context, true_subset=context.candidate_subset.compute_intersection_with_partition_keys(
            frozenset(str(k) for k in keys)))


class InPartitions(_Stateless):
    """True for the candidate partitions whose key is one of ``keys``."""

    def __init__(self, keys):
        self.keys = frozenset(str(k) for k in keys)

    @property
    def description(self) -> str:
        return f"partition in {sorted(self.keys)}"

    def evaluate(self, context):
        return _only(context, self.keys)


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    if not records or records[0].event_log_entry.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v)
            for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


class EnoughNewTokens(_Stateless):
    """True when ``token_shards`` holds at least ``threshold`` more training tokens than the last
    ``pretrained_model`` trained on (its ``data_train_tokens``), or when there is no pretrained
    model yet and there are shards."""

    def __init__(self, deployment: str, threshold: int):
        self.deployment, self.threshold = deployment, int(threshold)

    @property
    def description(self) -> str:
        return f"at least {self.threshold:,} new training tokens since the last pretraining"

    def evaluate(self, context):
        instance = context.asset_graph_view.instance
        shards = _latest_metadata(instance, dg.AssetKey([self.deployment, "token_shards"]))
        model = _latest_metadata(instance, dg.AssetKey([self.deployment, "pretrained_model"]))
        tokens = int(shards.get("train_tokens") or 0)
        seen = int(model.get("data_train_tokens") or 0) if model else None
        enough = tokens > 0 and (seen is None or tokens - seen >= self.threshold)
        return dg.AutomationResult(
            context, true_subset=context.candidate_subset if enough else context.get_empty_subset())


class AdapterTasksWithData(_Stateless):
    """True for the adapter tasks the latest ``sft_conversations`` built data for."""

    def __init__(self, deployment: str):
        self.deployment = deployment

    @property
    def description(self) -> str:
        return "a task sft_conversations built data for"

    def evaluate(self, context):
        instance = context.asset_graph_view.instance
        tasks = _latest_metadata(instance, dg.AssetKey([self.deployment, "sft_conversations"]))
        return _only(context, tasks.get("tasks") or [])


def _partitioned_assets(dep: str) -> dg.AssetSelection:
    """The deployment's partitioned assets: the crawl and the curation stages (by day), the
    adapters (by task), the evaluations (by suite, by task and suite)."""
    from assets.data import STAGES
    from lmforge.curate.stages import stage_names

    names = ["crawled_pages", *stage_names(STAGES), "lora_adapter", "base_model_eval",
             "sft_model_eval", "lora_model_eval"]
    return dg.AssetSelection.assets(*[dg.AssetKey([dep, n]) for n in names])


def _quiet() -> AC:
    return (~AC.any_deps_in_progress() & ~AC.in_progress()).with_label("nothing in progress")


def conditions_for(preset: Preset) -> dict[str, AC]:
    """Asset name -> its automation condition in the deployment of ``preset``. The curation
    assets have none: the nightly schedule runs them, one day partition at a time."""
    from assets.partitions import ADAPTER_TASKS

    dep = deployment_name(preset.name)
    # Every unpartitioned input present. A partitioned input counts as present: older days, the
    # suites a deployment does not run and the tasks without data never are.
    inputs_present = ~AC.any_deps_missing().ignore(_partitioned_assets(dep))
    # An input changed since this asset was last requested or materialized: remembered across
    # ticks, so an update made while another input was still in progress is not forgotten.
    updated = AC.any_deps_updated().since_last_handled()
    after = (updated & inputs_present & _quiet()).with_label("an input changed")
    tokenizer = AC.missing() & updated
    if preset.retrain_tokenizer:
        tokenizer = updated
    conditions: dict[str, AC] = {
        "tokenizer": (tokenizer & _quiet()).with_label(
            "retrain when the corpus changes" if preset.retrain_tokenizer else "once, then frozen"),
        "token_shards": after,
        "sft_conversations": after,
        "pretrained_model": (EnoughNewTokens(dep, preset.train_after_tokens) & _quiet()
                             & ~AC.execution_failed()),
        "sft_model": after,
        "base_model_eval": after & InPartitions([preset.suite]),
        "sft_model_eval": after & InPartitions([preset.suite]),
        "released_model": (AC.any_deps_match(AC.newly_updated()).allow(
            dg.AssetSelection.assets(dg.AssetKey([dep, "sft_model_eval"]))).since_last_handled()
            & _quiet()).with_label("its evaluation changed"),
        "lora_adapter": after & AdapterTasksWithData(dep),
        "lora_model_eval": after & InPartitions(
            [f"{t}|{preset.suite}" for t in ADAPTER_TASKS.get_partition_keys()]),
        "preference_pairs": after,
        "reward_model": after,
        "dpo_model": after,
        "grpo_model": after,
        "arena_ratings": after,
        "pipeline_report": after,
    }
    return conditions


def automation_sensor_name(preset: str) -> str:
    return f"{deployment_name(preset)}_automation"


def deployment_sensor(preset: Preset, interval_seconds: int = 30) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the deployment's conditions (on the code server: two of them read metadata);
    running by itself where the preset's schedule does."""
    dep = deployment_name(preset.name)
    return dg.AutomationConditionSensorDefinition(
        automation_sensor_name(preset.name), target=dg.AssetSelection.key_prefixes(dep),
        use_user_code_server=True, minimum_interval_seconds=interval_seconds,
        default_status=(dg.DefaultSensorStatus.RUNNING if preset.schedule_running
                        else dg.DefaultSensorStatus.STOPPED),
        description=f"Runs the `{preset.name}` deployment's assets as their inputs change.")
