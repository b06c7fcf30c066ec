"""Remove duplicate documents: exact duplicates (same normalized text), then near duplicates with
MinHash LSH (datasketch) over word shingles.

    lmforge dedup filtered.parquet deduped.parquet --threshold 0.8 --index minhash.index

Keep-first: documents are visited in input order; a document is removed when an earlier kept
document (in this batch, or in any batch before it when a persistent index is given) has the same
normalized text (``exact_duplicate``) or an estimated Jaccard similarity of word shingles of at
least ``threshold`` (``near_duplicate``). The removed file names the kept document in
``duplicate_of``.

The work is cut by concern:

- this module: the config, the run (decide each batch, write kept and removed) and the CLI;
- :mod:`lmforge.curate.minhash`: MinHash signatures of many documents at once with numpy,
  bit-for-bit datasketch's (so datasketch's ``MinHashLSH`` indexes them);
- :mod:`lmforge.curate.dedup_lsh`: the kept documents in memory (exact-text digests, the LSH,
  signatures, shingle sets), with the LSH in memory or in Redis (``storage_config``);
- :mod:`lmforge.curate.dedup_index`: the persistent index (``--index DIR``), data only, and the
  transaction that commits a run's kept documents to it together with the run's outputs (a run
  killed at any point and retried gives what an uninterrupted run gives).

numpy, pyarrow and datasketch (which pulls in scipy) are imported by the functions that use them,
so importing this module for :class:`DedupConfig` (the CLI's help, the Dagster definitions) is
cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, Field

from lmforge.config import add_config_arguments, config_from_args
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import pyarrow as pa

    from lmforge.curate.dedup_index import Commit
    from lmforge.curate.dedup_lsh import DedupIndex


class DedupConfig(BaseModel):
    """How similar is too similar. Defaults are the `tiny` preset."""

    threshold: float = Field(
        0.8, description="Jaccard similarity of word-shingle sets at which documents are "
        "duplicates, in (0, 1]")
    num_perm: int = Field(
        128, description="MinHash permutations: more give better similarity estimates, slower")
    shingle: int = Field(5, description="words per shingle")
    seed: int = Field(
        1, description="MinHash permutation seed; an index only matches signatures of the same "
        "seed")
    lsh_params: tuple[int, int] | None = Field(
        None, description="LSH banding (bands, rows); none lets datasketch choose the optimum "
        "for threshold and lsh_weights")
    lsh_weights: tuple[float, float] = Field(
        (0.05, 0.95), description="(false positive, false negative) weights for datasketch's "
        "choice of banding. Candidates are verified, so a false negative (never seen) costs more "
        "than a false positive (one cheap check): the default favours recall")
    verify: Literal["exact", "estimate", "none"] = Field(
        "exact", description="how an LSH candidate is confirmed: 'exact' computes the Jaccard "
        "similarity of the two shingle sets (precise; keeps the 32-bit shingle hashes of every "
        "kept document in memory and in the index, about 4 bytes per word), 'estimate' uses the "
        "MinHash estimate (num_perm * 4 bytes per document, but a ~0.035 standard error near the "
        "threshold), 'none' takes every candidate (datasketch's plain LSH answer)")
    exact: bool = Field(True, description="remove exact duplicates of normalized text first")
    index_path: str | None = Field(
        None, description="persistent index directory: loaded if it exists, and this run's kept "
        "documents are committed to it together with the output, so the next batch is "
        "deduplicated against everything kept before; a retry of a committed run gives the same "
        "output again. One writer at a time (a lock refuses others)")
    storage_config: dict[str, Any] | None = Field(
        None, description="datasketch storage for the LSH, passed through: {\"type\": \"dict\"} "
        "(in memory, rebuilt from the index's signatures) or {\"type\": \"redis\", \"basename\": "
        "\"lmforge\", \"redis\": {\"host\": ..., \"port\": ...}}. Only the LSH buckets live in "
        "Redis: kept ids, exact-text digests and signatures stay in index_path, so Redis needs "
        "index_path and a fixed basename, and runs sharing a basename must share that index too")
    sample_clusters: int = Field(5, description="duplicate pairs to show in the metadata")
    batch_rows: int = Field(
        2_000, description="documents decided and written at a time (memory vs. progress "
        "updates)")


@dataclass
class DedupStats:
    input_documents: int = 0
    kept_documents: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    index_documents_before: int = 0  # kept documents already in the persistent index
    index_documents_after: int = 0
    # This input and output were committed to the index before: the output was derived again
    # from the index as it was before that run, and nothing was added.
    replayed: bool = False
    samples: list[dict[str, Any]] = field(default_factory=list)
    lsh_bands: int = 0
    lsh_rows: int = 0
    seconds: float = 0.0

    def to_metadata(self) -> dict[str, Any]:
        n = self.input_documents
        return {
            "input_documents": n,
            "kept_documents": self.kept_documents,
            "exact_duplicates_removed": self.exact_removed,
            "near_duplicates_removed": self.near_removed,
            "duplicate_rate": round((self.exact_removed + self.near_removed) / n, 4) if n else 0.0,
            "index_documents_before": self.index_documents_before,
            "index_documents_after": self.index_documents_after,
            "index_replayed_run": self.replayed,
            "lsh_bands_rows": [self.lsh_bands, self.lsh_rows],
            "sample_clusters": self.samples,
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(n / self.seconds, 1) if self.seconds else 0.0,
        }


def _digest(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def _process_batch(rows: list[dict], cfg: DedupConfig, index: DedupIndex, perms,
                   stats: DedupStats, pairs: list[tuple[str, str, str, float]]
                   ) -> tuple[list[dict], list[dict]]:
    """Decide a batch in input order; returns its (kept, removed) rows."""
    import numpy as np

    from lmforge.curate.minhash import signatures
    from lmforge.curate.text import normalize, shingle_hashes

    kept, removed = [], []
    texts = [normalize(r["text"] or "") for r in rows]
    # Empty normalized text has no shingles; such documents are only compared exactly.
    hashes = [shingle_hashes(t, cfg.shingle) for t in texts]
    sigs = signatures(hashes, perms)
    for row, text, sig, h in zip(rows, texts, sigs, hashes):
        digest = _digest(text if text else (row["text"] or "").strip())
        if cfg.exact and digest in index.exact:
            kept_id = index.exact[digest]
            stats.exact_removed += 1
            removed.append({**row, "reason": "exact_duplicate", "duplicate_of": kept_id})
            pairs.append(("exact_duplicate", kept_id, row["id"], 1.0))
            continue
        has_shingles = bool(text)
        unique = np.unique(h) if has_shingles and cfg.verify == "exact" else None
        if has_shingles and len(index):
            best, best_sim = None, -1.0
            for key in index.candidates(sig):
                sim = index.similarity(key, sig, unique)
                if sim > best_sim or (sim == best_sim and key < best):
                    best, best_sim = key, sim
            if best is not None and (cfg.verify == "none" or best_sim >= cfg.threshold):
                kept_id = index.ids[best]
                stats.near_removed += 1
                removed.append({**row, "reason": "near_duplicate", "duplicate_of": kept_id})
                pairs.append(("near_duplicate", kept_id, row["id"], best_sim))
                continue
        index.add(row["id"], digest if cfg.exact else None, sig if has_shingles else None, unique)
        kept.append(row)
        stats.kept_documents += 1
    return kept, removed


def _sample_clusters(in_path, pairs: list[tuple[str, str, str, float]], n: int) -> list[dict]:
    """A few (kept, removed) pairs with text snippets, near duplicates first: the interesting ones."""
    near = [p for p in pairs if p[0] == "near_duplicate"]
    exact = [p for p in pairs if p[0] == "exact_duplicate"]
    chosen = (near[:n] + exact[:n])[:n]
    if not chosen:
        return []
    want = {i for _, kept, removed, _ in chosen for i in (kept, removed)}
    snippets: dict[str, str] = {}
    for row in _read_rows(in_path, columns=["id", "text"]):
        if row["id"] in want and row["id"] not in snippets:
            snippets[row["id"]] = " ".join((row["text"] or "").split())[:160]
    return [{"reason": reason, "similarity": round(sim, 3),
             "kept_id": kept, "kept_text": snippets.get(kept, "(kept in an earlier batch)"),
             "removed_id": removed, "removed_text": snippets.get(removed, "")}
            for reason, kept, removed, sim in chosen]


def _read_rows(in_path, columns: list[str] | None = None) -> Iterator[dict]:
    import pyarrow as pa

    from lmforge.io import read_parquet_rows

    # A read error is the input's, never the output's (the caller writes inside atomic_path,
    # which would report an OSError as a problem with the destination).
    try:
        yield from read_parquet_rows(in_path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise LmforgeError(f"cannot read {in_path}: {e}") from None


def _close_quietly(writer) -> None:
    # On the failure path only: the first error is the one to report, not "closed file".
    if writer.is_open:
        with contextlib.suppress(Exception):
            writer.close()


def _run(in_path, out_path: Path, removed_path: Path, schema: pa.Schema,
         removed_schema: pa.Schema, cfg: DedupConfig, index: DedupIndex,
         commit: Commit | None, stats: DedupStats) -> list[tuple[str, str, str, float]]:
    """Decide every document and write kept and removed; with ``commit``, the index's segment
    and manifest are renamed after them (step 3 of the transaction in ``dedup_index``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.curate.dedup_index import hook, writing
    from lmforge.curate.minhash import permutations
    from lmforge.io import atomic_path

    perms = permutations(cfg.num_perm, cfg.seed)
    pairs: list[tuple[str, str, str, float]] = []
    n_ids, n_exact = len(index.ids), len(index.exact)
    with contextlib.ExitStack() as stack:
        # Entered in reverse commit order: an ExitStack unwinds last-in, first-out.
        if commit:
            commit.begin(stack)
        removed_tmp = stack.enter_context(atomic_path(removed_path))
        kept_tmp = stack.enter_context(atomic_path(out_path))
        with writing(out_path):
            kept_w = pq.ParquetWriter(kept_tmp, schema)
        stack.callback(_close_quietly, kept_w)
        with writing(removed_path):
            removed_w = pq.ParquetWriter(removed_tmp, removed_schema)
        stack.callback(_close_quietly, removed_w)

        def flush(batch: list[dict]) -> None:
            kept, removed = _process_batch(batch, cfg, index, perms, stats, pairs)
            with writing(out_path):
                kept_w.write_table(pa.Table.from_pylist(kept, schema=schema))
            with writing(removed_path):
                removed_w.write_table(pa.Table.from_pylist(removed, schema=removed_schema))
            print(f"dedup: {stats.input_documents} documents, {stats.kept_documents} kept",
                  file=sys.stderr)

        batch: list[dict] = []
        for row in _read_rows(in_path):
            stats.input_documents += 1
            batch.append(row)
            if len(batch) >= cfg.batch_rows:
                flush(batch)
                batch = []
                hook("batch")
        if batch:
            flush(batch)
        with writing(out_path):
            kept_w.close()
        with writing(removed_path):
            removed_w.close()
        if commit:
            commit.prepare(index.segment_since(n_ids, n_exact, cfg.verify == "exact"))
        hook("prepared")
    return pairs


def _check_config(cfg: DedupConfig) -> None:
    if not 0.0 < cfg.threshold <= 1.0:
        raise LmforgeError(f"threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.shingle < 1 or cfg.num_perm < 2:
        raise LmforgeError("shingle must be >= 1 and num_perm >= 2")
    if cfg.batch_rows < 1:
        raise LmforgeError(f"batch_rows must be at least 1, got {cfg.batch_rows}")
    storage = cfg.storage_config
    if storage is not None and storage.get("type", "dict") != "dict":
        # The LSH keys are positions in the index's id list: Redis buckets without the matching
        # index directory (or a directory without its buckets) would answer with someone else's
        # keys.
        if not cfg.index_path or "basename" not in storage:
            raise LmforgeError(f"storage_config of type {storage['type']!r} holds only the LSH "
                               "buckets: set index_path (kept ids and signatures live there) "
                               "and a fixed 'basename' in storage_config")


def dedup_documents(in_path, out_path, removed_path, cfg: DedupConfig | None = None) -> DedupStats:
    """Write the first of every group of duplicates to ``out_path``, the others to
    ``removed_path`` with ``reason`` and ``duplicate_of``. With ``cfg.index_path``, documents
    kept by earlier runs count as kept, and this run's kept documents are committed to the index
    together with the outputs (see :mod:`lmforge.curate.dedup_index`)."""
    import pyarrow as pa

    from lmforge.curate.dedup_index import open_run, refuse_non_index
    from lmforge.curate.dedup_lsh import DedupIndex
    from lmforge.curate.text import extend_schema, input_schema
    from lmforge.io import check_output

    cfg = cfg or DedupConfig()
    _check_config(cfg)
    t0 = time.perf_counter()
    out_path, removed_path = Path(out_path), Path(removed_path)
    if out_path.resolve() == removed_path.resolve():
        raise LmforgeError(f"kept and removed outputs are the same file: {out_path}")
    index_dir = Path(cfg.index_path) if cfg.index_path else None
    if index_dir is not None:
        refuse_non_index(index_dir)
    try:
        schema = input_schema(in_path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pa.ArrowException) as e:
        raise LmforgeError(f"cannot read {in_path}: {e}") from None
    if not pa.types.is_string(schema.field("id").type) and not pa.types.is_large_string(
            schema.field("id").type):
        raise LmforgeError(f"{in_path}: column id must be a string, not {schema.field('id').type}")
    removed_schema = extend_schema(schema, [("reason", pa.string()), ("duplicate_of", pa.string())])
    check_output(out_path)
    check_output(removed_path)

    if index_dir is None:
        index = DedupIndex(cfg)
        stats = DedupStats(lsh_bands=index.lsh.b, lsh_rows=index.lsh.r)
        pairs = _run(in_path, out_path, removed_path, schema, removed_schema, cfg, index, None,
                     stats)
    else:
        with open_run(index_dir, cfg, in_path, out_path) as run:
            index = run.index
            stats = DedupStats(index_documents_before=len(index), replayed=run.replayed,
                               lsh_bands=index.lsh.b, lsh_rows=index.lsh.r)
            pairs = _run(in_path, out_path, removed_path, schema, removed_schema, cfg, index,
                         run.commit, stats)
    stats.index_documents_after = len(index)
    stats.samples = _sample_clusters(in_path, pairs, cfg.sample_clusters)
    stats.seconds = time.perf_counter() - t0
    return stats


def start_index_from(snapshot, index) -> None:
    """Make ``index`` a copy of the committed state of the dedup index ``snapshot`` (or remove
    it when ``snapshot`` is None): how the graph starts each day's index where the day before
    ended. See :func:`lmforge.curate.dedup_index.start_index_from`."""
    from lmforge.curate import dedup_index

    dedup_index.start_index_from(snapshot, index)


def main(argv: list[str] | None = None) -> int:
    from lmforge.io import removed_path_for

    p = argparse.ArgumentParser(
        prog="lmforge dedup",
        description="Exact (normalized text) and near-duplicate (MinHash LSH) removal over Parquet "
                    "documents, keeping the first of each group in input order.")
    p.add_argument("input", help="documents Parquet file or directory (columns id, url, text)")
    p.add_argument("output", help="kept documents Parquet file")
    p.add_argument("--removed", help="removed documents Parquet with reason and duplicate_of "
                                     "(default: <OUT stem>.removed.parquet)")
    add_config_arguments(p, DedupConfig)
    # Earlier name of --index-path, kept for scripts and the README that use it.
    p.add_argument("--index", dest="index_path", default=None, metavar="DIR",
                   help="same as --index-path")
    args = p.parse_args(argv)
    removed = args.removed or removed_path_for(args.output)
    try:
        stats = dedup_documents(args.input, args.output, removed,
                                config_from_args(DedupConfig, args))
    except (FileNotFoundError, ValueError, LmforgeError) as e:
        print(f"lmforge dedup: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    m = stats.to_metadata()
    replayed = " (a committed run, replayed from the index)" if stats.replayed else ""
    print(f"dedup: kept {m['kept_documents']}/{m['input_documents']}{replayed}; removed "
          f"{m['exact_duplicates_removed']} exact, {m['near_duplicates_removed']} near; "
          f"{m['documents_per_second']} docs/s", file=sys.stderr)
    print(f"kept -> {args.output}\nremoved -> {removed}")
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('dedup', main, sys.argv[1:]))
