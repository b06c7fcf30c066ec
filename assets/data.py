"""Curation: extract main text, then the chain of stages in ``lmforge.curate.stages``.

Each stage is partitioned by day. It reads the day's Parquet documents of the stage before from
the artifact store and writes its own: a day directory ``<asset>/documents/<day>/`` of parts
(``part-00000.parquet``, one per WARC file or input part, each with its removed documents, and
why, beside it in ``part-00000.removed.parquet``) and ``_manifest.json``, written last. The
shards run where the run config's ``backend`` / ``workers`` / ``ray_address`` say (a process
pool, a Ray cluster); a day directory without its manifest is never read, and a run again after
a kill keeps the parts already written. Days written before, as one ``<day>.parquet`` file, are
still read. The stage assets and their checks are
generated from ``CURATION_STAGES``: adding a stage there adds its asset, its checks, its place in
the lineage and in the data every later stage reads. Everything after curation reads
``curated_corpus(store)``, the last stage's documents.
"""

import shutil

import dagster as dg

from lmforge.curate.extract import ExtractConfig, extract_sharded
from lmforge.curate.parallel import ParallelConfig, with_parallel
from lmforge.curate.quality import QualityConfig, default_positives, train_quality_classifier
from lmforge.curate.stages import EXTRACTED, Stage, StageRun, active_stages, curated_corpus_name
from lmforge.io import count_rows, read_manifest, removed_path_for
from assets.partitions import DAILY
from resources import ArtifactStore, dagster_config, engine_config

STAGES = active_stages()
CURATED = curated_corpus_name(STAGES)

ExtractedDocumentsConfig = dagster_config(with_parallel(ExtractConfig), "ExtractedDocumentsConfig")
# The classifier's training fields; the scoring fields are the quality stage's.
_QUALITY_SCORING = {"threshold", "keep_fraction", "batch_rows"}
QualityClassifierConfig = dagster_config(QualityConfig, "QualityClassifierConfig",
                                         exclude=_QUALITY_SCORING)


def all_documents(store: ArtifactStore, asset_name: str):
    """The directory of every day's documents of a stage (what unpartitioned readers take)."""
    return store.fixed_path(asset_name, "documents")


def day_dir(store: ArtifactStore, asset_name: str, day: str):
    """Where a stage writes a day: a directory of parts and a manifest."""
    # Its own path (not documents/ / day): on a remote root each day is its own upload unit, so
    # days curated on different machines never replace each other's manifest.
    return store.fixed_path(asset_name, "documents", day)


def documents_path(store: ArtifactStore, asset_name: str, day: str):
    """Where a day's documents are read: its directory, or the single file a day written before
    parts were is (while its directory has no manifest)."""
    directory = day_dir(store, asset_name, day)
    legacy = directory.with_name(f"{day}.parquet")
    if legacy.is_file() and read_manifest(directory) is None:
        return legacy
    return directory


def day_written(path) -> bool:
    """Whether a day's documents are there to read (a file, or a directory with its manifest)."""
    return path.is_file() or (path.is_dir() and read_manifest(path) is not None)


def _drop_legacy_day(store: ArtifactStore, asset_name: str, day: str) -> None:
    """Once the day's directory is committed, the single file of an earlier run goes."""
    legacy = day_dir(store, asset_name, day).with_name(f"{day}.parquet")
    for old in (legacy, removed_path_for(legacy)):
        old.unlink(missing_ok=True)


def curated_corpus(store: ArtifactStore):
    """Every day's documents of the last curation stage: what the tokenizer and SFT data read."""
    return all_documents(store, CURATED)


@dg.asset(code_version="extract-2", group_name="data", kinds={"resiliparse", "parquet"},
          deps=["crawled_pages"], partitions_def=DAILY)
def extracted_documents(context: dg.AssetExecutionContext, config: ExtractedDocumentsConfig,
                        store: ArtifactStore) -> dg.MaterializeResult:
    """The main text of every HTML page of the day's crawl."""
    day = context.partition_key
    warcs = sorted(store.fixed_path("crawled_pages", day).glob("*.warc.gz"))
    out = day_dir(store, EXTRACTED, day)
    stats = extract_sharded(warcs, out, engine_config(ExtractConfig, config),
                            engine_config(ParallelConfig, config))
    _drop_legacy_day(store, EXTRACTED, day)
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset(code_version="quality-model-1", group_name="data", kinds={"fasttext"},
          deps=[extracted_documents])
def quality_classifier(context: dg.AssetExecutionContext, config: QualityClassifierConfig,
                       store: ArtifactStore) -> dg.MaterializeResult:
    """A fastText classifier, DCLM-style: reference text (`positives`; default GSM8K's train
    split from the benchmark mirror) against the raw crawl of every day so far. Without
    reference text it is skipped, with the reason, and the quality stage passes documents
    through."""
    cfg = engine_config(QualityConfig, config)
    out = store.fixed_path("quality_classifier", "model")
    try:
        if not cfg.positives:
            default_positives()  # raises when there is no reference text on this machine
    except FileNotFoundError as e:
        shutil.rmtree(out, ignore_errors=True)
        context.log.warning("quality classifier skipped: %s", e)
        return dg.MaterializeResult(metadata={"skipped": str(e)})
    stats = train_quality_classifier(all_documents(store, EXTRACTED), out, cfg)
    return dg.MaterializeResult(metadata={"path": str(out), **stats.to_metadata()})


