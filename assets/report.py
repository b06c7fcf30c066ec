"""The report: one markdown page with the data funnel, training curves, evaluation table, the
release (candidate against the current release), the alignment stages and arena, and the latest
scaling fit. It reads the versions the latest materializations name."""


import dagster as dg

from assets.data import STAGES
from assets.partitions import ADAPTER_TASKS, SUITES
from assets.release import ReleasedModelConfig, current_release
from lmforge.curate.stages import stage_names
from lmforge.report.report import ALIGNMENT_RUNS, ReportInputs, write_report
from resources import ArtifactStore


class PipelineReportConfig(dg.Config):
    suite: str = ReleasedModelConfig.model_fields["suite"].default


def report_inputs(store: ArtifactStore, suite: str) -> ReportInputs:
    """Where each part of the report is: the versions the latest materializations name."""
    from lmforge.evaluate.gate import release_gate
    from lmforge.evaluate.harness import EvalSummary, load_suite
    from lmforge.io import read_json

    def run(asset: str, *parts: str, partition: str | None = None):
        version = store.latest(asset, partition=partition)
        return version.joinpath(*parts) if version is not None else None

    adapters = {t: run("lora_adapter", "adapter", partition=t) for t in ADAPTER_TASKS.get_partition_keys()}
    adapters = {t: p for t, p in adapters.items() if p is not None}
    evaluations = {}
    for model in ("base", "sft"):
        for s in SUITES.get_partition_keys():
            found = run(f"{model}_model_eval", "results", partition=s)
            if found is not None:
                evaluations[f"{model} ({s})"] = found
    for t in adapters:
        for s in SUITES.get_partition_keys():
            found = run("lora_model_eval", "results", partition=f"{t}|{s}")
            if found is not None:
                evaluations[f"lora:{t} ({s})"] = found
    trainings = {"pretrain": run("pretrained_model", "run"), "sft": run("sft_model", "run"),
                 **{f"lora:{t}": p for t, p in adapters.items()},
                 **{name: run(asset, "run") for name, asset in ALIGNMENT_RUNS.items()}}
    release = current_release(store)
    candidate = None
    sft, evaluated = store.latest("sft_model"), run("sft_model_eval", "results", partition=suite)
    if sft is not None and evaluated is not None and (evaluated / "summary.json").exists():
        summary = EvalSummary.model_validate(read_json(evaluated / "summary.json"))
        gate = release_gate(summary, load_suite(suite), release["scores"] if release else None)
        candidate = {"version": sft.name, "rows": gate.rows, "passed": gate.passed}
    return ReportInputs(
        funnel=[(s, store.fixed_path(s, "documents")) for s in stage_names(STAGES)],
        tokenizer_dir=run("tokenizer", "tokenizer"),
        trainings={k: v for k, v in trainings.items() if v is not None},
        evaluations=evaluations,
        alignment={name: p for name, asset in ALIGNMENT_RUNS.items()
                   if (p := run(asset, "run")) is not None},
        arena_dir=run("arena_ratings", "arena"),
        scaling_fit=store.root_dir() / "scaling_fit" / "latest.json",
        release=release, candidate=candidate)


@dg.asset(code_version="report-3", group_name="report", kinds={"markdown"},
          deps=[*stage_names(STAGES), "tokenizer",
                "pretrained_model", "sft_model", "lora_adapter",
                "base_model_eval", "sft_model_eval", "lora_model_eval", "released_model",
                "reward_model", "dpo_model", "grpo_model", "arena_ratings"])
def pipeline_report(config: PipelineReportConfig, store: ArtifactStore) -> dg.MaterializeResult:
    inputs = report_inputs(store, config.suite)
    out = store.path("pipeline_report", "report")
    stats = write_report(inputs, out)
    return dg.MaterializeResult(metadata={
        **stats.to_metadata(), "report_md": dg.MetadataValue.md(stats.path.read_text())})
