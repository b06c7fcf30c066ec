"""Evaluation: the base, SFT and LoRA models through lm-evaluation-harness.

One asset per model, partitioned by suite (``eval_suites/<suite>.yaml``): materializing the
`standard` partition of `sft_model_eval` runs the standard suite on the SFT model. The adapters'
evaluation is partitioned by adapter task and suite: `math|smoke` runs the smoke suite on the SFT
model with the math adapter. A benchmark
whose data is unavailable is reported as skipped, with the reason, in the metadata. Each
evaluation is compared with the previous one of the same model and suite, so a regression shows
in the UI (and blocks the report where the suite says so).
"""

import dagster as dg

from assets.partitions import ADAPTER_EVALS, SUITES
from lmforge.evaluate.harness import EvalConfig, EvalSummary, evaluate, load_suite, regressions
from lmforge.io import read_json
from resources import ArtifactStore, dagster_config, engine_config

ModelEvalConfig = dagster_config(
    EvalConfig, "ModelEvalConfig",
    exclude={"model_dir", "adapter_dir", "heldout_path", "out_dir", "suite"})

# Where each evaluation reads its model (and adapter): (asset, path inside its version, partition).
Where = tuple[str, tuple[str, ...], str | None]
Paths = tuple[Where, Where | None]  # model, adapter


def _model_paths(model_asset: str):
    def paths(keys: dict[str, str]) -> Paths:
        return (model_asset, ("run", "model"), None), None
    return paths


def _adapter_paths(keys: dict[str, str]) -> Paths:
    return (("sft_model", ("run", "model"), None),
            ("lora_adapter", ("adapter",), keys["adapter"]))


def _resolve(store: ArtifactStore, where: Where) -> str:
    asset, parts, partition = where
    return str(store.path(asset, *parts, partition=partition))


def scores_table(summary: EvalSummary) -> dg.TableMetadataValue:
    """The evaluation as table metadata (sortable in the UI), built with pandas; scores rounded
    to 4 places."""
    import pandas as pd

    rows = pd.DataFrame([{
        "task": t.name, "metric": t.metric,
        "score": None if t.score is None else round(float(t.score), 4),
        "threshold": " ".join(x for x in (f">= {t.min_score:g}" if t.min_score is not None else "",
                                          f"<= {t.max_score:g}" if t.max_score is not None else "") if x),
        "status": (f"skipped: {t.reason}" if t.status == "skipped"
                   else {True: "pass", False: "FAIL", None: "ok"}[t.passed]),
        "n": t.n_samples, "shots": t.num_fewshot} for t in summary.tasks])
    rows = rows.astype({"n": "Int64", "shots": "Int64"}).astype(object)
    rows = rows.where(rows.notna(), None)
    types = {"task": "string", "metric": "string", "score": "float", "threshold": "string",
             "status": "string", "n": "int", "shots": "int"}
    return dg.MetadataValue.table(
        records=[dg.TableRecord(r) for r in rows.to_dict("records")],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, types[c]) for c in rows.columns]))


