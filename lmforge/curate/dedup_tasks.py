"""The three rounds of shard-parallel dedup, as top-level functions of picklable tasks (they run
in this process, a process pool or on Ray through :func:`lmforge.curate.parallel.run_tasks`).

1. :func:`sign_shard`, one task per shard of the day's documents (a Parquet part, or a run of
   row groups of one): normalized-text digests, MinHash signatures, LSH band keys and (verify
   "exact") shingle sets, written to the run's scratch directory as ``.npy``; the band and digest
   tables sorted, so that a hash range of them is two binary searches away.
2. :func:`match_partition`, one task per hash range: the exact-text digests of the day in the
   range against those of every earlier segment (which earlier document holds each digest), and
   the band buckets in the range - the day's and every earlier segment's - giving candidate pairs,
   which are confirmed (a band truly equal) and verified (similarity >= threshold) here.
3. :func:`write_shard`, one task per shard: the shard's kept and removed documents, once the
   driver has decided each document.

Documents are named by a global key in (day, order) order: the rows of earlier segments first
(each segment's ``base`` + row), then the day's documents (``first_new`` + position).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.curate.dedup_index import Segment, SegmentRef, hook, range_of, save_npy
from lmforge.curate.dedup_lsh import (band_keys, candidate_pairs, estimate, hash_range, jaccard,
                                      share_band)
from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class Shard:
    """Row groups ``groups`` of one Parquet file: the day's documents ``start .. start + rows``."""
    index: int
    file: str
    groups: tuple[int, ...]
    start: int
    rows: int

    def __str__(self) -> str:
        return f"{Path(self.file).name}[row groups {self.groups[0]}-{self.groups[-1]}]"

    def read(self, columns: list[str] | None = None):
        import pyarrow as pa

        from lmforge.io import open_parquet

        try:
            return open_parquet(self.file).read_row_groups(list(self.groups), columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise LmforgeError(f"cannot read {self.file}: {' '.join(str(e).split())[:300]}"
                               ) from None


@dataclass(frozen=True)
class Settings:
    num_perm: int
    seed: int
    shingle: int
    bands: int
    rows: int
    exact: bool
    verify: str
    threshold: float


def _dir(scratch: str, shard: int) -> Path:
    return Path(scratch) / f"shard-{shard:06d}"


# ---------------------------------------------------------------------------------------------
# Round 1: signatures


@dataclass(frozen=True)
class SignTask:
    shard: Shard
    scratch: str
    settings: Settings

    def __str__(self) -> str:
        return str(self.shard)


@dataclass
class Signed:
    """What the driver needs of a shard: ids, digests (hi, lo) and which rows have shingles."""
    ids: list[str]
    digests: np.ndarray  # (rows, 2) uint64
    has_shingles: np.ndarray  # (rows,) bool


def digests_of(texts: list[str], raw: list[str | None]) -> np.ndarray:
    """blake2b-128 of each normalized text (of the stripped raw text when that is empty), as
    (hi, lo) uint64 pairs."""
    out = bytearray()
    for text, original in zip(texts, raw):
        key = text if text else (original or "").strip()
        out += hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    return np.frombuffer(bytes(out), dtype=">u8").astype(np.uint64).reshape(-1, 2)


def sign_shard(task: SignTask) -> Signed:
    from lmforge.curate.minhash import permutations, signatures
    from lmforge.curate.text import normalize, shingle_hashes

    s = task.settings
    table = task.shard.read(["id", "text"])
    ids = table.column("id").to_pylist()
    raw = table.column("text").to_pylist()
    texts = [normalize(t or "") for t in raw]
    hashes = [shingle_hashes(t, s.shingle) for t in texts]  # empty text: no shingles
    has = np.fromiter((bool(t) for t in texts), dtype=bool, count=len(texts))
    sigs = signatures(hashes, permutations(s.num_perm, s.seed))
    digests = digests_of(texts, raw)
    pos = np.arange(task.shard.start, task.shard.start + len(ids), dtype=np.uint64)

    out = _dir(task.scratch, task.shard.index)
    out.mkdir(parents=True, exist_ok=True)  # a redone task writes the same files again
    save_npy(out / "signatures.npy", sigs)
    hook("sign_shard")
    keys = band_keys(sigs[has], s.bands, s.rows)
    entries = np.stack((keys.ravel(), np.repeat(pos[has], s.bands)), axis=1)
    save_npy(out / "bands.npy", entries[np.lexsort((entries[:, 1], entries[:, 0]))])
    exact = np.concatenate((digests, pos[:, None]), axis=1)
    save_npy(out / "exact.npy", exact[np.lexsort((exact[:, 2], exact[:, 1], exact[:, 0]))])
    if s.verify == "exact":
        sets = [np.unique(h) if ok else np.empty(0, np.uint32) for h, ok in zip(hashes, has)]
        save_npy(out / "shingles.npy", np.concatenate(sets) if sets else np.empty(0, np.uint32))
        offsets = np.concatenate(([0], np.cumsum([len(x) for x in sets]))).astype(np.uint64)
        save_npy(out / "shingle_offsets.npy", offsets)
    return Signed(ids=ids, digests=digests, has_shingles=has)


# ---------------------------------------------------------------------------------------------
# Round 2: one hash range of digests and band buckets


@dataclass(frozen=True)
class MatchTask:
    part: int
    parts: int
    scratch: str
    shards: tuple[Shard, ...]
    segments: tuple[SegmentRef, ...]
    settings: Settings

    def __str__(self) -> str:
        return f"hash range {self.part + 1}/{self.parts}"

    @property
    def first_new(self) -> int:
        return sum(seg.documents for seg in self.segments)


@dataclass
class Matched:
    holder_pos: np.ndarray  # day positions whose digest an earlier segment holds ...
    holder_key: np.ndarray  # ... and the global key of the earliest such document
    pairs: np.ndarray  # (n, 2) int64 global keys (earlier, later), verified
    similarity: np.ndarray  # (n,) float64
    candidates: int  # candidate pairs before confirmation and verification


class _Sources:
    """The signatures and shingle sets of documents by global key: earlier segments' and the
    day's scratch files, memory-mapped."""

    def __init__(self, task: MatchTask):
        self.task = task
        self.segments = [Segment(ref) for ref in task.segments]
        first_new = task.first_new
        self.bases = np.array([ref.base for ref in task.segments]
                              + [first_new + sh.start for sh in task.shards], dtype=np.int64)
        self._scratch: dict[tuple[int, str], np.ndarray] = {}

    def _shard_array(self, i: int, name: str) -> np.ndarray:
        if (i, name) not in self._scratch:
            path = _dir(self.task.scratch, self.task.shards[i].index) / f"{name}.npy"
            self._scratch[(i, name)] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._scratch[(i, name)]

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = np.searchsorted(self.bases, keys, side="right") - 1
        return src, keys - self.bases[src]

    def signatures(self, keys: np.ndarray) -> np.ndarray:
        out = np.empty((len(keys), self.task.settings.num_perm), dtype=np.uint32)
        src, rows = self._locate(keys)
        n_seg = len(self.segments)
        for s in np.unique(src):
            at = src == s
            table = (self.segments[s].signatures if s < n_seg
                     else self._shard_array(s - n_seg, "signatures"))
            out[at] = table[rows[at]]
        return out

    def shingles(self, key: int) -> np.ndarray:
        src, row = (int(x[0]) for x in self._locate(np.array([key], np.int64)))
        n_seg = len(self.segments)
        if src < n_seg:
            values, offsets = (self.segments[src].shingle_values,
                               self.segments[src].shingle_offsets)
        else:
            values = self._shard_array(src - n_seg, "shingles")
            offsets = self._shard_array(src - n_seg, "shingle_offsets")
        return np.asarray(values[int(offsets[row]):int(offsets[row + 1])])


def _earlier_holders(task: MatchTask, segments: list[Segment], lo: int, hi: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """For each document of the day whose digest is in [lo, hi): the earliest kept document of
    an earlier segment with the same digest, if any."""
    new = [range_of(np.load(_dir(task.scratch, sh.index) / "exact.npy", mmap_mode="r",
                            allow_pickle=False), lo, hi) for sh in task.shards]
    old = [seg.rows(seg.exact, lo, hi) for seg in segments]
    today = np.concatenate(new) if new else np.empty((0, 3), np.uint64)
    kept = [np.concatenate((e[:, :2], (e[:, 2].astype(np.int64) + seg.ref.base
                                       ).astype(np.uint64)[:, None]), axis=1)
            for e, seg in zip(old, segments)]
    before = np.concatenate(kept) if kept else np.empty((0, 3), np.uint64)
    if not len(today) or not len(before):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # One row per digest, its earliest holder's (np.unique keeps the first of equals).
    before = before[np.argsort(before[:, 2], kind="stable")]
    void = np.dtype((np.void, 16))
    digests, first = np.unique(np.ascontiguousarray(before[:, :2]).view(void).ravel(),
                               return_index=True)
    holders = before[first, 2].astype(np.int64)
    wanted = np.ascontiguousarray(today[:, :2]).view(void).ravel()
    at = np.minimum(np.searchsorted(digests, wanted), len(digests) - 1)
    hit = digests[at] == wanted
    return today[hit, 2].astype(np.int64), holders[at[hit]]


def match_partition(task: MatchTask) -> Matched:
    s = task.settings
    lo, hi = hash_range(task.part, task.parts)
    sources = _Sources(task)
    segments = sources.segments
    if s.exact:
        holder_pos, holder_key = _earlier_holders(task, segments, lo, hi)
    else:
        holder_pos = holder_key = np.empty(0, np.int64)

    first_new = task.first_new
    participate = np.load(Path(task.scratch) / "participate.npy", mmap_mode="r",
                          allow_pickle=False)
    keys, members = [], []
    for seg in segments:
        e = seg.rows(seg.bands, lo, hi)
        keys.append(e[:, 0])
        members.append(e[:, 1].astype(np.int64) + seg.ref.base)
    for sh in task.shards:
        e = range_of(np.load(_dir(task.scratch, sh.index) / "bands.npy", mmap_mode="r",
                             allow_pickle=False), lo, hi)
        pos = e[:, 1].astype(np.int64)
        ok = np.asarray(participate[pos])
        keys.append(e[ok, 0])
        members.append(pos[ok] + first_new)
    pairs = candidate_pairs(np.concatenate(keys) if keys else np.empty(0, np.uint64),
                            np.concatenate(members) if members else np.empty(0, np.int64),
                            first_new)
    if not len(pairs):
        return Matched(holder_pos, holder_key, pairs, np.empty(0), 0)
    a, b = sources.signatures(pairs[:, 0]), sources.signatures(pairs[:, 1])
    # A 64-bit key collision of two unequal bands is no datasketch candidate.
    real = share_band(a, b, s.bands, s.rows)
    pairs, a, b = pairs[real], a[real], b[real]
    if s.verify == "exact":
        sims = np.array([jaccard(sources.shingles(int(x)), sources.shingles(int(y)))
                         for x, y in pairs], dtype=np.float64)
    else:
        sims = estimate(a, b)
    ok = np.ones(len(pairs), bool) if s.verify == "none" else sims >= s.threshold
    return Matched(holder_pos, holder_key, pairs[ok], sims[ok], int(real.size))


# ---------------------------------------------------------------------------------------------
# Round 3: write the decided documents


@dataclass(frozen=True)
class WriteTask:
    shard: Shard
    scratch: str
    reasons: tuple[str | None, ...]  # per row: None (kept) or the reason it was removed
    duplicate_of: tuple[str | None, ...]
    schema: object  # pa.Schema of the kept documents
    removed_schema: object

    def __str__(self) -> str:
        return str(self.shard)


def _conform(table, schema):
    """The shard's table in the output's schema (a directory's parts may differ slightly)."""
    import pyarrow as pa

    if table.schema.equals(schema):
        return table
    return pa.Table.from_pylist(table.to_pylist(), schema=schema)


def write_shard(task: WriteTask) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lmforge.curate.dedup_index import writing

    table = task.shard.read()
    removed = pa.array([r is not None for r in task.reasons], pa.bool_())
    kept = _conform(table.filter(pc.invert(removed)), task.schema)
    gone = table.filter(removed)
    gone = gone.drop_columns([c for c in ("reason", "duplicate_of") if c in gone.column_names])
    gone = gone.append_column("reason", pa.array([r for r in task.reasons if r is not None],
                                                 pa.string()))
    gone = gone.append_column("duplicate_of", pa.array(
        [d for r, d in zip(task.reasons, task.duplicate_of) if r is not None], pa.string()))
    gone = _conform(gone.select(task.removed_schema.names), task.removed_schema)
    out = _dir(task.scratch, task.shard.index)
    for name, part in (("kept.parquet", kept), ("removed.parquet", gone)):
        with writing(out / name):
            pq.write_table(part, out / name)
    return kept.num_rows, gone.num_rows
