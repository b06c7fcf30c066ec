"""Curation: extract main text, filter by language and quality, remove near-duplicates.

Each stage is partitioned by day. It reads the day's Parquet documents of the stage before from
the artifact store and writes its own (``<asset>/documents/<day>.parquet``), with the removed
documents, and why, beside them (``<day>.removed.parquet``). A new day is deduplicated against
every day kept before it, through a persistent MinHash index.
"""


import shutil
from typing import Optional

import dagster as dg
from pydantic import Field

from lmforge.curate.decontaminate import DecontamConfig, decontaminate
from lmforge.curate.dedup import DedupConfig, dedup_documents, start_index_from
from lmforge.curate.extract import ExtractConfig, extract
from lmforge.curate.filter import FilterConfig, filter_documents
from lmforge.curate.quality import (QualityConfig, default_positives, score_documents,
                                    train_quality_classifier)
from lmforge.io import atomic_path, count_rows, removed_path_for
from assets.partitions import DAILY
from resources import ArtifactStore, dagster_config, engine_config

ExtractedDocumentsConfig = dagster_config(ExtractConfig, "ExtractedDocumentsConfig")
FilteredDocumentsConfig = dagster_config(FilterConfig, "FilteredDocumentsConfig")
QualityClassifierConfig = dagster_config(
    QualityConfig, "QualityClassifierConfig", exclude={"threshold", "keep_fraction", "batch_rows"})
DeduplicatedDocumentsConfig = dagster_config(DedupConfig, "DeduplicatedDocumentsConfig")
DecontaminatedDocumentsConfig = dagster_config(DecontamConfig, "DecontaminatedDocumentsConfig")


def all_documents(store: ArtifactStore, asset_name: str):
    """The directory of every day's documents of a stage (what unpartitioned readers take)."""
    return store.path(asset_name, "documents")


def documents_path(store: ArtifactStore, asset_name: str, day: str):
    return all_documents(store, asset_name) / f"{day}.parquet"


def removed_path(store: ArtifactStore, asset_name: str, day: str):
    return removed_path_for(documents_path(store, asset_name, day))


@dg.asset(code_version="extract-2", group_name="data", kinds={"resiliparse", "parquet"},
          deps=["crawled_pages"], partitions_def=DAILY)
def extracted_documents(context: dg.AssetExecutionContext, config: ExtractedDocumentsConfig,
                        store: ArtifactStore) -> dg.MaterializeResult:
    """The main text of every HTML page of the day's crawl."""
    day = context.partition_key
    warcs = sorted(store.path("crawled_pages", day).glob("*.warc.gz"))
    out = documents_path(store, "extracted_documents", day)
    stats = extract(warcs, out, engine_config(ExtractConfig, config))
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset(code_version="filter-2", group_name="data", kinds={"fasttext", "parquet"},
          deps=[extracted_documents], partitions_def=DAILY)
def filtered_documents(context: dg.AssetExecutionContext, config: FilteredDocumentsConfig,
                       store: ArtifactStore) -> dg.MaterializeResult:
    """Documents in the wanted languages (fastText lid.176) that pass the quality heuristics."""
    day = context.partition_key
    out = documents_path(store, "filtered_documents", day)
    stats = filter_documents(documents_path(store, "extracted_documents", day), out,
                             removed_path(store, "filtered_documents", day),
                             engine_config(FilterConfig, config))
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset(code_version="quality-model-1", group_name="data", kinds={"fasttext"},
          deps=[extracted_documents])
def quality_classifier(context: dg.AssetExecutionContext, config: QualityClassifierConfig,
                       store: ArtifactStore) -> dg.MaterializeResult:
    """A fastText classifier, DCLM-style: reference text (`positives`; default GSM8K's train
    split from the benchmark mirror) against the raw crawl of every day so far. Without
    reference text it is
    skipped, with the reason, and the quality filter passes documents through."""
    cfg = engine_config(QualityConfig, config)
    out = store.path("quality_classifier", "model")
    try:
        if not cfg.positives:
            default_positives()  # raises when there is no reference text on this machine
    except FileNotFoundError as e:
        shutil.rmtree(out, ignore_errors=True)
        context.log.warning("quality classifier skipped: %s", e)
        return dg.MaterializeResult(metadata={"skipped": str(e)})
    stats = train_quality_classifier(all_documents(store, "extracted_documents"), out, cfg)
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


