"""Crawl: the web pages every later stage starts from, as WARC files."""


import contextlib
import shutil

import dagster as dg

from lmforge.crawl.crawler import CrawlConfig, crawl
from lmforge.crawl.local_site import serve_python_docs
from resources import ArtifactStore, dagster_config, engine_config

CrawledPagesConfig = dagster_config(CrawlConfig, "CrawledPagesConfig")


@dg.asset(code_version="crawl-1", group_name="crawl", kinds={"warc"})
def crawled_pages(context: dg.AssetExecutionContext, config: CrawledPagesConfig,
                  store: ArtifactStore) -> dg.MaterializeResult:
    """WARC files of a polite crawl. With no seeds, the crawl starts a local documentation server
    of this Python (pydoc) on loopback and crawls it: real pages that exist offline anywhere."""
    out_dir = store.asset_dir("crawled_pages")
    with contextlib.ExitStack() as stack:
        overrides = {}
        if not config.seeds:
            # The documentation server gets a new port each time, so its URLs never match a
            # previous crawl's: take a fresh snapshot instead of resuming.
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            base_url = stack.enter_context(serve_python_docs())
            context.log.info("no seeds configured: crawling this Python's documentation at %s", base_url)
            overrides["seeds"] = [base_url]
        cfg = engine_config(CrawlConfig, config, **overrides)
        stats = crawl(cfg, out_dir)
    return dg.MaterializeResult(metadata={"path": str(out_dir), **stats.to_metadata()})


@dg.asset_check(asset=crawled_pages, blocking=True)
def crawl_fetched_pages(store: ArtifactStore) -> dg.AssetCheckResult:
    """The crawl stored at least one page."""
    warcs = sorted(store.asset_dir("crawled_pages").glob("*.warc.gz"))
    size = sum(w.stat().st_size for w in warcs)
    return dg.AssetCheckResult(passed=bool(warcs) and size > 0,
                               metadata={"warc_files": len(warcs), "bytes": size})
