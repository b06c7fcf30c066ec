"""Crawl: the web pages every later stage starts from, as WARC files, one directory per day."""


import contextlib
from pathlib import Path

import dagster as dg
from pydantic import Field

from lmforge.crawl.crawl_config import CrawlConfig
from lmforge.io import atomic_path
from assets.partitions import DAILY
from resources import ArtifactStore, dagster_config, engine_config

class CrawledPagesConfig(dagster_config(CrawlConfig, "CrawlRunConfig")):
    warc_sources: list[str] = Field(
        default_factory=list,
        description="Existing WARC files to take instead of crawling (Common Crawl segments): "
        "local paths, directories, file:// or http(s) URLs. When set, no crawl runs.")
    warc_workers: int = Field(
        default=4, ge=1,
        description="WARC files imported at once (threads); the import's manifest is written "
        "once per 4 x warc_workers files")


def crawl_dir(store: ArtifactStore, day: str):
    return store.fixed_path("crawled_pages", day)


@dg.asset(code_version="crawl-2", group_name="crawl", kinds={"warc"}, partitions_def=DAILY)
def crawled_pages(context: dg.AssetExecutionContext, config: CrawledPagesConfig,
                  store: ArtifactStore) -> dg.MaterializeResult:
    """WARC files of a polite crawl (or imported WARC files, e.g. Common Crawl), one directory
    per day; materializing a day again resumes it. With no seeds and no WARC sources, the crawl
    starts a local documentation server of this Python (pydoc) on
    loopback and crawls it: real pages that exist offline anywhere."""
    # The crawler (aiohttp) and the WARC importer load when the asset runs, not with the graph.
    from lmforge.crawl.crawler import crawl
    from lmforge.crawl.local_site import serve_python_docs
    from lmforge.crawl.warc_source import import_warcs

    out_dir = crawl_dir(store, context.partition_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.warc_sources:
        stats = import_warcs(config.warc_sources, out_dir, workers=config.warc_workers)
        if stats.failures:
            context.log.warning("%d WARC sources failed: %s", len(stats.failures),
                                stats.failures_by_reason)
        return dg.MaterializeResult(metadata={"path": str(out_dir), "source": "warc_import",
                                              **stats.to_metadata()})
    with contextlib.ExitStack() as stack:
        overrides = {}
        target = out_dir
        if not config.seeds:
            # The documentation server gets a new port each time, so its URLs never match a
            # previous crawl's: take a fresh snapshot instead of resuming, beside the last one,
            # which it replaces only once complete (a failed crawl leaves the last one in place).
            target = stack.enter_context(atomic_path(out_dir, "dir"))
            base_url = stack.enter_context(serve_python_docs())
            context.log.info("no seeds configured: crawling this Python's documentation at %s", base_url)
            overrides["seeds"] = [base_url]
        cfg = engine_config(CrawlConfig, config, **overrides)
        stats = crawl(cfg, target)
    # A fresh snapshot was written in a temporary directory and renamed onto the day's: name
    # the files where they are now.
    stats.warc_files = [str(out_dir / Path(f).name) for f in stats.warc_files]
    return dg.MaterializeResult(metadata={"path": str(out_dir), **stats.to_metadata()})


@dg.asset_check(asset=crawled_pages, blocking=True, partitions_def=DAILY)
def crawl_fetched_pages(context: dg.AssetCheckExecutionContext,
                        store: ArtifactStore) -> dg.AssetCheckResult:
    """The day's crawl stored at least one page."""
    warcs = sorted(crawl_dir(store, context.partition_key).glob("*.warc.gz"))
    size = sum(w.stat().st_size for w in warcs)
    return dg.AssetCheckResult(passed=bool(warcs) and size > 0,
                               metadata={"warc_files": len(warcs), "bytes": size})
