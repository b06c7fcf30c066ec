"""Dedup at scale: the index's state bytes per kept document, their projection to a billion
documents, and the sharded dedup's throughput against the single-process dedup it replaced.

    python benchmarks/dedup_state.py [--docs 20000 100000] [--days 5] [--speed-docs 20000]

Documents are real text: two GSM8K train problems (question and answer) joined, drawn at random,
so that there are as many distinct documents as asked for; each day, 10% of the documents are
edited copies (0-8 word edits) of documents of earlier days or of the same day.

State: the documents are deduplicated day by day into one index (one segment per day, see
``lmforge.curate.dedup_index``), and the bytes on disk are counted per file kind and per kept
document, for ``verify=exact`` (the default: shingle sets kept to verify candidates exactly) and
``verify=estimate`` (signatures only). The projection multiplies the measured bytes per document
by 1e9 and divides the tables a hash-range task reads by the number of ranges.

Speed: one day of ``--speed-docs`` documents, deduplicated by the single-process engine of
``--old-ref`` (the last commit before the sharded engine, run from a ``git archive`` of it) and
by the sharded engine with 1 and 2 local workers and 2 Ray workers; each in its own process,
timed around the call (imports and a warm-up run excluded; Ray's start shown apart), and all
checked to give the same kept and removed ids.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup_speed import edit, load_gsm8k  # noqa: E402  (the same documents as that benchmark)
from lmforge.io import write_parquet  # noqa: E402

OLD_REF = "2b09a74"  # the last commit with the single-process dedup (one pickled-then-Parquet index)


def make_days(gsm: list[str], total: int, days: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out: list[list[str]] = []
    seen: list[str] = []
    per_day = total // days
    for _ in range(days):
        day: list[str] = []
        for _ in range(per_day):
            if seen and rng.random() < 0.1:
                day.append(edit(rng.choice(seen), rng.randint(0, 8), rng))
            else:
                day.append(gsm[rng.randrange(len(gsm))] + "\n" + gsm[rng.randrange(len(gsm))])
                seen.append(day[-1])
        out.append(day)
    return out


def write_day(path: Path, name: str, texts: list[str]) -> Path:
    write_parquet(path, [{"id": f"{name}-{i}", "url": f"gsm8k://{name}/{i}", "text": t}
                         for i, t in enumerate(texts)], batch_rows=5_000)
    return path


def kind_of(name: str) -> str:
    return {"signatures.npy": "signatures", "bands.npy": "band buckets",
            "exact.npy": "exact digests", "ids.parquet": "ids",
            "shingles.npy": "shingle sets", "shingle_offsets.npy": "shingle sets",
            "manifest.json": "manifests"}.get(name, "other")


def state(gsm: list[str], n: int, days: int, verify: str, tmp: Path) -> dict:
    from lmforge.curate.dedup import DedupConfig, dedup_documents

    cfg = DedupConfig(verify=verify, index_path=str(tmp / "index"))
    kept, seconds = 0, 0.0
    for d, texts in enumerate(make_days(gsm, n, days, seed=n)):
        name = f"2026-03-{d + 1:02d}"
        src = write_day(tmp / f"{name}.in.parquet", name, texts)
        s = dedup_documents(src, tmp / f"{name}.parquet", tmp / f"{name}.removed.parquet", cfg,
                            segment=name)
        kept += s.kept_documents
        seconds += s.seconds
        bands = s.lsh_bands
    by_kind: dict[str, int] = {}
    for p in (tmp / "index").rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            by_kind[kind_of(p.name)] = by_kind.get(kind_of(p.name), 0) + p.stat().st_size
    return {"docs": n, "kept": kept, "verify": verify, "bands": bands, "by_kind": by_kind,
            "total": sum(by_kind.values()), "seconds": seconds}


def print_state(rows: list[dict], partitions: int) -> None:
    print("\n## Index state per kept document (bytes on disk, all segments)\n")
    kinds = ["signatures", "band buckets", "exact digests", "ids", "shingle sets", "manifests"]
    print("| documents | kept | verify | " + " | ".join(kinds) + " | total B/doc | total MB |")
    print("|" + " --- |" * (len(kinds) + 5))
    for r in rows:
        per = [r["by_kind"].get(k, 0) / r["kept"] for k in kinds]
        print(f"| {r['docs']:,} | {r['kept']:,} | {r['verify']} | "
              + " | ".join(f"{x:.1f}" for x in per)
              + f" | {r['total'] / r['kept']:.1f} | {r['total'] / 1e6:.1f} |")
    print(f"\n## Projection to 1e9 kept documents (from the largest run; {partitions} hash ranges)\n")
    print("| verify | index on disk | band tables | exact tables | one hash-range task reads "
          "(bands + digests) | signatures (read only for candidate pairs) |")
    print("| --- | --- | --- | --- | --- | --- |")
    largest = max(r["docs"] for r in rows)
    for r in rows:
        if r["docs"] != largest:
            continue
        per = {k: v / r["kept"] for k, v in r["by_kind"].items()}
        n = 1e9
        bands, exact = per.get("band buckets", 0) * n, per.get("exact digests", 0) * n
        print(f"| {r['verify']} | {r['total'] / r['kept'] * n / 1e12:.2f} TB | "
              f"{bands / 1e9:.0f} GB | {exact / 1e9:.0f} GB | "
              f"{(bands + exact) / partitions / 1e6:.0f} MB | "
              f"{per.get('signatures', 0) * n / 1e9:.0f} GB |")


# ---------------------------------------------------------------------------------------------
# Speed: each engine in its own process


_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from lmforge.curate.dedup import DedupConfig, dedup_documents
src, out, warm, mode = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
kwargs = {}
ray_start = 0.0
if mode != "old":
    from lmforge.curate.parallel import ParallelConfig
    backend, workers = mode.split(":")
    kwargs["parallel"] = ParallelConfig(backend=backend, workers=int(workers))
    if backend == "ray":
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=int(workers), include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
        ray_start = time.perf_counter() - t
dedup_documents(warm, out + ".warm.parquet", out + ".warm.removed.parquet", DedupConfig(), **kwargs)
t = time.perf_counter()
s = dedup_documents(src, out, out + ".removed", DedupConfig(), **kwargs)
print(json.dumps({"seconds": time.perf_counter() - t, "kept": s.kept_documents,
                  "ray_start": ray_start}))
"""


