"""Evaluation: the base, SFT and LoRA models through lm-evaluation-harness.

One asset per model, each running the configured suite (``eval_suites/<suite>.yaml``). A
benchmark whose data is unavailable is reported as skipped, with the reason, in the metadata.
"""


import dagster as dg

from lmforge.evaluate.harness import EvalConfig, EvalSummary, evaluate
from lmforge.io import read_json
from resources import ArtifactStore, dagster_config, engine_config

EVAL_INPUT_FIELDS = {"model_dir", "adapter_dir", "heldout_path", "out_dir"}
ModelEvalConfig = dagster_config(EvalConfig, "ModelEvalConfig", exclude=EVAL_INPUT_FIELDS)

# asset name -> (upstream asset, model directory, adapter directory) inside the artifact store
EVALUATED = {
    "base_model_eval": ("pretrained_model", ("pretrained_model", "run", "model"), None),
    "sft_model_eval": ("sft_model", ("sft_model", "run", "model"), None),
    "lora_model_eval": ("lora_adapter", ("sft_model", "run", "model"), ("lora_adapter", "adapter")),
}


def _eval_asset(name: str, upstream: str, model: tuple[str, ...], adapter: tuple[str, ...] | None):
    @dg.asset(name=name, code_version="eval-1", group_name="evaluation", kinds={"lm-eval"},
              deps=[upstream, "token_shards"])
    def _asset(context: dg.AssetExecutionContext, config: ModelEvalConfig,
               store: ArtifactStore) -> dg.MaterializeResult:
        cfg = engine_config(
            EvalConfig, config,
            model_dir=str(store.path(*model)),
            adapter_dir=str(store.path(*adapter)) if adapter else None,
            heldout_path=str(store.path("token_shards", "shards", "val.parquet")),
            out_dir=str(store.path(name, "results")),
        )
        summary = evaluate(cfg)
        for task, reason in summary.skipped.items():
            context.log.warning("%s skipped: %s", task, reason)
        return dg.MaterializeResult(metadata={
            "path": cfg.out_dir, "scores": dg.MetadataValue.md(summary.to_markdown()),
            **summary.to_metadata()})

    @dg.asset_check(asset=_asset, name="eval_results_present", blocking=True)
    def _results_present(store: ArtifactStore) -> dg.AssetCheckResult:
        return _results_check(store, name)

    @dg.asset_check(asset=_asset, name="eval_above_thresholds")
    def _above_thresholds(store: ArtifactStore) -> dg.AssetCheckResult:
        return _thresholds_check(store, name)

    return _asset, _results_present, _above_thresholds


def _summary(store: ArtifactStore, name: str) -> EvalSummary | None:
    path = store.path(name, "results", "summary.json")
    return EvalSummary.model_validate(read_json(path)) if path.exists() else None


def _results_check(store: ArtifactStore, name: str) -> dg.AssetCheckResult:
    """Every task of the suite has a score, or a stated reason for being skipped."""
    summary = _summary(store, name)
    if summary is None:
        return dg.AssetCheckResult(passed=False, description="no evaluation summary was written")
    missing = [t.name for t in summary.tasks
               if (t.status == "ok" and t.score is None) or (t.status == "skipped" and not t.reason)]
    return dg.AssetCheckResult(
        passed=bool(summary.scores) and not missing,
        description=f"no result for {missing}" if missing else None,
        metadata={"scored": len(summary.scores), "skipped": len(summary.skipped)})


def _thresholds_check(store: ArtifactStore, name: str) -> dg.AssetCheckResult:
    """Scores within the suite's thresholds (a warning: tiny models score at chance)."""
    summary = _summary(store, name)
    failed = summary.failed if summary else ["no summary"]
    return dg.AssetCheckResult(passed=not failed, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"failed": dg.MetadataValue.json(failed)})


base_model_eval, base_eval_results, base_eval_thresholds = _eval_asset(
    "base_model_eval", *EVALUATED["base_model_eval"])
sft_model_eval, sft_eval_results, sft_eval_thresholds = _eval_asset(
    "sft_model_eval", *EVALUATED["sft_model_eval"])
lora_model_eval, lora_eval_results, lora_eval_thresholds = _eval_asset(
    "lora_model_eval", *EVALUATED["lora_model_eval"])
