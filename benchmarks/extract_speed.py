"""Text extraction from WARC: resiliparse (lmforge's default) against trafilatura.

    .venv/bin/python benchmarks/extract_speed.py [WARC_DIR] [--pages 300]

Without WARC_DIR it crawls ``--pages`` pages of the local pydoc server first. For each extractor
it prints the time, pages/s and how much text it kept: on documentation pages the question is as
much "does it keep the docs?" as "how fast?".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from lmforge.crawl.crawler import CrawlConfig, crawl
from lmforge.crawl.local_site import serve_python_docs
from lmforge.curate.extract import ExtractConfig, extract

CONFIGS = {
    "resiliparse (default)": ExtractConfig(),
    "resiliparse main_content=True": ExtractConfig(main_content=True),
    "trafilatura favor_recall=True": ExtractConfig(extractor="trafilatura"),
    "trafilatura defaults": ExtractConfig(extractor="trafilatura", favor_recall=False,
                                          include_tables=False),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("warc_dir", nargs="?", help="WARC files to read (default: crawl pydoc)")
    p.add_argument("--pages", type=int, default=300)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        warcs = Path(args.warc_dir) if args.warc_dir else Path(tmp, "crawl")
        if not args.warc_dir:
            with serve_python_docs() as url:
                crawl(CrawlConfig(seeds=[url], max_pages=args.pages), warcs)
        print(f"{'extractor':32s} {'seconds':>8s} {'pages/s':>8s} {'docs':>5s} {'HTML MB':>8s} {'text MB':>8s}")
        for name, cfg in CONFIGS.items():
            s = extract(warcs, Path(tmp, "docs.parquet"), cfg).to_metadata()
            print(f"{name:32s} {s['elapsed_s']:8.2f} {s['pages_per_s']:8.1f} {s['documents']:5d} "
                  f"{s['html_mb']:8.2f} {s['text_mb']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
