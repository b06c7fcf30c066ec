"""The report: one markdown page with the data funnel, training curves and evaluation table."""


import dagster as dg

from lmforge.report.report import ReportInputs, write_report
from resources import ArtifactStore


@dg.asset(code_version="report-1", group_name="report", kinds={"markdown"},
          deps=["extracted_documents", "filtered_documents", "quality_filtered_documents",
                "deduplicated_documents",
                "decontaminated_documents", "tokenizer",
                "pretrained_model", "sft_model", "lora_adapter",
                "base_model_eval", "sft_model_eval", "lora_model_eval"])
def pipeline_report(store: ArtifactStore) -> dg.MaterializeResult:
    out = store.path("pipeline_report", "report")
    stats = write_report(ReportInputs.from_artifacts(store.base()), out)
    return dg.MaterializeResult(metadata={
        **stats.to_metadata(), "report_md": dg.MetadataValue.md(stats.path.read_text())})
