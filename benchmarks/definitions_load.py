"""How light the graph is to load, and what one small step costs through Dagster.

    .venv/bin/python benchmarks/definitions_load.py [--repeats 5] [--pages 20]

1. ``import pipelines.definitions`` in a fresh interpreter (what every step subprocess and every
   reload of the UI's code server pays): wall time and peak memory, against ``import dagster``
   alone (the floor no graph can go under), and their ratio.
2. One small step, extracting one day's pages, through ``dagster asset materialize`` (a new
   process that loads the definitions, as a run's step does) against the same work through the
   engine's own command ``lmforge extract``: what the graph adds to a step.

Each figure is the median of ``--repeats`` runs, measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process (GNU time's report)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True,
                          cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss_kib = int(proc.stderr.strip().splitlines()[-1])
    return wall, rss_kib / 1024


def _median(cmd: list[str], repeats: int, env: dict | None = None) -> tuple[float, float]:
    runs = [_timed(cmd, env) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pages", type=int, default=20, help="pages crawled for the step")
    args = p.parse_args(argv)
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time (/usr/bin/time; Debian package `time`)")
    py = sys.executable

    floor = _median([py, "-c", "import dagster"], args.repeats)
    defs = _median([py, "-c", "import pipelines.definitions"], args.repeats)
    print(f"{'':34s} {'seconds':>8s} {'peak MiB':>9s}")
    print(f"{'import dagster (the floor)':34s} {floor[0]:8.2f} {floor[1]:9.0f}")
    print(f"{'import pipelines.definitions':34s} {defs[0]:8.2f} {defs[1]:9.0f}")
    print(f"{'ratio':34s} {defs[0] / floor[0]:8.2f}x {defs[1] / floor[1]:8.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "DAGSTER_HOME": str(tmp / "dagster"),
               "LMFORGE_ARTIFACTS": str(tmp / "artifacts"), "HF_HUB_OFFLINE": "1"}
        (tmp / "dagster").mkdir()
        day = "2026-01-01"
        from lmforge.crawl.crawl_config import CrawlConfig
        from lmforge.crawl.crawler import crawl
        from lmforge.crawl.local_site import serve_python_docs

        warcs = tmp / "artifacts" / "tiny" / "crawled_pages" / day
        with serve_python_docs() as url:
            crawl(CrawlConfig(seeds=[url], max_pages=args.pages), warcs)
        step = _median([py, "-m", "dagster", "asset", "materialize", "-m", "pipelines.definitions",
                        "--select", "tiny/extracted_documents", "--partition", day], args.repeats, env)
        engine = _median([py, "-m", "lmforge.cli", "extract", str(warcs),
                          str(tmp / "direct" / "docs.parquet")], args.repeats, env)
    print()
    print(f"{'extract one day (' + str(args.pages) + ' pages)':34s} {'seconds':>8s} {'peak MiB':>9s}")
    print(f"{'lmforge extract (the engine alone)':34s} {engine[0]:8.2f} {engine[1]:9.0f}")
    print(f"{'dagster asset materialize':34s} {step[0]:8.2f} {step[1]:9.0f}")
    print(f"{'ratio':34s} {step[0] / engine[0]:8.2f}x {step[1] / engine[1]:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
