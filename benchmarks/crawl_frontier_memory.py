"""Crawl frontier memory: the on-disk frontier (``lmforge.crawl.frontier``) against the in-memory
one the crawler had before it (a ``set`` of seen URLs and an ``asyncio.Queue`` of them).

    python benchmarks/crawl_frontier_memory.py [--urls 1000000] [--hosts 1000]

Each structure runs in its own process: N synthetic URLs (``--hosts`` hosts, realistic paths) are
discovered, then taken out in batches of 64 as a crawl's workers would take them. Reported per
structure: the growth of the process's peak RSS (Linux's VmHWM, else ``getrusage``'s
``ru_maxrss``) over the same process after its imports, the Python heap's peak (``tracemalloc``; SQLite's own memory is not
in it), and the seconds. One JSON line per structure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def synthetic_urls(n: int, hosts: int):
    for i in range(n):
        yield (f"https://www{i % hosts}.example-site-{i % hosts}.org/articles/{i // hosts}/"
               f"section-{i % 97}/page-{i * 2654435761 % 2**32:08x}.html", 1 + i % 4)


def _maxrss_mb() -> float:
    """The process's peak RSS. ``ru_maxrss`` of a process started by a large one begins at its
    parent's peak (it counts from the fork), so Linux's VmHWM (this image only) comes first."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(structure: str, n: int, hosts: int) -> dict:
    import asyncio

    from lmforge.crawl.frontier import Frontier

    base = _maxrss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    taken = 0
    with tempfile.TemporaryDirectory() as tmp:
        if structure == "memory":  # the crawler's frontier before lmforge.crawl.frontier
            seen: set[str] = set()
            queue: asyncio.Queue = asyncio.Queue()
            for url, depth in synthetic_urls(n, hosts):
                if url not in seen:
                    seen.add(url)
                    queue.put_nowait((url, depth))
            while not queue.empty():
                queue.get_nowait()
                taken += 1
        else:
            frontier = Frontier(Path(tmp) / "frontier.sqlite")
            for url, depth in synthetic_urls(n, hosts):
                frontier.add(url, depth)
            frontier.flush()
            while batch := frontier.take(64, max_depth=10, per_host=4):
                taken += len(batch)
                for url, depth in batch:
                    frontier.mark_failed(url, depth)  # a final state, written in batches
            frontier.close()
            size = (Path(tmp) / "frontier.sqlite").stat().st_size
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    out = {"structure": structure, "urls": n, "hosts": hosts, "taken": taken,
           "peak_rss_growth_mb": round(_maxrss_mb() - base, 1),
           "python_heap_peak_mb": round(peak / 2**20, 1), "seconds": round(seconds, 1)}
    if structure == "sqlite":
        out["file_mb"] = round(size / 2**20, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--urls", type=int, default=1_000_000)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--structure", choices=["memory", "sqlite"], default=None,
                   help="run one structure in this process (default: each in its own)")
    args = p.parse_args()
    if args.structure:
        print(json.dumps(run_one(args.structure, args.urls, args.hosts)))
        return
    for structure in ("memory", "sqlite"):
        subprocess.run([sys.executable, __file__, "--urls", str(args.urls), "--hosts",
                        str(args.hosts), "--structure", structure], check=True)


if __name__ == "__main__":
    main()
