"""The crawl frontier on disk: per-host queues, the seen set, batched writes, resume after
``kill -9``, a crawl directory from before the frontier, and memory that does not grow with
the URLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.crawl import crawler
from lmforge.crawl.crawler import CrawlConfig, crawl
from lmforge.crawl.frontier import FRONTIER_FILE, Frontier
from test_crawler import read_warc

ROOT = Path(__file__).resolve().parents[2]


def test_per_host_queues_shallowest_first_and_seen_once(tmp_path):
    f = Frontier(tmp_path / FRONTIER_FILE, batch=3)
    for i in range(6):
        f.add(f"http://a.example/{i}", depth=2 if i < 3 else 1)
    f.add("http://b.example:8080/x", 0)
    f.add("http://a.example/0", 0)  # met again: still one row
    assert f.known("http://a.example/0") and not f.known("http://c.example/")
    got = f.take(4, max_depth=5, per_host=2)
    # The hosts in turn, at most two from one; each host's shallowest, then oldest, first.
    assert sorted(got) == sorted([("http://a.example/3", 1), ("http://a.example/4", 1),
                                  ("http://b.example:8080/x", 0)])
    # Taken URLs are not handed out twice, and depth beyond max_depth waits.
    assert f.take(10, max_depth=1, per_host=10) == [("http://a.example/5", 1)]
    assert f.take(10, max_depth=1, per_host=10) == []
    f.mark_stored("http://a.example/3", "w1.warc.gz", page=True)
    f.mark_stored("http://b.example:8080/x", "w2.warc.gz", page=False)
    f.mark_failed("http://a.example/4")
    assert f.stored_pages() == 1
    f.close()

    # A new crawl: w2 was lost (never renamed into place), the taken and failed are queued again.
    g = Frontier(tmp_path / FRONTIER_FILE)
    assert g.recover(["w1.warc.gz"]) == 2  # b's row (its WARC is gone) and the failed a/4
    assert g.stored_urls() == {"http://a.example/3"}
    assert sorted(u for u, _ in g.take(10, max_depth=9, per_host=10)) == [
        "http://a.example/0", "http://a.example/1", "http://a.example/2", "http://a.example/4",
        "http://a.example/5", "http://b.example:8080/x"]
    g.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FRONTIER_FILE]  # WAL folded back in


def _stored_responses(out: Path) -> list[str]:
    return [r[1] for r in read_warc(out) if r[0] == "response" and r[2] == "200"]


def test_a_killed_crawl_resumes_without_fetching_a_stored_page_again(pydoc_url, tmp_path):
    out = tmp_path / "crawl"
    args = ["--seed", pydoc_url, "--out", str(out), "--max-pages", "400",
            "--warc-max-bytes", str(1024 * 1024), "--concurrency", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.crawl.crawler", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # Killed once one WARC is complete and the next one holds pages: the worst moment.
        while time.monotonic() < deadline and proc.poll() is None:
            done = crawler.warc_files(out)
            open_ones = [p for p in out.glob(".crawl-*.tmp")] if out.is_dir() else []
            if done and open_ones and open_ones[0].stat().st_size > 100_000:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the crawl ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = _stored_responses(out)
    assert before and len(before) < 400
    assert (out / FRONTIER_FILE).is_file() and list(out.glob(".crawl-*.tmp"))  # the lost file

    stats = crawl(CrawlConfig(seeds=[pydoc_url], max_pages=len(before) + 30,
                              warc_max_bytes=1024 * 1024), out)
    assert stats.pages_already_stored == len(before) and stats.pages_fetched == 30
    after = _stored_responses(out)
    assert len(after) == len(set(after)) == len(before) + 30  # nothing stored twice
    assert not list(out.glob(".crawl-*.tmp"))  # the killed run's open WARC was swept
    # Run again with the same budget: nothing to do, nothing requested.
    again = crawl(CrawlConfig(seeds=[pydoc_url], max_pages=len(before) + 30), out)
    assert (again.pages_fetched, again.requests) == (0, 0)


def test_a_crawl_directory_from_before_the_frontier_resumes(pydoc_url, tmp_path):
    cfg = CrawlConfig(seeds=[pydoc_url], max_pages=15)
    crawl(cfg, tmp_path)
    first = set(_stored_responses(tmp_path))
    (tmp_path / FRONTIER_FILE).unlink()  # as the crawler wrote it before: WARCs only
    again = crawl(cfg, tmp_path)
    assert (again.pages_already_stored, again.pages_fetched, again.requests) == (15, 0, 0)
    more = crawl(cfg.model_copy(update={"max_pages": 20}), tmp_path)
    assert more.pages_fetched == 5
    urls = _stored_responses(tmp_path)
    assert len(urls) == len(set(urls)) == 20 and first < set(urls)


@pytest.mark.slow
def test_frontier_memory_does_not_grow_with_the_urls():
    """100,000 URLs: the in-memory frontier's peak RSS grows by tens of MB, the on-disk one's by
    its bounded caches (README: the figures for 1,000,000)."""
    rows = {}
    for structure in ("memory", "sqlite"):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crawl_frontier_memory.py"),
                               "--urls", "100000", "--structure", structure],
                              cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows[structure] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows["memory"]["taken"] == rows["sqlite"]["taken"] == 100_000
    assert rows["sqlite"]["python_heap_peak_mb"] < 10 < rows["memory"]["python_heap_peak_mb"]
    assert rows["sqlite"]["peak_rss_growth_mb"] < rows["memory"]["peak_rss_growth_mb"] / 2
