"""Dedup speed and accuracy: lmforge dedup against datasketch used the obvious way.

    python benchmarks/dedup_speed.py [--bases 3000] [--variants 1000] [--threshold 0.8]
        [--backend local|ray] [--workers N]

Documents are real text: pairs of GSM8K train questions with their answers (from the local
benchmark mirror, `lmforge.paths.benchmarks_dir()`). After all the base documents come edited
copies of some of them, each with a random number of word edits (0 = verbatim copy), so that their
Jaccard similarity to the base spreads across the threshold. Ground truth is exact Jaccard over the
Python sets of 5-word shingles: a document is a duplicate when an earlier document has
Jaccard >= threshold with it.

The naive baseline is what the datasketch README shows: per document a `MinHash`, one `update`
per shingle (SHA-1 by default), then `MinHashLSH.query` and, if nothing is found, `insert`.
Both run here, single process, on the same documents; lmforge's time includes reading and writing
Parquet, the baseline's does not.

Then the persistent index (``--index-docs``, 0 to skip): a run commits that many documents to an
index directory as one segment, and a batch of 1,000 documents is deduplicated against it. The
earlier segment is read in place (only the hash ranges of its band and digest tables that each
task needs, memory-mapped), and the batch writes only its own segment. Scaling (state bytes per
document, workers, Ray): ``benchmarks/dedup_state.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # single core for both sides
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from datasketch import MinHash, MinHashLSH  # noqa: E402

from lmforge.curate.dedup import DedupConfig, dedup_documents  # noqa: E402
from lmforge.curate.parallel import ParallelConfig  # noqa: E402
from lmforge.curate.text import normalize  # noqa: E402
from lmforge.io import read_parquet_rows, write_parquet  # noqa: E402

FILLER = ("apple", "river", "seven", "quickly", "blue", "indeed", "market", "then", "also", "paper")


def load_gsm8k() -> list[str]:
    from lmforge.benchmarks import DataUnavailable, get
    from lmforge.benchmarks.gsm8k.reader import strip_calculator

    try:
        rows = get("gsm8k").items("train")
    except DataUnavailable as e:
        sys.exit(f"no GSM8K mirror ({e}): set LMFORGE_BENCHMARKS_DIR to the directory holding gsm8k/")
    return [r["question"] + "\n" + strip_calculator(r["answer"]) for r in rows]


def edit(text: str, n: int, rng: random.Random) -> str:
    words = text.split()
    for _ in range(n):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[i] = rng.choice(FILLER)
        elif op < 0.7 and len(words) > 10:
            del words[i]
        else:
            words.insert(i, rng.choice(FILLER))
    return " ".join(words)


def shingles(text: str, k: int) -> set[str]:
    w = normalize(text).split()
    return {" ".join(w[i:i + k]) for i in range(max(1, len(w) - k + 1))} if w else set()


def naive_dedup(texts: list[str], threshold: float, num_perm: int, k: int) -> set[int]:
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    removed = set()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        for s in shingles(text, k):
            m.update(s.encode("utf-8"))
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(i, m)
    return removed


def scores(pred: set[int], truth: set[int]) -> tuple[float, float, float]:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, default=3000, help="distinct base documents")
    ap.add_argument("--variants", type=int, default=1000, help="edited copies appended after them")
    ap.add_argument("--max-edits", type=int, default=20, help="edits per copy: uniform in 0..this")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index-docs", type=int, default=10_000,
                    help="documents in the persistent-index measurement (0: skip it)")
    ap.add_argument("--backend", choices=("local", "ray"), default="local")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    parallel = ParallelConfig(backend=args.backend, workers=args.workers)

    rng = random.Random(args.seed)
    gsm = load_gsm8k()
    if len(gsm) < 2 * args.bases:
        sys.exit(f"need {2 * args.bases} GSM8K rows, have {len(gsm)}")
    bases = [gsm[2 * i] + "\n" + gsm[2 * i + 1] for i in range(args.bases)]
    sources = rng.sample(range(args.bases), args.variants)
    variants = [edit(bases[s], rng.randint(0, args.max_edits), rng) for s in sources]
    texts = bases + variants

    # Ground truth: exact Jaccard of each copy with its base (bases are distinct GSM8K problems;
    # we check that no two bases come near the threshold via their own shingle overlap below).
    k, t = args.shingle, args.threshold
    base_sets = [shingles(b, k) for b in bases]
    truth, sims = set(), []
    for j, (s, v) in enumerate(zip(sources, variants)):
        vs = shingles(v, k)
        sim = len(vs & base_sets[s]) / len(vs | base_sets[s])
        sims.append(sim)
        if sim >= t:
            truth.add(args.bases + j)
    near_threshold = sum(1 for s in sims if abs(s - t) < 0.05)
    print(f"{len(texts)} documents ({args.bases} distinct GSM8K pairs, {args.variants} edited "
          f"copies); {len(truth)} duplicates at Jaccard >= {t}; {near_threshold} copies within "
          f"0.05 of the threshold")

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.parquet"
        write_parquet(src, [{"id": str(i), "url": f"gsm8k://{i}", "text": x}
                            for i, x in enumerate(texts)])
        cfg = DedupConfig(threshold=t, num_perm=args.num_perm, shingle=k)
        t0 = time.perf_counter()
        stats = dedup_documents(src, Path(tmp) / "out.parquet", Path(tmp) / "removed.parquet", cfg,
                                parallel=parallel)
        lm_s = time.perf_counter() - t0
        lm_pred = {int(r["id"]) for r in read_parquet_rows(Path(tmp) / "removed.parquet", ["id"])}

    t0 = time.perf_counter()
    naive_pred = naive_dedup(texts, t, args.num_perm, k)
    naive_s = time.perf_counter() - t0

    # A removal of a base document (any index < bases) is a false positive in both.
    lm = scores(lm_pred, truth)
    nv = scores(naive_pred, truth)
    n = len(texts)
    print(f"lmforge dedup  : {n / lm_s:9.1f} docs/s  ({lm_s:.2f} s, Parquet I/O included, "
          f"{parallel.backend} x{parallel.workers})  "
          f"P={lm[0]:.4f} R={lm[1]:.4f} F1={lm[2]:.4f}  "
          f"(exact {stats.exact_removed}, near {stats.near_removed}, LSH b={stats.lsh_bands} "
          f"r={stats.lsh_rows})")
    print(f"datasketch naive: {n / naive_s:9.1f} docs/s  ({naive_s:.2f} s)  "
          f"P={nv[0]:.4f} R={nv[1]:.4f} F1={nv[2]:.4f}")
    print(f"speed-up: {naive_s / lm_s:.1f}x")
    if args.index_docs:
        index_speed(gsm, args.index_docs, cfg, rng, parallel)
    return 0


def index_speed(gsm: list[str], n: int, cfg: DedupConfig, rng: random.Random,
                parallel: ParallelConfig) -> None:
    """Commit n documents to an index, then time a 1,000-document batch against it."""
    texts = [gsm[rng.randrange(len(gsm))] + "\n" + gsm[rng.randrange(len(gsm))] for _ in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, docs in (("first", texts), ("next", texts[:1000])):
            write_parquet(tmp / f"{name}.parquet", [{"id": f"{name}-{i}", "url": "", "text": x}
                                                    for i, x in enumerate(docs)])
        cfg = cfg.model_copy(update={"index_path": str(tmp / "index")})
        t0 = time.perf_counter()
        first = dedup_documents(tmp / "first.parquet", tmp / "first.out.parquet",
                                tmp / "first.removed.parquet", cfg, parallel=parallel)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        nxt = dedup_documents(tmp / "next.parquet", tmp / "next.out.parquet",
                              tmp / "next.removed.parquet", cfg, parallel=parallel)
        next_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (tmp / "index").rglob("*") if p.is_file())
    print(f"index: {n} documents committed in {first_s:.2f} s ({first.kept_documents} kept); "
          f"a 1000-document batch against them: {next_s:.2f} s, load and commit included "
          f"({nxt.kept_documents} kept); index {size / 1e6:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
