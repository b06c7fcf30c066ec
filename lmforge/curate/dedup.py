"""Remove duplicate documents: exact duplicates (same normalized text), then near duplicates with
MinHash LSH (datasketch's signatures) over word shingles, shard-parallel.

    lmforge dedup filtered.parquet deduped.parquet --threshold 0.8 --index minhash.index \
        [--backend local|ray --workers N --ray-address HOST:PORT]

Keep-first: a document is removed when a document before it in (day, order) - earlier in this
input, or kept on an earlier day when an index is given - that was itself kept has the same
normalized text (``exact_duplicate``) or a Jaccard similarity of word shingles of at least
``threshold`` among the LSH candidates (``near_duplicate``); the removed file names that document
in ``duplicate_of`` (the most similar one; the earliest of equals). That is the answer of visiting
the documents one by one with datasketch's ``MinHashLSH`` of the kept ones, computed in rounds
that each split into independent tasks (:mod:`lmforge.curate.dedup_tasks`):

1. per shard: signatures, band keys, digests (parallel);
2. per hash range of band buckets and digests: which earlier document holds each digest, the
   candidate pairs of each bucket, confirmed and verified (parallel);
3. on the driver: clusters of verified pairs (union-find), each decided in (day, order), keeping
   the first; then per shard, the kept and removed documents are written (parallel), and the
   day's kept documents become its index segment (:mod:`lmforge.curate.dedup_index`).

The result does not depend on the shards, the hash ranges, the workers or the backend.

The work is cut by concern: this module (config, driver, CLI); :mod:`lmforge.curate.minhash`
(signatures, bit-for-bit datasketch's); :mod:`lmforge.curate.dedup_lsh` (banding, candidate
pairs, verification, union-find); :mod:`lmforge.curate.dedup_tasks` (the parallel rounds);
:mod:`lmforge.curate.dedup_index` (the per-day segments on disk).

numpy, pyarrow and datasketch (which pulls in scipy) are imported by the functions that use them,
so importing this module for :class:`DedupConfig` (the CLI's help, the Dagster definitions) is
cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, Field

from lmforge.config import add_config_arguments, config_from_args
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import numpy as np

    from lmforge.curate.dedup_tasks import Shard
    from lmforge.curate.parallel import ParallelConfig


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
        "similarity of the two shingle sets (precise; the index keeps the 32-bit shingle hashes "
        "of every kept document, about 4 bytes per word, read only for candidate pairs), "
        "'estimate' uses the MinHash estimate (only the num_perm * 4 bytes of the signature, but "
        "a ~0.035 standard error near the threshold), 'none' takes every candidate (datasketch's "
        "plain LSH answer)")
    exact: bool = Field(True, description="remove exact duplicates of normalized text first")
    index_path: str | None = Field(
        None, description="persistent index directory of per-day segments: the run is "
        "deduplicated against every segment before its own (read in place, never copied) and "
        "writes its kept documents as its own segment, after its output; a retry of a committed "
        "run gives the same output again. One writer at a time (a lock refuses others)")
    sample_clusters: int = Field(5, description="duplicate pairs to show in the metadata")
    shard_rows: int = Field(
        10_000, description="documents per shard of the signature and write rounds: a Parquet "
        "part, or a run of its row groups of about this many documents (a row group is never "
        "split)")
    partitions: int = Field(
        0, description="hash ranges of the LSH buckets and text digests, one task each (0: two "
        "per worker); the result does not depend on it")


@dataclass
class DedupStats:
    input_documents: int = 0
    kept_documents: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    index_documents_before: int = 0  # kept documents in the segments before this run's
    index_documents_after: int = 0
    # This input and output were committed to the index before (a retry): the output was
    # derived again from the segments before it, and the index was left as it was.
    replayed: bool = False
    segment: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    lsh_bands: int = 0
    lsh_rows: int = 0
    shards: int = 0
    partitions: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    clusters: int = 0
    largest_cluster: int = 0
    backend: str = "local"
    workers: int = 1
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
            "index_segment": self.segment,
            "lsh_bands_rows": [self.lsh_bands, self.lsh_rows],
            "shards": self.shards,
            "hash_ranges": self.partitions,
            "candidate_pairs": self.candidate_pairs,
            "verified_pairs": self.verified_pairs,
            "near_duplicate_clusters": self.clusters,
            "largest_cluster": self.largest_cluster,
            "backend": self.backend,
            "workers": self.workers,
            "sample_clusters": self.samples,
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(n / self.seconds, 1) if self.seconds else 0.0,
        }


def _check_config(cfg: DedupConfig) -> None:
    if not 0.0 < cfg.threshold <= 1.0:
        raise LmforgeError(f"threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.shingle < 1 or cfg.num_perm < 2:
        raise LmforgeError("shingle must be >= 1 and num_perm >= 2")
    if cfg.shard_rows < 1:
        raise LmforgeError(f"shard_rows must be at least 1, got {cfg.shard_rows}")
    if cfg.partitions < 0:
        raise LmforgeError(f"partitions must be 0 (automatic) or more, got {cfg.partitions}")


def plan_shards(in_path, shard_rows: int) -> list[Shard]:
    """The day's documents cut into shards: each Parquet file's row groups, consecutive ones
    joined up to about ``shard_rows`` documents."""
    from lmforge.curate.dedup_tasks import Shard
    from lmforge.io import open_parquet, parquet_files

    shards: list[Shard] = []
    start = 0
    for file in parquet_files(in_path):
        meta = open_parquet(file).metadata
        groups: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= shard_rows or g == meta.num_row_groups - 1:
                shards.append(Shard(len(shards), str(file), tuple(groups), start, rows))
                start += rows
                groups, rows = [], 0
    return shards


def _progress(desc: str):
    def report(k: int, n: int) -> None:
        if k == n:
            print(f"dedup: {desc}: {n}/{n} tasks", file=sys.stderr, flush=True)
    return report


def _ids_of(keys: list[int], first_new: int, ids: list[str], refs) -> dict[int, str]:
    """Ids of documents by global key: the day's, or read from the earlier segments' ids."""
    from lmforge.curate.dedup_index import Segment

    import bisect

    out = {k: ids[k - first_new] for k in keys if k >= first_new}
    bases = [ref.base for ref in refs]
    by_segment: dict[int, list[int]] = {}
    for k in keys:
        if k < first_new:
            by_segment.setdefault(bisect.bisect_right(bases, k) - 1, []).append(k)
    for s, wanted in by_segment.items():
        ref = refs[s]
        out.update(zip(wanted, Segment(ref).ids([k - ref.base for k in wanted])))
    return out


def _sample_clusters(in_path, pairs: list[tuple[str, str, str, float]], n: int) -> list[dict]:
    """A few (kept, removed) pairs with text snippets, near duplicates first: the interesting ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from lmforge.io import open_parquet, parquet_files

    near = [p for p in pairs if p[0] == "near_duplicate"]
    exact = [p for p in pairs if p[0] == "exact_duplicate"]
    chosen = (near[:n] + exact[:n])[:n]
    if not chosen:
        return []
    want = pa.array(sorted({i for _, kept, removed, _ in chosen for i in (kept, removed)}))
    snippets: dict[str, str] = {}
    for file in parquet_files(in_path):
        table = open_parquet(file).read(columns=["id", "text"])
        table = table.filter(pc.is_in(table.column("id"), value_set=want))
        for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
            snippets.setdefault(doc_id, " ".join((text or "").split())[:160])
    return [{"reason": reason, "similarity": round(sim, 3),
             "kept_id": kept, "kept_text": snippets.get(kept, "(kept in an earlier batch)"),
             "removed_id": removed, "removed_text": snippets.get(removed, "")}
            for reason, kept, removed, sim in chosen]