def timed(code_root: Path, src: Path, warm: Path, out: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _RUN, str(code_root), str(src), str(out),
                           str(warm), mode], capture_output=True, text=True, env=env,
                          cwd=code_root, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    result["kept_ids"] = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    removed = pq.read_table(str(out) + ".removed", columns=["id", "reason", "duplicate_of"])
    result["removed"] = sorted(map(tuple, zip(*[removed.column(c).to_pylist()
                                               for c in ("id", "reason", "duplicate_of")])))
    return result


def speed(gsm: list[str], n: int, old_ref: str, tmp: Path, with_ray: bool) -> None:
    old_root = tmp / "old"
    old_root.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", old_ref, "lmforge"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_root)], input=archive, check=True)
    day = make_days(gsm, n, 1, seed=1)[0]
    src = write_day(tmp / "speed.parquet", "s", day)
    warm = write_day(tmp / "warm.parquet", "w", day[:200])
    modes = [("old", old_root, f"single process ({old_ref})"),
             ("local:1", REPO, "sharded, local, 1 worker"),
             ("local:2", REPO, "sharded, local, 2 workers")]
    if with_ray:
        modes.append(("ray:2", REPO, "sharded, Ray, 2 workers"))
    results = {}
    for mode, root, label in modes:
        results[mode] = timed(root, src, warm, tmp / f"{mode.replace(':', '_')}.parquet", mode)
        r = results[mode]
        extra = f" (+ {r['ray_start']:.1f} s to start Ray)" if r["ray_start"] else ""
        print(f"| {label} | {n / r['seconds']:,.0f} docs/s | {r['seconds']:.2f} s{extra} | "
              f"{len(r['kept_ids']):,} kept |", flush=True)
    same = all((r["kept_ids"], r["removed"]) == (results["old"]["kept_ids"],
                                                 results["old"]["removed"])
               for r in results.values())
    print(f"\nsame kept and removed ids (and duplicate_of) as the single process: "
          f"{'yes' if same else 'NO'}")
    base = results["old"]["seconds"]
    for mode in results:
        if mode != "old":
            print(f"speed-up over the single process, {mode}: {base / results[mode]['seconds']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[20_000, 100_000],
                    help="documents in the state measurements")
    ap.add_argument("--days", type=int, default=5, help="days the documents are spread over")
    ap.add_argument("--verify", nargs="+", default=["exact", "estimate"])
    ap.add_argument("--partitions", type=int, default=1024,
                    help="hash ranges assumed in the projection")
    ap.add_argument("--speed-docs", type=int, default=20_000, help="0: skip the speed part")
    ap.add_argument("--old-ref", default=OLD_REF, help="git commit of the single-process dedup")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray measurement")
    ap.add_argument("--no-state", action="store_true", help="only the speed measurement")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    gsm = load_gsm8k()
    print(f"# dedup state and speed (python benchmarks/dedup_state.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)})")
    rows = []
    for n in [] if args.no_state else args.docs:
        for verify in args.verify:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                rows.append(state(gsm, n, args.days, verify, Path(tmp)))
                print(f"state: {n:,} documents over {args.days} days, verify={verify}: "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if rows:
        print_state(rows, args.partitions)
    if args.speed_docs:
        print(f"\n## Throughput, one day of {args.speed_docs:,} documents "
              f"({os.cpu_count()} CPUs)\n")
        print("| engine | throughput | time | kept |")
        print("| --- | --- | --- | --- |")
        with tempfile.TemporaryDirectory() as tmp:
            speed(gsm, args.speed_docs, args.old_ref, Path(tmp), not args.no_ray)
    return 0


if __name__ == "__main__":
    sys.exit(main())
