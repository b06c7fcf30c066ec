"""A polite asynchronous web crawler that writes WARC files, as Common Crawl does.

    seeds -> frontier (on disk, per host, shallowest first) -> workers (asyncio + aiohttp)
          -> robots.txt and per-host politeness -> fetch (retries, size cap, redirects by hand)
          -> WARC request/response records  +  failures.jsonl  +  links back into the frontier

Output in ``out_dir``:

- ``crawl-<time>-<tag>.warc.gz``: gzip WARC, one ``request`` and one ``response`` record per HTTP
  exchange that succeeded (2xx) or redirected (3xx), readable by ``warcio.ArchiveIterator``. It is
  written under a hidden temporary name and renamed when the crawl ends, so a file with the final
  name is always complete. Bodies are stored decoded (no Content-Encoding), capped at
  ``max_bytes`` with ``WARC-Truncated: length`` where the cap cut them.
- ``failures.jsonl``: every URL this run could not fetch, with a reason (``robots_disallowed``,
  ``timeout``, ``http_500``, ``content_type``, ``redirect_loop``, ...). Nothing fails silently.
- ``frontier.sqlite``: every URL the crawl has met and what became of it (queued, stored in
  which WARC file, failed): the frontier and the seen set, on disk (``lmforge.crawl.frontier``),
  so memory does not grow with the crawl.

Resume: a run goes on from the frontier of ``out_dir``. A URL stored in a WARC there is never
fetched again; the URLs that were queued, that failed, or whose WARC file a kill lost (it was
still open under its temporary name) are queued again. So a second run with a larger
``max_pages`` continues where the first stopped, and a run after a crash (or ``kill -9``)
finishes the job. ``max_pages`` counts the pages in ``out_dir``, not the pages of one run. A
crawl directory written before the frontier existed is read once (its WARCs' links, breadth
first from the seeds) into a new frontier.

Politeness: robots.txt is fetched once per host and obeyed (``urllib.robotparser``, RFC 9309: a
4xx robots.txt allows everything, an unreachable one disallows everything), its ``Crawl-delay``
spaces the requests to that host, and so does ``per_host_delay_s``; at most
``per_host_concurrency`` requests are open to one host at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from collections import deque
from pathlib import Path

from lmforge.config import add_config_arguments, config_from_args
# The parts of the crawler, importable from here as before.
from lmforge.crawl.crawl_config import FAILURES_FILE, RETRY_STATUSES, CrawlConfig, CrawlStats  # noqa: F401
from lmforge.crawl.fetcher import _Crawler
from lmforge.crawl.frontier import FRONTIER_FILE, Frontier
from lmforge.crawl.robots import parse_crawl_delay  # noqa: F401
from lmforge.crawl.urls import (decode_html, detect_charset, extract_links,  # noqa: F401
                                host_allowed, looks_like_html, normalize_url)
from lmforge.crawl.warc_io import _load_stored, warc_files  # noqa: F401
from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, claim_output_dir


async def crawl_async(cfg: CrawlConfig, out_dir: str | os.PathLike) -> CrawlStats:
    """``crawl`` for callers already inside an event loop."""
    if not cfg.seeds:
        raise ValueError("CrawlConfig.seeds is empty: give at least one start URL")
    # Written in place (resume reads it): a new, empty or lmforge-made directory only.
    out = claim_output_dir(out_dir)
    frontier = open_frontier(out, cfg)
    try:
        return await _Crawler(cfg, out, frontier).run()
    finally:
        frontier.close()


def open_frontier(out: Path, cfg: CrawlConfig) -> Frontier:
    """The frontier of crawl directory ``out``, agreeing with the WARC files there are."""
    path = out / FRONTIER_FILE
    if not path.exists() and warc_files(out):
        with atomic_path(path) as tmp:  # a kill mid-way leaves no half-read frontier
            legacy = Frontier(tmp)
            _frontier_from_warcs(legacy, out, cfg)
            legacy.close()
    frontier = Frontier(path)
    frontier.recover(p.name for p in warc_files(out))
    return frontier


def _frontier_from_warcs(frontier: Frontier, out: Path, cfg: CrawlConfig) -> None:
    """Fill a frontier from a crawl directory that has none (written before it existed): what
    the WARCs store, and their links, breadth first from the seeds as the crawl had met them.
    Such a directory was made by a crawl that held all its URLs in memory, so this may too."""
    stored = _load_stored(out)
    domains = cfg.domains()
    depth: dict[str, int] = {}
    todo = deque((seed, 0) for seed in cfg.seeds)
    while todo:
        url, d = todo.popleft()
        if url in depth or not host_allowed(url, domains):
            continue
        depth[url] = d
        s = stored.get(url)
        if s is not None:
            todo.extend([(s.redirect_to, d)] if s.redirect_to else [])
            todo.extend((link, d + 1) for link in s.links)
    for url, s in stored.items():
        frontier.mark_stored(url, s.warc, s.redirect_to is None, depth.get(url, 0))
    for url, d in depth.items():
        if url not in stored:
            frontier.add(url, d)


def crawl(cfg: CrawlConfig, out_dir: str | os.PathLike) -> CrawlStats:
    """Crawl ``cfg.seeds`` into ``out_dir`` (WARC + failures.jsonl); see the module docstring."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(crawl_async(cfg, out_dir))
    # Called from inside a running loop (a notebook, an async framework): crawl on a thread.
    result: list[CrawlStats] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(crawl_async(cfg, out_dir)))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge crawl", description=(
        "Crawl a site politely into gzip WARC files (plus failures.jsonl). Run it again on the "
        "same --out to resume: stored URLs are not fetched again."))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", action="append", default=[], help="start URL (repeatable; added to --seeds)")
    p.add_argument("--serve-python-docs", action="store_true",
                   help="start this Python's pydoc server on loopback and crawl it (adds a seed)")
    p.add_argument("--warc", action="append", default=[], metavar="PATH_OR_URL",
                   help="import this WARC file, directory of WARCs, file:// or http(s) URL (e.g. a "
                   "Common Crawl segment) into --out instead of crawling (repeatable; uses --retries)")
    from lmforge.crawl.warc_source import add_workers_argument
    add_workers_argument(p)
    add_config_arguments(p, CrawlConfig)
    # Earlier names of some fields' flags, kept for scripts that use them.
    p.add_argument("--allowed-domain", action="append", dest="allowed_domain", default=None,
                   help="same as --allowed-domains, one host at a time (repeatable)")
    p.add_argument("--delay", dest="per_host_delay_s", default=None, help="same as --per-host-delay-s")
    p.add_argument("--timeout", dest="timeout_s", default=None, help="same as --timeout-s")
    p.add_argument("--ignore-robots", dest="respect_robots", action="store_const", const=False,
                   default=None, help="same as --no-respect-robots")
    args = p.parse_args(argv)

    if args.warc:  # existing WARCs as the crawl: lmforge.crawl.warc_source
        if args.seed or args.seeds or args.serve_python_docs:
            print("lmforge crawl: --warc imports instead of crawling; leave out --seed and "
                  "--serve-python-docs", file=sys.stderr)
            return 2
        from lmforge.crawl.warc_source import run_cli

        try:
            retries = config_from_args(CrawlConfig, args).retries
        except LmforgeError as e:
            print(f"lmforge crawl: {e}", file=sys.stderr)
            return 2
        return run_cli(args.warc, args.out, retries=retries, max_bytes=None, timeout_s=60.0,
                       prog=p.prog, workers=args.workers)

    def run(extra_seeds: list[str]) -> int:
        try:
            base = config_from_args(CrawlConfig, args)
            domains = (base.allowed_domains or []) + (args.allowed_domain or [])
            cfg = config_from_args(CrawlConfig, args, seeds=base.seeds + extra_seeds,
                                   **({"allowed_domains": domains} if domains else {}))
            if not cfg.seeds:
                raise LmforgeError("give at least one --seed (or --serve-python-docs)")
        except LmforgeError as e:
            print(f"lmforge crawl: {e}", file=sys.stderr)
            return 2
        stats = crawl(cfg, args.out)
        print(json.dumps(stats.to_metadata(), indent=2))
        return 0

    if args.serve_python_docs:
        from lmforge.crawl.local_site import serve_python_docs
        with serve_python_docs() as url:
            return run(args.seed + [url])
    return run(args.seed)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('crawl', main, sys.argv[1:]))