class QualityFilterConfig(dg.Config):
    threshold: float = Field(default=0.5, description="keep documents with P(reference) >= this")
    keep_fraction: Optional[float] = Field(
        default=0.9, description="keep this top fraction by score instead of a fixed threshold "
        "(DCLM keeps 0.1; the tiny demo 0.9, since its crawl is one homogeneous site); "
        "null: use the threshold")


@dg.asset(code_version="quality-filter-2", group_name="data", kinds={"fasttext", "parquet"},
          deps=[filtered_documents, quality_classifier], partitions_def=DAILY)
def quality_filtered_documents(context: dg.AssetExecutionContext, config: QualityFilterConfig,
                               store: ArtifactStore) -> dg.MaterializeResult:
    """Filtered documents the quality classifier scores highest (all of them when it was skipped)."""
    day = context.partition_key
    source = documents_path(store, "filtered_documents", day)
    out = documents_path(store, "quality_filtered_documents", day)
    model = store.path("quality_classifier", "model")
    if not (model / "quality.json").exists():
        context.log.warning("no quality classifier: documents pass through unscored")
        with atomic_path(out) as tmp:
            shutil.copyfile(source, tmp)
        removed_path(store, "quality_filtered_documents", day).unlink(missing_ok=True)
        return dg.MaterializeResult(metadata={"path": str(out), "skipped": "no quality classifier",
                                              "kept_documents": count_rows(out)})
    cfg = QualityConfig(threshold=config.threshold, keep_fraction=config.keep_fraction)
    stats = score_documents(source, out, removed_path(store, "quality_filtered_documents", day),
                            model, cfg)
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


def dedup_index(store: ArtifactStore, day: str):
    """The day's dedup index directory: the index after that day (Parquet, .npy and JSON)."""
    return store.path("deduplicated_documents", "index", day)


@dg.asset(code_version="dedup-3", group_name="data", kinds={"datasketch", "parquet"},
          deps=[quality_filtered_documents], partitions_def=DAILY)
def deduplicated_documents(context: dg.AssetExecutionContext, config: DeduplicatedDocumentsConfig,
                           store: ArtifactStore) -> dg.MaterializeResult:
    """The day's documents without exact or near duplicates (MinHash LSH), within the day and
    against every earlier day. The index after each day is kept (``index/<day>/``): a day
    starts from a copy of the latest earlier day's index, so materializing a day again gives the
    same result, and a backfill of an earlier day does not change the later days. An earlier
    day's index in the old pickle format (``<day>.pkl``) is refused, never read."""
    day = context.partition_key
    index = dedup_index(store, day)
    snapshots = index.parent
    # The latest earlier day; its directory over an old `<day>.pkl` beside it.
    earlier = sorted((p for p in snapshots.iterdir()
                      if p.name.split(".")[0] < day and not p.name.startswith(".")),
                     key=lambda p: (p.name.split(".")[0], p.is_dir())) if snapshots.is_dir() else []
    start_index_from(earlier[-1] if earlier else None, index)
    cfg = engine_config(DedupConfig, config, index_path=str(index))
    out = documents_path(store, "deduplicated_documents", day)
    stats = dedup_documents(documents_path(store, "quality_filtered_documents", day), out,
                            removed_path(store, "deduplicated_documents", day), cfg)
    return dg.MaterializeResult(metadata={
        "path": str(out), "index": str(index),
        "deduplicated_against": earlier[-1].name if earlier else "nothing (first day)",
        **stats.to_metadata()})


@dg.asset(code_version="decontam-2", group_name="data", kinds={"parquet"},
          deps=[deduplicated_documents], partitions_def=DAILY)