def partition_keys(partitions_def: dg.PartitionsDefinition, key: str) -> dict[str, str]:
    """``{"suite": "smoke"}`` for a suite partition, ``{"adapter": "math", "suite": "smoke"}``
    for an adapter evaluation's ``math|smoke``."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return dict(partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension)
    return {"suite": key}


def _summary(store: ArtifactStore, name: str, partition: str) -> EvalSummary | None:
    version = store.latest(name, partition=partition)
    path = version / "results" / "summary.json" if version is not None else None
    return EvalSummary.model_validate(read_json(path)) if path and path.exists() else None


def _eval_asset(name: str, deps: list, partitions_def: dg.PartitionsDefinition, paths):
    @dg.asset(name=name, code_version="eval-1", group_name="evaluation", kinds={"lm-eval"},
              deps=[*deps, "token_shards"], partitions_def=partitions_def)
    def _asset(context: dg.AssetExecutionContext, config: ModelEvalConfig,
               store: ArtifactStore) -> dg.MaterializeResult:
        keys = partition_keys(partitions_def, context.partition_key)
        model, adapter = paths(keys)
        cfg = engine_config(
            EvalConfig, config, suite=keys["suite"],
            model_dir=_resolve(store, model),
            adapter_dir=_resolve(store, adapter) if adapter else None,
            heldout_path=str(store.path("token_shards", "shards", "val.parquet")),
            out_dir=str(store.path(name, "results")),
        )
        summary = evaluate(cfg)
        for task, reason in summary.skipped.items():
            context.log.warning("%s skipped: %s", task, reason)
        return dg.MaterializeResult(metadata={
            "table": scores_table(summary),
            "scores": dg.MetadataValue.json(summary.scores), **summary.to_metadata()})

    @dg.asset_check(asset=_asset, name="eval_results_present", blocking=True,
                    partitions_def=partitions_def)
    def _results_present(context: dg.AssetCheckExecutionContext,
                         store: ArtifactStore) -> dg.AssetCheckResult:
        """Every task of the suite has a score, or a stated reason for being skipped."""
        summary = _summary(store, name, str(context.partition_key))
        if summary is None:
            return dg.AssetCheckResult(passed=False, description="no evaluation summary was written")
        missing = [t.name for t in summary.tasks if (t.status == "ok" and t.score is None)
                   or (t.status == "skipped" and not t.reason)]
        return dg.AssetCheckResult(
            passed=bool(summary.scores) and not missing,
            description=f"no result for {missing}" if missing else None,
            metadata={"scored": len(summary.scores), "skipped": len(summary.skipped)})

    @dg.asset_check(asset=_asset, name="eval_above_thresholds", partitions_def=partitions_def)
    def _above_thresholds(context: dg.AssetCheckExecutionContext,
                          store: ArtifactStore) -> dg.AssetCheckResult:
        """Scores within the suite's thresholds (a warning: tiny models score at chance)."""
        summary = _summary(store, name, str(context.partition_key))
        failed = summary.failed if summary else ["no summary"]
        return dg.AssetCheckResult(passed=not failed, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"failed": dg.MetadataValue.json(failed)})

    @dg.asset_check(asset=_asset, name="eval_no_regression", blocking=True,
                    partitions_def=partitions_def)
    def _no_regression(context: dg.AssetCheckExecutionContext,
                       store: ArtifactStore) -> dg.AssetCheckResult:
        """No task worse than in the previous evaluation of this model and suite by more than
        the suite's `max_regression`; blocking when the suite sets `block_on_regression`."""
        partition = str(context.partition_key)
        suite = load_suite(partition_keys(partitions_def, partition)["suite"])
        summary = _summary(store, name, str(context.partition_key))
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=store.asset_key(name), asset_partitions=[partition]),
            limit=2).records
        if summary is None or suite.max_regression is None or len(records) < 2:
            why = ("no summary" if summary is None else "the suite sets no max_regression"
                   if suite.max_regression is None else "no previous evaluation to compare with")
            return dg.AssetCheckResult(passed=summary is not None, description=why)
        previous_meta = records[1].event_log_entry.asset_materialization.metadata
        previous = previous_meta["scores"].value if "scores" in previous_meta else {}
        found = regressions(previous, summary, suite.max_regression)
        severity = (dg.AssetCheckSeverity.ERROR if suite.block_on_regression
                    else dg.AssetCheckSeverity.WARN)
        return dg.AssetCheckResult(
            passed=not found, severity=severity,
            description=f"regressed: {', '.join(found)}" if found else None,
            metadata={"regressions": dg.MetadataValue.json(found),
                      "previous": dg.MetadataValue.json(previous),
                      "max_regression": suite.max_regression})

    return _asset, _results_present, _above_thresholds, _no_regression


(base_model_eval, base_eval_results, base_eval_thresholds, base_eval_regression) = _eval_asset(
    "base_model_eval", ["pretrained_model"], SUITES, _model_paths("pretrained_model"))
(sft_model_eval, sft_eval_results, sft_eval_thresholds, sft_eval_regression) = _eval_asset(
    "sft_model_eval", ["sft_model"], SUITES, _model_paths("sft_model"))
(lora_model_eval, lora_eval_results, lora_eval_thresholds, lora_eval_regression) = _eval_asset(
    "lora_model_eval",
    ["sft_model", dg.AssetDep("lora_adapter", partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
        partition_dimension_name="adapter"))],
    ADAPTER_EVALS, _adapter_paths)
