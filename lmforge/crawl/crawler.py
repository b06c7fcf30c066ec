"""A polite asynchronous web crawler that writes WARC files, as Common Crawl does.

    seeds -> frontier (deduplicated, breadth first) -> workers (asyncio + aiohttp)
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

Resume: the WARCs already in ``out_dir`` are read first. A URL stored there is never fetched
again; its stored links still feed the frontier, so a second run with a larger ``max_pages``
continues where the first stopped, and a run after a crash finishes the job. ``max_pages`` counts
the pages in ``out_dir``, not the pages of one run.

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

from lmforge.config import add_config_arguments, config_from_args
# The parts of the crawler, importable from here as before.
from lmforge.crawl.crawl_config import FAILURES_FILE, RETRY_STATUSES, CrawlConfig, CrawlStats  # noqa: F401
from lmforge.crawl.fetcher import _Crawler
from lmforge.crawl.robots import parse_crawl_delay  # noqa: F401
from lmforge.crawl.urls import (decode_html, detect_charset, extract_links,  # noqa: F401
                                host_allowed, looks_like_html, normalize_url)
from lmforge.crawl.warc_io import _load_stored, warc_files  # noqa: F401
from lmforge.errors import LmforgeError
from lmforge.io import claim_output_dir


async def crawl_async(cfg: CrawlConfig, out_dir: str | os.PathLike) -> CrawlStats:
    """``crawl`` for callers already inside an event loop."""
    if not cfg.seeds:
        raise ValueError("CrawlConfig.seeds is empty: give at least one start URL")
    # Written in place (resume reads it): a new, empty or lmforge-made directory only.
    out = claim_output_dir(out_dir)
    stored = _load_stored(out)
    return await _Crawler(cfg, out, stored).run()


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
                       prog=p.prog)

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
