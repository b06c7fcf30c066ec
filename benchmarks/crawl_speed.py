"""How fast does ``lmforge crawl`` fetch the local pydoc site, against ``wget --warc-file``?

    .venv/bin/python benchmarks/crawl_speed.py [--pages 300]

Both crawl the same fresh pydoc server breadth first into gzip WARC. wget (GNU Wget, if
installed) fetches one URL at a time; lmforge runs with the concurrency values given. The pydoc
server itself answers one request at a time, so the gain from concurrency here is the overlap of
network and parsing, not parallel page rendering.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmforge.crawl.crawler import CrawlConfig, crawl
from lmforge.crawl.local_site import serve_python_docs


def run_lmforge(url: str, pages: int, concurrency: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as out:
        cfg = CrawlConfig(seeds=[url], max_pages=pages, concurrency=concurrency,
                          per_host_concurrency=concurrency)
        stats = crawl(cfg, out)
        return stats.elapsed_s, stats.pages_fetched, stats.bytes


def run_wget(url: str, pages: int) -> tuple[float, int, int] | None:
    if shutil.which("wget") is None:
        return None
    with tempfile.TemporaryDirectory() as out:
        # wget has no page budget; --quota stops it after roughly as many bytes as lmforge got.
        start = time.monotonic()
        subprocess.run(["wget", "--recursive", "--level=3", "--no-parent", "--no-verbose",
                        "--reject-regex", r"\?", f"--quota={pages * 40}k", "--warc-file",
                        str(Path(out, "wget")), "--directory-prefix", out, url],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.monotonic() - start
        files = [p for p in Path(out).rglob("*.html")]
        return elapsed, len(files), sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=300)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = p.parse_args(argv)
    rows = []
    for c in args.concurrency:
        with serve_python_docs() as url:  # a fresh server each time: no warm caches
            rows.append((f"lmforge crawl, concurrency {c}", *run_lmforge(url, args.pages, c)))
    with serve_python_docs() as url:
        w = run_wget(url, args.pages)
    if w is not None:
        rows.append(("wget --recursive --warc-file", *w))
    print(f"{'crawler':34s} {'seconds':>8s} {'pages':>6s} {'pages/s':>8s} {'MB':>7s}")
    for name, secs, pages, nbytes in rows:
        print(f"{name:34s} {secs:8.2f} {pages:6d} {pages / secs:8.1f} {nbytes / 1e6:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