@dg.asset_check(asset=extracted_documents, blocking=True, partitions_def=DAILY)
def extracted_documents_not_empty(context: dg.AssetCheckExecutionContext,
                                  store: ArtifactStore) -> dg.AssetCheckResult:
    return documents_not_empty(store, EXTRACTED, context.partition_key, blocking=True)


@dg.asset_check(asset=quality_classifier)
def quality_classifier_separates(store: ArtifactStore) -> dg.AssetCheckResult:
    """Held-out AUC of reference against crawl text; a warning when skipped or weak."""
    meta = store.latest_metadata("quality_classifier")
    if "skipped" in meta:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"skipped: {meta['skipped'].value}")
    auc = float(meta["heldout_auc"].value) if "heldout_auc" in meta else 0.0
    return dg.AssetCheckResult(passed=auc >= 0.9, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"heldout_auc": auc})


def documents_not_empty(store: ArtifactStore, asset_name: str, day: str,
                        blocking: bool) -> dg.AssetCheckResult:
    """The one "kept something" check: an error for stages that must keep documents, a warning
    for those where a day may add nothing (a day that repeats earlier days)."""
    path = documents_path(store, asset_name, day)
    rows = count_rows(path) if day_written(path) else 0
    return dg.AssetCheckResult(
        passed=rows > 0, metadata={"documents": rows},
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        description=None if rows else f"{asset_name} kept no document")


def _stage_asset(stage: Stage, upstream: str):
    """The day-partitioned asset of one stage, and its checks."""
    exclude = set(stage.fixed_fields)
    if stage.config_fields is not None:
        exclude |= set(stage.config_class().model_fields) - set(stage.config_fields)
    title = "".join(part.title() for part in stage.name.split("_"))
    RunConfig = dagster_config(with_parallel(stage.config_class()), f"{title}Config",
                               exclude=exclude)

    # A stage that reads its own earlier days (dedup's index) waits for the day before, so a
    # backfill runs the days in order.
    previous_day = ([dg.AssetDep(stage.name, partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1))] if stage.depends_on_previous_day else [])

    @dg.asset(name=stage.name, code_version=f"{stage.name}-{stage.version}", group_name="data",
              kinds=set(stage.kinds), deps=[upstream, *stage.needs, *previous_day],
              partitions_def=DAILY,
              description=stage.summary)
    def _asset(context: dg.AssetExecutionContext, config: RunConfig,  # type: ignore[valid-type]
               store: ArtifactStore) -> dg.MaterializeResult:
        day = context.partition_key
        out = day_dir(store, stage.name, day)
        run = StageRun(input=documents_path(store, upstream, day), output=out, removed=None,
                       config=engine_config(stage.config_class(), config), day=day,
                       state_dir=store.fixed_path(stage.name, "index"),
                       needs={name: store.asset_dir(name) for name in stage.needs},
                       parallel=engine_config(ParallelConfig, config))
        stats = stage(run)
        _drop_legacy_day(store, stage.name, day)
        meta = {"path": str(out), **stats.to_metadata(),
                **getattr(stats, "extra_metadata", {})}
        for name, reason in (meta.get("skipped_benchmarks") or {}).items():
            context.log.warning("%s: %s skipped: %s", stage.name, name, reason)
        if "skipped" in meta:
            context.log.warning("%s passed documents through: %s", stage.name, meta["skipped"])
        return dg.MaterializeResult(metadata=meta)

    @dg.asset_check(asset=_asset, name=f"{stage.name}_not_empty", blocking=stage.must_keep,
                    partitions_def=DAILY, description="The day kept at least one document.")
    def _not_empty(context: dg.AssetCheckExecutionContext,
                   store: ArtifactStore) -> dg.AssetCheckResult:
        return documents_not_empty(store, stage.name, context.partition_key, stage.must_keep)

    checks = [_not_empty]
    for check in stage.checks:
        checks.append(_stage_check(_asset, stage, upstream, check))
    return _asset, checks


def _stage_check(asset, stage: Stage, upstream: str, check):
    @dg.asset_check(asset=asset, name=check.name, blocking=check.blocking, partitions_def=DAILY,
                    description=check.description)
    def _check(context: dg.AssetCheckExecutionContext,
               store: ArtifactStore) -> dg.AssetCheckResult:
        day = context.partition_key
        meta = {k: v.value for k, v in store.latest_metadata(stage.name, day).items()}
        before = count_rows(documents_path(store, upstream, day))
        after = count_rows(documents_path(store, stage.name, day))
        passed, description, extra = check.fn(meta, before, after)
        return dg.AssetCheckResult(
            passed=passed, description=description,
            severity=dg.AssetCheckSeverity.ERROR if check.blocking else dg.AssetCheckSeverity.WARN,
            metadata={k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v)
                      for k, v in extra.items()})

    return _check


def _curation_assets():
    made, checks, upstream = [], [], EXTRACTED
    for stage in STAGES:
        asset, stage_checks = _stage_asset(stage, upstream)
        made.append(asset)
        checks.extend(stage_checks)
        upstream = stage.name
    return made, checks


stage_assets, stage_checks = _curation_assets()