def decontaminated_documents(context: dg.AssetExecutionContext,
                             config: DecontaminatedDocumentsConfig,
                             store: ArtifactStore) -> dg.MaterializeResult:
    """Deduplicated documents without any that share a 13-gram with an evaluation set."""
    day = context.partition_key
    out = documents_path(store, "decontaminated_documents", day)
    stats = decontaminate(documents_path(store, "deduplicated_documents", day), out,
                          removed_path(store, "decontaminated_documents", day),
                          engine_config(DecontamConfig, config))
    meta = stats.to_metadata()
    for name, reason in meta.get("skipped_benchmarks", {}).items():
        context.log.warning("decontamination against %s skipped: %s", name, reason)
    return dg.MaterializeResult(metadata={"path": str(out), **meta})


def _not_empty(store: ArtifactStore, asset_name: str, day: str,
               severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    path = documents_path(store, asset_name, day)
    rows = count_rows(path) if path.exists() else 0
    return dg.AssetCheckResult(passed=rows > 0, severity=severity, metadata={"documents": rows},
                               description=None if rows else f"{asset_name} kept no document")


@dg.asset_check(asset=extracted_documents, blocking=True, partitions_def=DAILY)
def extracted_documents_not_empty(context: dg.AssetCheckExecutionContext,
                                  store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "extracted_documents", context.partition_key)


@dg.asset_check(asset=filtered_documents, blocking=True, partitions_def=DAILY)
def filtered_documents_not_empty(context: dg.AssetCheckExecutionContext,
                                 store: ArtifactStore) -> dg.AssetCheckResult:
    """A filter that kept nothing is misconfigured (wrong language, thresholds too strict)."""
    return _not_empty(store, "filtered_documents", context.partition_key)


@dg.asset_check(asset=quality_filtered_documents, blocking=True, partitions_def=DAILY)
def quality_filtered_documents_not_empty(context: dg.AssetCheckExecutionContext,
                                         store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "quality_filtered_documents", context.partition_key)


@dg.asset_check(asset=deduplicated_documents, partitions_def=DAILY)
def deduplicated_documents_not_empty(context: dg.AssetCheckExecutionContext,
                                     store: ArtifactStore) -> dg.AssetCheckResult:
    """A warning only: a day that repeats earlier days adds nothing new, which is no error."""
    return _not_empty(store, "deduplicated_documents", context.partition_key,
                      dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset=decontaminated_documents, partitions_def=DAILY)
def decontaminated_documents_not_empty(context: dg.AssetCheckExecutionContext,
                                       store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "decontaminated_documents", context.partition_key,
                      dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset=quality_classifier)
def quality_classifier_separates(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Held-out AUC of reference against crawl text; a warning when skipped or weak."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("quality_classifier"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    if "skipped" in meta:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"skipped: {meta['skipped'].value}")
    auc = float(meta["heldout_auc"].value) if "heldout_auc" in meta else 0.0
    return dg.AssetCheckResult(passed=auc >= 0.9, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"heldout_auc": auc})


@dg.asset_check(asset=decontaminated_documents, partitions_def=DAILY)
def decontamination_covered_every_benchmark(context: dg.AssetCheckExecutionContext
                                            ) -> dg.AssetCheckResult:
    """A warning when a benchmark's data was missing, so its contamination was not checked."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("decontaminated_documents"),
                              asset_partitions=[context.partition_key]), limit=1).records
    meta = records[0].event_log_entry.asset_materialization.metadata if records else {}
    skipped = meta["skipped_benchmarks"].value if "skipped_benchmarks" in meta else {}
    return dg.AssetCheckResult(passed=bool(records) and not skipped,
                               severity=dg.AssetCheckSeverity.WARN,
                               metadata={"skipped": dg.MetadataValue.json(skipped)})


@dg.asset_check(asset=deduplicated_documents, partitions_def=DAILY)
def dedup_rate_in_band(context: dg.AssetCheckExecutionContext,
                       store: ArtifactStore) -> dg.AssetCheckResult:
    """Within one day, a dedup that removes more than half usually means a broken normalization
    (or a site that did not change since the day before)."""
    day = context.partition_key
    before = count_rows(documents_path(store, "quality_filtered_documents", day))
    after = count_rows(documents_path(store, "deduplicated_documents", day))
    rate = 1 - after / before if before else 0.0
    return dg.AssetCheckResult(passed=rate <= 0.5, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"dedup_rate": rate, "before": before, "after": after})