@contextlib.contextmanager
def _scratch(out_path: Path) -> Iterator[Path]:
    """The run's working files, beside its output (on the store that every worker sees): named
    as a temporary of this process, so a later run sweeps it after a kill."""
    from lmforge.io import temp_name_prefix

    path = Path(tempfile.mkdtemp(prefix=temp_name_prefix(out_path.name + ".dedup"),
                                 suffix=".tmp", dir=out_path.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _hook_on_success(point: str):
    from lmforge.curate.dedup_index import hook

    def exit_(exc_type, exc, tb) -> bool:
        if exc_type is None:
            hook(point)
        return False
    return exit_


def _segment_name(entries, segment: str | None, run_input: str, run_output: str):
    """This run's segment name, and the committed segment of that name it repeats (or None)."""
    from lmforge.curate.dedup_index import AUTO_NAME, SEGMENT_NAME

    if segment is not None:
        if not SEGMENT_NAME.match(segment):
            raise LmforgeError(f"segment name {segment!r}: use letters, digits, '-' and '_' "
                               "(a day, 2026-03-01), starting with a letter or digit")
        return segment, next((m for m, _ in entries if m.name == segment), None)
    named = [m.name for m, _ in entries if not AUTO_NAME.match(m.name)]
    if named:
        raise LmforgeError(f"this index's segments are named by day ({named[-1]}, ...): give the "
                           "day's segment name (--segment)")
    found = next((m for m, _ in entries if (m.input, m.output) == (run_input, run_output)), None)
    if found is not None:
        return found.name, found
    return f"{max((int(m.name) + 1 for m, _ in entries), default=0):06d}", None


def dedup_documents(in_path, out_path, removed_path=None, cfg: DedupConfig | None = None, *,
                    parallel: ParallelConfig | None = None,
                    segment: str | None = None) -> DedupStats:
    """Write the first of every group of duplicates to ``out_path``, the others to
    ``removed_path`` with ``reason`` and ``duplicate_of``. ``out_path`` is one Parquet file, or
    (a path not ending in ``.parquet``) a day directory of parts and a manifest, the removed
    documents beside each part. With ``cfg.index_path``, documents kept in earlier segments
    count as kept, and this run's kept documents become segment ``segment`` (default: the next
    number, or the one this input and output were committed as)."""
    import numpy as np
    import pyarrow as pa

    from lmforge.curate import dedup_index as di
    from lmforge.curate.dedup_lsh import banding
    from lmforge.curate.dedup_tasks import (MatchTask, Settings, SignTask, WriteTask,
                                            match_partition, sign_shard, write_shard)
    from lmforge.curate.dedup_lsh import decide
    from lmforge.curate.parallel import ParallelConfig, parallel_session, run_tasks
    from lmforge.curate.text import extend_schema, input_schema
    from lmforge.io import atomic_path, check_output, removed_path_for

    cfg = cfg or DedupConfig()
    parallel = parallel or ParallelConfig()
    _check_config(cfg)
    t0 = time.perf_counter()
    out_path = Path(out_path)
    to_parts = not out_path.name.endswith(".parquet")
    removed = None if to_parts else Path(removed_path or removed_path_for(out_path))
    if removed is not None and out_path.resolve() == removed.resolve():
        raise LmforgeError(f"kept and removed outputs are the same file: {out_path}")
    index_dir = Path(cfg.index_path) if cfg.index_path else None
    if index_dir is not None:
        di.refuse_non_index(index_dir)
    elif segment is not None:
        raise LmforgeError(f"--segment {segment} names a segment of an index: give the index "
                           "too (--index-path)")
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
    check_output(out_path, "dir" if to_parts else "file")
    if removed is not None:
        check_output(removed)

    bands, rows = banding(cfg)
    settings = Settings(num_perm=cfg.num_perm, seed=cfg.seed, shingle=cfg.shingle, bands=bands,
                        rows=rows, exact=cfg.exact, verify=cfg.verify, threshold=cfg.threshold)
    params = {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "shingle": cfg.shingle,
              "seed": cfg.seed, "verify": cfg.verify, "exact": cfg.exact,
              "lsh_bands_rows": [bands, rows]}
    parts = cfg.partitions or 2 * parallel.workers
    stats = DedupStats(lsh_bands=bands, lsh_rows=rows, partitions=parts,
                       backend=parallel.backend, workers=parallel.workers)
    with contextlib.ExitStack() as stack:
        refs: list[di.SegmentRef] = []
        if index_dir is not None:
            stack.enter_context(di.writer_lock(index_dir))
            di.hook("locked")
            entries = di.committed_segments(index_dir, params)
            try:
                run_input = di.input_digest(in_path)
            except OSError as e:
                raise LmforgeError(f"cannot read {in_path}: {e.strerror or e}") from None
            run_output = str(out_path.resolve())
            name, existing = _segment_name(entries, segment, run_input, run_output)
            stats.segment = name
            stats.replayed = existing is not None and (existing.input, existing.output) == (
                run_input, run_output)
            refs = di.segment_refs([(m, p) for m, p in entries if m.name < name])
        first_new = sum(ref.documents for ref in refs)
        scratch = stack.enter_context(_scratch(out_path))

        shards = plan_shards(in_path, cfg.shard_rows)
        stats.shards = len(shards)
        if parallel.backend == "local" and parallel.workers > 1:
            # Pool workers fork from the forkserver: with the rounds' modules loaded there
            # first, each round's pool starts without importing numpy and pyarrow again (a
            # no-op once this process's forkserver runs).
            import multiprocessing

            multiprocessing.set_forkserver_preload(["lmforge.curate.dedup_tasks"])
        with parallel_session(parallel):
            signed = run_tasks(sign_shard, [SignTask(sh, str(scratch), settings) for sh in shards],
                               parallel, desc="dedup signatures", progress=_progress("signatures"))
            ids = [i for s in signed for i in s.ids]
            n = len(ids)
            digests = (np.concatenate([s.digests for s in signed]) if signed
                       else np.empty((0, 2), np.uint64))
            has = np.concatenate([s.has_shingles for s in signed]) if signed else np.empty(0, bool)
            di.hook("signatures")
            # The first document of the day with each normalized text.
            void = np.ascontiguousarray(digests).view(np.dtype((np.void, 16))).ravel()
            _, first_at, inverse = np.unique(void, return_index=True, return_inverse=True)
            first = first_at[inverse.ravel()] if n else np.empty(0, np.int64)
            di.save_npy(scratch / "participate.npy", has & (first == np.arange(n)))
            matched = run_tasks(match_partition, [
                MatchTask(p, parts, str(scratch), tuple(shards), tuple(refs), settings)
                for p in range(parts)], parallel, desc="dedup buckets",
                progress=_progress("buckets"))
            holder = np.full(n, -1, np.int64)
            for m in matched:
                holder[m.holder_pos] = m.holder_key
            pairs = np.concatenate([m.pairs for m in matched]) if matched else np.empty((0, 2))
            sims = np.concatenate([m.similarity for m in matched]) if matched else np.empty(0)
            stats.candidate_pairs = sum(m.candidates for m in matched)
            if len(pairs):  # a pair that shares several bands comes from several ranges
                pairs, at = np.unique(pairs, axis=0, return_index=True)
                sims = sims[at]
            stats.verified_pairs = len(pairs)
            dec = decide(first_new, first, holder, has, pairs.astype(np.int64), sims, cfg.exact)
            stats.clusters = len(dec.clusters)
            stats.largest_cluster = max((len(c) for c in dec.clusters), default=0)

            gone = np.flatnonzero(dec.reason)
            names = _ids_of(sorted(set(dec.duplicate_of[gone].tolist())), first_new, ids, refs)
            reasons = np.array([None, "exact_duplicate", "near_duplicate"], dtype=object)[dec.reason]
            dup_ids = [None] * n
            samples = []
            for t in gone.tolist():
                dup_ids[t] = names[int(dec.duplicate_of[t])]
                samples.append((reasons[t], dup_ids[t], ids[t], float(dec.similarity[t])))
            written = run_tasks(write_shard, [
                WriteTask(sh, str(scratch), tuple(reasons[sh.start:sh.start + sh.rows]),
                          tuple(dup_ids[sh.start:sh.start + sh.rows]), schema, removed_schema)
                for sh in shards], parallel, desc="dedup write", progress=_progress("write"))

        stats.input_documents = n
        stats.kept_documents = sum(k for k, _ in written)
        stats.exact_removed = int(np.sum(dec.reason == 1))
        stats.near_removed = int(np.sum(dec.reason == 2))
        stats.index_documents_before = first_new
        stats.index_documents_after = first_new + stats.kept_documents

        # Commit: the outputs, then the segment (an ExitStack unwinds last-in, first-out).
        if index_dir is not None and not stats.replayed:
            stack.push(_hook_on_success("index_committed"))
            seg_tmp = stack.enter_context(atomic_path(index_dir / stats.segment, "dir"))
            _write_segment(seg_tmp, stats.segment, params, run_input, run_output, scratch,
                           shards, dec.reason == 0, ids, digests, has, cfg)
        stack.push(_hook_on_success("outputs_committed"))
        _write_outputs(out_path, removed, scratch, shards, schema, removed_schema, written,
                       stack)
        di.hook("prepared")
    stats.samples = _sample_clusters(in_path, samples, cfg.sample_clusters)
    stats.seconds = time.perf_counter() - t0
    return stats


def _write_segment(seg_dir: Path, name: str, params: dict[str, Any], run_input: str,
                   run_output: str, scratch: Path, shards: list[Shard], kept: np.ndarray,
                   ids: list[str], digests: np.ndarray, has: np.ndarray, cfg: DedupConfig) -> None:
    """The day's kept documents as its index segment: their rows in the day's order, the band
    and digest tables sorted by hash (taken from the shards' scratch tables, not recomputed)."""
    import numpy as np

    from lmforge.curate.dedup_index import write_segment

    row_of = np.cumsum(kept) - 1  # day position -> segment row (for kept positions)
    sigs, bands, values, lengths = [], [], [], []
    for sh in shards:
        d = scratch / f"shard-{sh.index:06d}"
        local = np.flatnonzero(kept[sh.start:sh.start + sh.rows])
        sigs.append(np.load(d / "signatures.npy", mmap_mode="r", allow_pickle=False)[local])
        table = np.load(d / "bands.npy", allow_pickle=False)
        pos = table[:, 1].astype(np.int64)
        table = table[kept[pos]]
        bands.append(np.stack((table[:, 0], row_of[table[:, 1].astype(np.int64)]
                               .astype(np.uint64)), axis=1))
        if cfg.verify == "exact":
            flat = np.load(d / "shingles.npy", allow_pickle=False)
            offsets = np.load(d / "shingle_offsets.npy", allow_pickle=False).astype(np.int64)
            starts, sizes = offsets[local], offsets[local + 1] - offsets[local]
            # Every kept row's run of values, gathered at once.
            at = np.arange(sizes.sum()) + np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
            values.append(flat[at])
            lengths.append(sizes)
    num_perm = cfg.num_perm
    band_table = np.concatenate(bands) if bands else np.empty((0, 2), np.uint64)
    band_table = band_table[np.lexsort((band_table[:, 1], band_table[:, 0]))]
    at = np.flatnonzero(kept)
    if cfg.exact:
        exact = np.concatenate((digests[at], np.arange(len(at), dtype=np.uint64)[:, None]), axis=1)
        exact = exact[np.lexsort((exact[:, 2], exact[:, 1], exact[:, 0]))]
    else:
        exact = np.empty((0, 3), np.uint64)
    shingles = None
    if cfg.verify == "exact":
        sizes = np.concatenate(lengths) if lengths else np.empty(0, np.int64)
        shingles = (np.concatenate(values) if values else np.empty(0, np.uint32),
                    np.concatenate(([0], np.cumsum(sizes))).astype(np.uint64))
    write_segment(seg_dir, name=name, params=params, input_digest=run_input, output=run_output,
                  ids=[ids[i] for i in at.tolist()],
                  signatures=(np.concatenate(sigs) if sigs else np.empty((0, num_perm), np.uint32)),
                  bands=band_table, exact=exact, shingles=shingles)


def _write_outputs(out_path: Path, removed: Path | None, scratch: Path, shards: list[Shard],
                   schema, removed_schema, written: list[tuple[int, int]],
                   stack: contextlib.ExitStack) -> None:
    """Kept and removed documents from the shards' parts: into one file each (renamed when the
    stack unwinds), or as the parts of a day directory committed by its manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.curate.dedup_index import writing
    from lmforge.io import (MANIFEST_FILE, atomic_path, claim_output_dir, part_path,
                            removed_path_for, write_manifest)

    def part(sh: Shard, name: str) -> Path:
        return scratch / f"shard-{sh.index:06d}" / name

    if removed is not None:
        for final, name, sch in ((removed, "removed.parquet", removed_schema),
                                 (out_path, "kept.parquet", schema)):
            tmp = stack.enter_context(atomic_path(final))
            with writing(final):
                with pq.ParquetWriter(tmp, sch) as writer:
                    if not shards:
                        writer.write_table(pa.Table.from_pylist([], schema=sch))
                    for sh in shards:
                        writer.write_table(pq.read_table(part(sh, name)))
        return
    out = claim_output_dir(out_path)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # unreadable until this run's parts are in
    for p in out.glob("part-*.parquet"):
        p.unlink()
    listed = []
    for i, (sh, (kept_rows, removed_rows)) in enumerate(zip(shards, written)):
        final = part_path(out, i)
        with writing(final):
            os.replace(part(sh, "kept.parquet"), final)
            os.replace(part(sh, "removed.parquet"), removed_path_for(final))
        listed.append({"file": final.name, "removed": removed_path_for(final).name,
                       "rows": kept_rows, "removed_rows": removed_rows})
    write_manifest(out, listed, stage="dedup")


def main(argv: list[str] | None = None) -> int:
    from lmforge.curate.parallel import ParallelConfig
    from lmforge.io import removed_path_for

    p = argparse.ArgumentParser(
        prog="lmforge dedup",
        description="Exact (normalized text) and near-duplicate (MinHash LSH) removal over Parquet "
                    "documents, keeping the first of each group in input order; shard-parallel "
                    "on a process pool or a Ray cluster.")
    p.add_argument("input", help="documents: a Parquet file, or a directory of parts")
    p.add_argument("output", help="kept documents: a Parquet file, or (a path not ending in "
                                  ".parquet) a directory of parts and a manifest")
    p.add_argument("--removed", help="removed documents Parquet with reason and duplicate_of "
                                     "(default: <OUT stem>.removed.parquet; beside each part "
                                     "for a directory output)")
    p.add_argument("--segment", default=None, metavar="NAME",
                   help="this run's segment of the index, e.g. its day (default: the next "
                        "number, or the segment this input and output were committed as)")
    add_config_arguments(p, DedupConfig)
    add_config_arguments(p, ParallelConfig, config_flag=False)
    # Earlier name of --index-path, kept for scripts and the README that use it.
    p.add_argument("--index", dest="index_path", default=None, metavar="DIR",
                   help="same as --index-path")
    args = p.parse_args(argv)
    to_parts = not str(args.output).endswith(".parquet")
    removed = None if to_parts else (args.removed or removed_path_for(args.output))
    try:
        parallel = config_from_args(ParallelConfig, argparse.Namespace(
            **{name: getattr(args, name) for name in ParallelConfig.model_fields}))
        stats = dedup_documents(args.input, args.output, removed,
                                config_from_args(DedupConfig, args), parallel=parallel,
                                segment=args.segment)
    except (FileNotFoundError, ValueError, LmforgeError) as e:
        print(f"lmforge dedup: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    m = stats.to_metadata()
    replayed = " (a committed run, replayed from the index)" if stats.replayed else ""
    print(f"dedup: kept {m['kept_documents']}/{m['input_documents']}{replayed}; removed "
          f"{m['exact_duplicates_removed']} exact, {m['near_duplicates_removed']} near; "
          f"{m['documents_per_second']} docs/s ({parallel.backend}, {parallel.workers} "
          f"worker(s))", file=sys.stderr)
    print(f"kept -> {args.output}" + (f"\nremoved -> {removed}" if removed else ""))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('dedup', main, sys.argv[1:]))
