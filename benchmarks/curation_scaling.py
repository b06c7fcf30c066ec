"""Curation throughput per stage: today's single process against shard-parallel runs.

    .venv/bin/python benchmarks/curation_scaling.py [--pages 300] [--shards 4] [--copies 1]
        [--repeats 1] [--ray-address ADDR] [--no-ray] [--stages extract,filter,dedup,decontaminate]

The input is real: ``--pages`` pages of the local pydoc server, crawled once and written into
``--shards`` WARC files (every file the same pages under other URLs, ``--copies`` times over), so
a day has that many shards. For extraction, filtering, dedup and decontamination it runs, one
after the other, on the same input:

- ``single``: the engine function the way the stage called it before shards, one process, the
  day as one file (``extract(warcs, day.parquet)``, ``filter_documents(day.parquet, ...)``; for
  dedup, today's engine on one file and one process);
- ``local x1``: the shard path, one part per shard, in this process;
- ``local x2``: the same on a process pool of two workers (its start-up included);
- ``ray x2``: the same as tasks on a Ray cluster of two CPUs, started before the stage is timed
  (a cluster outlives the stages it runs; its start-up is printed on its own).

It prints documents per second (pages for extraction) and the ratio to ``single``, and checks
that every run kept and removed the same ids. The figures are for this machine's cores: on a
shared machine, run it when it is idle (the load average is printed).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lmforge.curate.parallel import ParallelConfig
from lmforge.io import read_parquet_rows, removed_files, removed_path_for


def make_warcs(pages: int, shards: int, copies: int, out: Path) -> int:
    """Crawl ``pages`` pydoc pages and write ``shards`` WARC files of them; returns responses."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from lmforge.crawl.crawler import CrawlConfig, crawl
    from lmforge.crawl.local_site import serve_python_docs

    crawled = out.parent / "crawl"
    with serve_python_docs() as url:
        crawl(CrawlConfig(seeds=[url], max_pages=pages), crawled)
    records = []
    for warc in sorted(crawled.glob("*.warc.gz")):
        with open(warc, "rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type == "response" and rec.http_headers is not None:
                    records.append((rec.rec_headers.get_header("WARC-Target-URI"),
                                    rec.http_headers.get_statuscode(),
                                    rec.http_headers.headers, rec.content_stream().read()))
    out.mkdir(parents=True)
    n = 0
    for shard in range(shards):
        with open(out / f"shard-{shard:03d}.warc.gz", "wb") as fh:
            w = WARCWriter(fh, gzip=True)
            for copy in range(copies):
                for uri, status, headers, body in records:
                    w.write_record(w.create_warc_record(
                        f"{uri}?shard={shard}&copy={copy}", "response", payload=io.BytesIO(body),
                        http_headers=StatusAndHeaders(f"{status} OK", headers,
                                                      protocol="HTTP/1.1"),
                        warc_headers_dict={"WARC-Date": "2026-01-02T03:04:05Z"}))
                    n += 1
    return n


def ids(path: Path) -> tuple[list[str], list[str]]:
    kept = sorted(r["id"] for r in read_parquet_rows(path, columns=["id"]))
    removed = sorted(r["id"] for f in removed_files(path)
                     for r in read_parquet_rows(f, columns=["id"]))
    return kept, removed


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best(fn, out: Path, repeats: int) -> float:
    """The fastest of ``repeats`` runs, each into a fresh output (a run again would skip the
    parts already written)."""
    times = []
    for _ in range(repeats):
        if out.is_dir():
            shutil.rmtree(out)
        times.append(timed(fn))
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=300, help="pydoc pages crawled")
    p.add_argument("--shards", type=int, default=4, help="WARC files (and parts) in the day")
    p.add_argument("--copies", type=int, default=1, help="times each page is in each WARC file")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start "
                   "a local one of two CPUs)")
    p.add_argument("--no-ray", action="store_true", help="leave out the Ray runs")
    p.add_argument("--repeats", type=int, default=1, help="runs of each; the fastest counts "
                   "(on a shared machine, other work slows single runs)")
    p.add_argument("--snapshot-pages", type=float, default=3.0e9,
                   help="pages of the Common Crawl snapshot to project for (CC-MAIN snapshots "
                   "hold 2.5-3.5 billion pages)")
    p.add_argument("--cores-per-machine", type=int, default=64,
                   help="cores of one curation machine, for the projection")
    p.add_argument("--stages", default="extract,filter,dedup,decontaminate",
                   type=lambda v: v.split(","), help="which stages, in chain order (each reads "
                   "the one before's output)")
    args = p.parse_args(argv)

    from lmforge.curate.decontaminate import (DecontamConfig, build_indexes, decontaminate,
                                              decontaminate_sharded)
    from lmforge.curate.dedup import DedupConfig, dedup_documents
    from lmforge.curate.extract import ExtractConfig, extract, extract_sharded
    from lmforge.curate.filter import filter_documents
    from lmforge.curate.filter_config import FilterConfig
    from lmforge.curate.stages import run_sharded

    modes = {"local x1": ParallelConfig(), "local x2": ParallelConfig(workers=2)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        responses = make_warcs(args.pages, args.shards, args.copies, tmp / "warcs")
        warcs = sorted((tmp / "warcs").glob("*.warc.gz"))
        print(f"input: {len(warcs)} WARC files, {responses} pages; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        if not args.no_ray:
            import ray

            t = timed(lambda: ray.init(address=args.ray_address, num_cpus=None if
                                       args.ray_address else 2, include_dashboard=False,
                                       logging_level="ERROR", log_to_driver=False))
            print(f"ray cluster {'reached' if args.ray_address else 'started'} in {t:.1f} s "
                  f"({ray.cluster_resources().get('CPU', 0):.0f} CPUs)", flush=True)
            modes["ray x2"] = ParallelConfig(backend="ray", workers=2)

        extract_cfg, filter_cfg = ExtractConfig(), FilterConfig()
        decon_cfg, dedup_cfg = DecontamConfig(), DedupConfig()
        # Decontamination's benchmark index is built by every run, as the stage does.
        build_indexes(decon_cfg)  # warm the benchmark readers' file cache once
        stages = {
            "extract": (
                lambda out: extract(warcs, out, extract_cfg),
                lambda out, par: extract_sharded(warcs, out, extract_cfg, par),
                responses),
            "filter": (
                lambda out: filter_documents(tmp / "extracted.parquet", out,
                                             removed_path_for(out), filter_cfg),
                lambda out, par: run_sharded("lmforge.curate.filter", "filter_documents",
                                             tmp / "extract-local x1", out, None, filter_cfg,
                                             par, name="filter", merge="merge_part_stats"),
                None),
            "dedup": (
                lambda out: dedup_documents(tmp / "filtered.parquet", out, removed_path_for(out),
                                            dedup_cfg),
                lambda out, par: dedup_documents(tmp / "filter-local x1", out, None, dedup_cfg,
                                                 parallel=par),
                None),
            "decontaminate": (
                lambda out: decontaminate(tmp / "deduplicated.parquet", out,
                                          removed_path_for(out), decon_cfg),
                lambda out, par: decontaminate_sharded(tmp / "dedup-local x1", out, None,
                                                       decon_cfg, par),
                None),
        }
        stages = {k: v for k, v in stages.items() if k in args.stages}
        print(f"\n{'stage':14s} {'run':10s} {'input':>7s} {'seconds':>8s} {'per s':>8s} "
              f"{'/ single':>8s}")
        prev = ""
        per_core: dict[str, tuple[int, float]] = {}  # stage -> (input, seconds on one worker)
        for stage, (single, sharded, n) in stages.items():
            if n is None:
                n = sum(1 for _ in read_parquet_rows(tmp / f"{prev}-local x1", columns=["id"]))
            single_out = tmp / {"extract": "extracted.parquet", "filter": "filtered.parquet",
                                "dedup": "deduplicated.parquet",
                                "decontaminate": "decontaminated.parquet"}[stage]
            base = best(lambda: single(single_out), single_out, args.repeats)
            print(f"{stage:14s} {'single':10s} {n:7d} {base:8.2f} {n / base:8.1f} {1:8.2f}",
                  flush=True)
            expected = ids(single_out)
            for mode, par in modes.items():
                out = tmp / f"{stage}-{mode}"
                t = best(lambda: sharded(out, par), out, args.repeats)
                same = ids(out) == expected
                print(f"{stage:14s} {mode:10s} {n:7d} {t:8.2f} {n / t:8.1f} {base / t:8.2f}"
                      + ("" if same else "  DIFFERENT IDS"), flush=True)
                if not same:
                    return 1
                if mode == "local x1":
                    per_core[stage] = (n, t)
            prev = stage
        project(per_core, responses, args.snapshot_pages, args.cores_per_machine)
        print(f"\n(per s: pages for extract, documents for the others; load average at the "
              f"end {os.getloadavg()[0]:.2f})")
    return 0


def project(per_core: dict[str, tuple[int, float]], pages: int, snapshot_pages: float,
            cores_per_machine: int) -> None:
    """Cores and machines to curate ``snapshot_pages`` in a day, from this run's one-worker
    figures: a stage's shards share nothing, so a day's work divides over the cores. Two bounds:
    every stage sees every page (no page removed before the last stage), and this input's own
    keep rates (pydoc pages, each crawled once: not the web's rates)."""
    if not per_core:
        return
    upper = sum(t / n for n, t in per_core.values())          # core-seconds per page, every stage
    measured = sum(t for _, t in per_core.values()) / pages   # core-seconds per crawled page
    rate = snapshot_pages / 86_400
    print(f"\nprojection: {snapshot_pages:.3g} pages a day = {rate:,.0f} pages/s; one core, "
          f"all stages: {1 / upper:,.1f} pages/s (every stage sees every page), "
          f"{1 / measured:,.1f} pages/s (this input's keep rates)")
    for label, cost in (("every stage sees every page", upper), ("this input's keep rates", measured)):
        cores = rate * cost
        print(f"  {label:30s} {cores:9,.0f} cores = {cores / cores_per_machine:7,.1f} machines "
              f"of {cores_per_machine} cores")


if __name__ == "__main__":
    sys.exit(main())
