"""The report: one markdown page with the data funnel, training curves, evaluation table, the
alignment stages and arena, and the latest scaling fit."""


import dagster as dg

from assets.data import STAGES
from lmforge.curate.stages import stage_names
from lmforge.report.report import ReportInputs, write_report
from resources import ArtifactStore


@dg.asset(code_version="report-2", group_name="report", kinds={"markdown"},
          deps=[*stage_names(STAGES), "tokenizer",
                "pretrained_model", "sft_model", "lora_adapter",
                "base_model_eval", "sft_model_eval", "lora_model_eval",
                "reward_model", "dpo_model", "grpo_model", "arena_ratings"])
def pipeline_report(store: ArtifactStore) -> dg.MaterializeResult:
    out = store.path("pipeline_report", "report")
    stats = write_report(ReportInputs.from_artifacts(store.base(), stage_names(STAGES)), out)
    return dg.MaterializeResult(metadata={
        **stats.to_metadata(), "report_md": dg.MetadataValue.md(stats.path.read_text())})
