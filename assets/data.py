"""Curation: extract main text, filter by language and quality, remove near-duplicates.

Each stage reads the Parquet documents of the one before from the artifact store and writes its
own, with the removed documents (and why) beside them.
"""


import dagster as dg

from lmforge.curate.decontaminate import DecontamConfig, decontaminate
from lmforge.curate.dedup import DedupConfig, dedup_documents
from lmforge.curate.extract import ExtractConfig, extract
from lmforge.curate.filter import FilterConfig, filter_documents
from lmforge.io import count_rows, removed_path_for
from resources import ArtifactStore, dagster_config, engine_config

ExtractedDocumentsConfig = dagster_config(ExtractConfig, "ExtractedDocumentsConfig")
FilteredDocumentsConfig = dagster_config(FilterConfig, "FilteredDocumentsConfig")
DeduplicatedDocumentsConfig = dagster_config(DedupConfig, "DeduplicatedDocumentsConfig")
DecontaminatedDocumentsConfig = dagster_config(DecontamConfig, "DecontaminatedDocumentsConfig")


def documents_path(store: ArtifactStore, asset_name: str):
    return store.path(asset_name, "documents.parquet")


def removed_path(store: ArtifactStore, asset_name: str):
    # the sibling naming every curation stage uses: documents.parquet -> documents.removed.parquet
    return removed_path_for(documents_path(store, asset_name))


@dg.asset(code_version="extract-1", group_name="data", kinds={"resiliparse", "parquet"},
          deps=["crawled_pages"])
def extracted_documents(config: ExtractedDocumentsConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """The main text of every HTML page of the crawl."""
    warcs = sorted(store.asset_dir("crawled_pages").glob("*.warc.gz"))
    out = documents_path(store, "extracted_documents")
    stats = extract(warcs, out, engine_config(ExtractConfig, config))
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset(code_version="filter-1", group_name="data", kinds={"fasttext", "parquet"},
          deps=[extracted_documents])
def filtered_documents(config: FilteredDocumentsConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Documents in the wanted languages (fastText lid.176) that pass the quality heuristics."""
    out = documents_path(store, "filtered_documents")
    stats = filter_documents(documents_path(store, "extracted_documents"), out,
                             removed_path(store, "filtered_documents"),
                             engine_config(FilterConfig, config))
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset(code_version="dedup-1", group_name="data", kinds={"datasketch", "parquet"},
          deps=[filtered_documents])
def deduplicated_documents(config: DeduplicatedDocumentsConfig,
                           store: ArtifactStore) -> dg.MaterializeResult:
    """Filtered documents without exact or near duplicates (MinHash LSH)."""
    out = documents_path(store, "deduplicated_documents")
    stats = dedup_documents(documents_path(store, "filtered_documents"), out,
                            removed_path(store, "deduplicated_documents"),
                            engine_config(DedupConfig, config))
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset(code_version="decontam-1", group_name="data", kinds={"parquet"},
          deps=[deduplicated_documents])
def decontaminated_documents(context: dg.AssetExecutionContext,
                             config: DecontaminatedDocumentsConfig,
                             store: ArtifactStore) -> dg.MaterializeResult:
    """Deduplicated documents without any that share a 13-gram with an evaluation set."""
    out = documents_path(store, "decontaminated_documents")
    stats = decontaminate(documents_path(store, "deduplicated_documents"), out,
                          removed_path(store, "decontaminated_documents"),
                          engine_config(DecontamConfig, config))
    meta = stats.to_metadata()
    for name, reason in meta.get("skipped_benchmarks", {}).items():
        context.log.warning("decontamination against %s skipped: %s", name, reason)
    return dg.MaterializeResult(metadata={"path": str(out), **meta})


def _not_empty(store: ArtifactStore, asset_name: str) -> dg.AssetCheckResult:
    path = documents_path(store, asset_name)
    rows = count_rows(path) if path.exists() else 0
    return dg.AssetCheckResult(passed=rows > 0, metadata={"documents": rows},
                               description=None if rows else f"{asset_name} kept no document")


@dg.asset_check(asset=extracted_documents, blocking=True)
def extracted_documents_not_empty(store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "extracted_documents")


@dg.asset_check(asset=filtered_documents, blocking=True)
def filtered_documents_not_empty(store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "filtered_documents")


@dg.asset_check(asset=deduplicated_documents, blocking=True)
def deduplicated_documents_not_empty(store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "deduplicated_documents")


@dg.asset_check(asset=decontaminated_documents, blocking=True)
def decontaminated_documents_not_empty(store: ArtifactStore) -> dg.AssetCheckResult:
    return _not_empty(store, "decontaminated_documents")


@dg.asset_check(asset=decontaminated_documents)
def decontamination_covered_every_benchmark(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """A warning when a benchmark's data was missing, so its contamination was not checked."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("decontaminated_documents"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    skipped = meta["skipped_benchmarks"].value if "skipped_benchmarks" in meta else {}
    return dg.AssetCheckResult(passed=not skipped, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"skipped": dg.MetadataValue.json(skipped)})


@dg.asset_check(asset=deduplicated_documents)
def dedup_rate_in_band(store: ArtifactStore) -> dg.AssetCheckResult:
    """A dedup that removes more than half the corpus usually means a broken normalization."""
    before = count_rows(documents_path(store, "filtered_documents"))
    after = count_rows(documents_path(store, "deduplicated_documents"))
    rate = 1 - after / before if before else 0.0
    return dg.AssetCheckResult(passed=rate <= 0.5, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"dedup_rate": rate, "before": before, "after": after})
