"""Remove duplicate documents: exact duplicates (same normalized text), then near duplicates with
MinHash LSH (datasketch) over word shingles.

    lmforge dedup filtered.parquet deduped.parquet --threshold 0.8 --index minhash.index

Keep-first: documents are visited in input order; a document is removed when an earlier kept
document (in this batch, or in any batch before it when a persistent index is given) has the same
normalized text (``exact_duplicate``) or an estimated Jaccard similarity of word shingles of at
least ``threshold`` (``near_duplicate``). The removed file names the kept document in
``duplicate_of``.

Speed: a MinHash signature is computed for many documents at once with numpy. Shingles are hashed
by a vectorized polynomial hash (``text.shingle_hashes``) rather than SHA-1 per shingle, and the
permutations are datasketch's own (same seed, same ``affine32`` scheme), so a signature here is
bit-for-bit the one ``datasketch.MinHash(num_perm, seed).update_batch(shingle_hashes)`` gives
with an identity hash function (the tests check this). The LSH index is datasketch's MinHashLSH,
fed ``LeanMinHash`` objects, so its storage (in memory, or Redis via ``storage_config``) works as
datasketch documents it.

The persistent index (``--index DIR``) is data only, never a pickle (an index may sit in a shared
artifact store, and nothing read from there may run code)::

    DIR/.lmforge-output           lmforge made this directory
    DIR/manifest.json             format, the settings that built it, the committed runs in order
    DIR/lock                      flock'ed by the run that writes the index
    DIR/segments/000000/          the documents one run kept, in LSH key order:
        documents.parquet           id, and (verify="exact") the sorted unique shingle hashes
        signatures.npy              (documents, num_perm) uint32, read with allow_pickle=False
        exact.parquet               digest of normalized text -> kept id (exact=True)

The in-memory LSH is rebuilt from the stored signatures on load (the signatures are datasketch's,
bit for bit, so the buckets are the ones datasketch would build); with Redis ``storage_config``
the buckets stay in Redis, keyed by the LSH key as decimal bytes (no pickled keys either).
An old pickle index is refused with a message saying how to rebuild it; it is never unpickled.
Anything else that is not a well-formed index (a garbled manifest, a segment whose checksum does
not match) is a one-line :class:`LmforgeError`.

Transactions. Each run that adds to the index is one segment, recorded in the manifest with the
content hash of its input file(s) and its resolved output path (the index's settings are fixed,
so these two name the run). A run:

1. checks every destination (output, removed, index) before any work, takes the index's lock
   (``fcntl.flock`` on ``DIR/lock``, non-blocking: a second writer is refused with a one-line
   error, never merged), and sweeps temporaries of killed runs;
2. looks its (input hash, output) up in the manifest. Found: this run was committed before (a
   retry after a crash, or a re-run) - the index is loaded only up to the segment before that run
   and the output is derived again from that state, which is exactly what the first run wrote;
   nothing is added to the index. Not found: the whole index is loaded and a new segment follows;
3. writes the kept and removed Parquet files, the new segment and the new manifest to temporaries
   (where a full disk would strike), then renames them in this order: kept, removed, segment,
   manifest. The manifest rename is the commit of the index.

A kill before the manifest rename leaves the index as it was (a renamed segment that the manifest
does not list is garbage, removed by the next writer), so the retry computes the same output from
the same state and commits it; a kill after it is a committed run, whose retry is step 2's
"found". Either way the retry's output and index equal an uninterrupted run's. Redis buckets are
written during the run, so a writer first removes buckets of keys the manifest does not hold
(those of a killed run). A run that fails cleanly removes its temporaries (and its Redis keys).

For the tests only: ``LMFORGE_DEDUP_SIGNAL_AT=POINT[:SIGNAL]`` makes the run send itself SIGNAL
(default SIGKILL) when it reaches POINT - ``locked``, ``batch`` (after the first batch),
``prepared`` (all temporaries written), ``outputs_committed``, ``segment_committed`` or
``index_committed`` - so a test can kill -9 (or SIGSTOP) a run at an exact moment of its commit.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import BaseModel, Field, ValidationError

from lmforge.curate.text import extend_schema, input_schema, normalize, shingle_hashes
from lmforge.errors import LmforgeError, OutputError
from lmforge.io import (atomic_path, check_output, claim_output_dir, is_lmforge_output,
                        parquet_files, read_parquet_rows, removed_path_for, sweep_stale)

INDEX_FORMAT = "lmforge-dedup-index"
INDEX_VERSION = 2
_SCHEME = "affine32"  # datasketch 2's default permutation scheme (32-bit values)
_MANIFEST, _LOCK, _SEGMENTS = "manifest.json", "lock", "segments"
_SEGMENT_NAME = re.compile(r"^\d{6}$")
_HOOK_ENV = "LMFORGE_DEDUP_SIGNAL_AT"


class DedupConfig(BaseModel):
    """How similar is too similar. Defaults are the `tiny` preset."""

    threshold: float = 0.8  # Jaccard similarity of shingle sets at which documents are duplicates
    num_perm: int = 128  # MinHash permutations: more = better estimates, slower
    shingle: int = 5  # words per shingle
    seed: int = 1  # MinHash permutation seed; an index only matches signatures of the same seed
    # LSH banding (bands, rows); None lets datasketch choose the optimum for threshold/weights.
    # Candidates are verified, so false negatives (never seen) cost more than false positives
    # (one cheap check): the default weights favour recall.
    lsh_params: tuple[int, int] | None = None
    lsh_weights: tuple[float, float] = (0.05, 0.95)  # (false positive, false negative) weights
    # How an LSH candidate is confirmed: "exact" computes the Jaccard similarity of the two
    # shingle sets (precise; keeps the 32-bit shingle hashes of every kept document in memory and
    # in the index, about 4 bytes per word), "estimate" uses the MinHash estimate (memory is
    # num_perm * 4 bytes per document, but a ~0.035 standard error near the threshold), "none"
    # takes every candidate (datasketch's plain LSH answer).
    verify: Literal["exact", "estimate", "none"] = "exact"
    exact: bool = True  # remove exact duplicates of normalized text first
    # A persistent index directory (see the module docstring): loaded if it exists, and this run's
    # kept documents are committed to it together with the output, so the next batch is
    # deduplicated against everything kept before. One writer at a time (a lock refuses others).
    index_path: str | None = None
    # datasketch storage for the LSH, passed through: {"type": "dict"} (in memory, rebuilt from
    # the index's signatures) or {"type": "redis", "basename": b"lmforge", "redis": {"host": ...,
    # "port": ...}}. Only the LSH buckets live in Redis: the kept ids, exact-text digests and
    # signatures/shingles stay in index_path, so Redis storage needs index_path and a fixed
    # basename, and runs sharing one basename must share that index directory too.
    storage_config: dict[str, Any] | None = None
    sample_clusters: int = 5  # duplicate pairs to show in the metadata
    batch_rows: int = 2_000


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


# ---------------------------------------------------------------------------------------------
# MinHash signatures, many documents at a time

_fmix_consts = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_MAX_ROWS = 1 << 16  # shingles per numpy block: bounds the (rows x num_perm) temporary to ~32 MB


def _fmix32(h: np.ndarray) -> np.ndarray:
    # datasketch's affine32 scheme pre-mixes input hashes with the MurmurHash3 finalizer.
    s1, m1, s2, m2 = _fmix_consts
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s1)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b) for this num_perm and seed."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(hash_arrays: list[np.ndarray], perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signatures (len(hash_arrays), num_perm) uint32 of many shingle-hash sets at once.

    All shingles of a block of documents go through the permutations in one array operation, and
    ``np.minimum.reduceat`` takes each document's minimum over its own shingles.
    """
    a, b = perms[0][:, None], perms[1][:, None]
    out = np.full((len(hash_arrays), len(perms[0])), np.iinfo(np.uint32).max, dtype=np.uint32)
    i = 0
    while i < len(hash_arrays):
        # Gather documents until the block is full (always at least one document).
        j, rows = i, 0
        while j < len(hash_arrays) and (j == i or rows + len(hash_arrays[j]) <= _MAX_ROWS):
            rows += len(hash_arrays[j])
            j += 1
        block = [(k, h) for k, h in zip(range(i, j), hash_arrays[i:j]) if len(h)]
        if block:
            hv = _fmix32(np.concatenate([h for _, h in block]))
            offsets = np.cumsum([0] + [len(h) for _, h in block[:-1]])
            # One document larger than a block is folded in chunks.
            for start in range(0, len(hv), _MAX_ROWS):
                # (num_perm, shingles): each permutation's values are contiguous, which makes the
                # per-document minimum (reduceat along the last axis) ~25x faster than row-major.
                # uint32 arithmetic wraps: that is the mod 2^32 of the affine32 scheme.
                phv = a * hv[None, start:start + _MAX_ROWS] + b
                if len(block) == 1:
                    k = block[0][0]
                    out[k] = np.minimum(out[k], phv.min(axis=1))
                else:  # a multi-document block is never larger than one chunk
                    out[[k for k, _ in block]] = np.minimum.reduceat(phv, offsets, axis=1).T
        i = j
    return out


# ---------------------------------------------------------------------------------------------
# The index of kept documents, in memory


class DedupIndex:
    """Everything kept so far: exact-text digests, LSH over signatures, signatures, and ids.

    ``external=False`` keeps the LSH in memory even when ``cfg.storage_config`` names Redis (a
    replayed run derives its output from an earlier state of the index, which only the stored
    signatures still describe).
    """

    def __init__(self, cfg: DedupConfig, external: bool | None = None):
        storage = cfg.storage_config or {"type": "dict"}
        self.external = storage.get("type", "dict") != "dict" if external is None else external
        lsh_kwargs: dict[str, Any] = {"threshold": cfg.threshold, "num_perm": cfg.num_perm,
                                      "weights": tuple(cfg.lsh_weights)}
        if cfg.lsh_params is not None:
            lsh_kwargs["params"] = tuple(cfg.lsh_params)
        if self.external:
            # Keys are bytes, not pickles: what is read back from Redis is never unpickled.
            lsh_kwargs.update(storage_config=storage, prepickle=False)
        self.lsh = MinHashLSH(**lsh_kwargs)
        self.params = {"threshold": cfg.threshold, "num_perm": cfg.num_perm,
                       "shingle": cfg.shingle, "seed": cfg.seed, "verify": cfg.verify,
                       "exact": cfg.exact, "lsh_bands_rows": [self.lsh.b, self.lsh.r],
                       "lsh_storage": storage.get("type", "dict")}
        self.seed = cfg.seed
        self.basename = storage.get("basename")
        self.exact: dict[bytes, str] = {}  # digest of normalized text -> kept id
        self.ids: list[str] = []  # LSH key (int) -> kept id
        self.shingles: list[np.ndarray] = []  # LSH key -> sorted unique shingle hashes ("exact")
        self._sigs = np.empty((1024, cfg.num_perm), dtype=np.uint32)  # grown by doubling

    def _key(self, key: int):
        return str(key).encode("ascii") if self.external else key

    def _lean(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme=_SCHEME)

    def candidates(self, sig: np.ndarray) -> list[int]:
        keys = [int(k) for k in self.lsh.query(self._lean(sig))]
        if any(not 0 <= k < len(self.ids) for k in keys):
            raise LmforgeError(f"LSH storage {self.basename!r} holds keys this index does "
                               "not know: another index wrote to the same basename")
        return keys

    def similarity(self, key: int, sig: np.ndarray, shingles: np.ndarray | None) -> float:
        """Jaccard similarity of a kept document and a new one: exact when shingles are kept."""
        if shingles is not None:
            inter = np.intersect1d(self.shingles[key], shingles, assume_unique=True).size
            return inter / (len(self.shingles[key]) + len(shingles) - inter)
        return float(np.mean(self._sigs[key] == sig))

    def _append(self, doc_id: str, sig: np.ndarray, shingles: np.ndarray | None) -> int:
        key = len(self.ids)
        if key == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[key] = sig
        self.ids.append(doc_id)
        if shingles is not None:
            self.shingles.append(shingles)
        return key

    def add(self, doc_id: str, digest: bytes | None, sig: np.ndarray | None,
            shingles: np.ndarray | None = None) -> None:
        if digest is not None:
            self.exact.setdefault(digest, doc_id)
        if sig is not None:
            key = self._append(doc_id, sig, shingles)
            self.lsh.insert(self._key(key), self._lean(sig), check_duplication=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def signatures(self) -> np.ndarray:
        return self._sigs[: len(self.ids)]

    # -- segments: what one run added -----------------------------------------------------------

    def load_segment(self, seg: "_Segment") -> None:
        """Append a committed segment; the LSH is filled afterwards (``fill_lsh``)."""
        for i, doc_id in enumerate(seg.ids):
            self._append(doc_id, seg.signatures[i],
                         seg.shingles[i] if seg.shingles is not None else None)
        for digest, doc_id in seg.exact:
            self.exact.setdefault(digest, doc_id)

    def fill_lsh(self) -> None:
        """Insert every loaded signature into the in-memory LSH: the buckets datasketch builds
        from the same MinHashes (the signatures are bit-identical).

        In bulk through the LSH's storage API: a band's bucket key is the big-endian bytes of its
        values (datasketch's default hash), computed for all documents at once; ``insert`` per
        document would spend 3x longer re-deriving it. A self-check asks the filled LSH, through
        its public ``query``, for stored documents; should datasketch ever hash bands otherwise,
        the LSH is refilled the slow way.
        """
        sigs, n = self.signatures, len(self.ids)
        if not n:
            return
        width = 4 * self.lsh.r
        bands = [sigs[:, start:end].astype(">u4").tobytes() for start, end in self.lsh.hashranges]
        for table, blob in zip(self.lsh.hashtables, bands):
            for key in range(n):
                table.insert(blob[key * width:(key + 1) * width], key)
        for key in range(n):
            self.lsh.keys.insert(key, *[blob[key * width:(key + 1) * width] for blob in bands])
        if all(key in self.lsh.query(self._lean(sigs[key])) for key in {0, n // 2, n - 1}):
            return
        self.lsh = MinHashLSH(threshold=self.params["threshold"], num_perm=self.lsh.h,
                              params=(self.lsh.b, self.lsh.r))
        for key, sig in enumerate(sigs):
            self.lsh.insert(key, self._lean(sig), check_duplication=False)

    def segment_since(self, n_ids: int, n_exact: int, shingles: bool) -> "_Segment":
        return _Segment(ids=self.ids[n_ids:], signatures=self.signatures[n_ids:].copy(),
                        shingles=self.shingles[n_ids:] if shingles else None,
                        exact=list(itertools.islice(self.exact.items(), n_exact, None)))

    def forget_external(self, first_key: int, end_key: int) -> None:
        """Remove keys [first_key, end_key) from the external LSH storage: those of a run that
        did not commit. Missing keys are skipped."""
        for key in range(first_key, end_key):
            with contextlib.suppress(ValueError):
                self.lsh.remove(self._key(key))


# ---------------------------------------------------------------------------------------------
# The index on disk (format and transactions: see the module docstring)


@dataclass
class _Segment:
    ids: list[str]
    signatures: np.ndarray  # (len(ids), num_perm) uint32
    shingles: list[np.ndarray] | None  # per id, sorted unique uint32 (verify="exact")
    exact: list[tuple[bytes, str]]  # (digest, kept id) first seen in this run


_SEGMENT_FILES = ("documents.parquet", "signatures.npy", "exact.parquet")


class _SegmentEntry(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^\d{6}$")
    input: str = Field(pattern=r"^[0-9a-f]{32}$")  # blake2b-128 of the input file(s)
    output: str  # resolved path of the kept output
    documents: int = Field(ge=0)
    exact: int = Field(ge=0)
    files: dict[Literal["documents.parquet", "signatures.npy", "exact.parquet"],
                str]  # blake2b-128 of each file


class _Manifest(BaseModel, extra="forbid"):
    format: Literal["lmforge-dedup-index"]
    version: int
    params: dict[str, Any]
    segments: list[_SegmentEntry] = []


_PICKLE_MESSAGE = (
    "{path} is a dedup index in the old pickle format, which lmforge no longer reads (loading a "
    "pickle can run code); rebuild it: run lmforge dedup again over the documents it was built "
    "from, oldest first, with --index naming a new directory (the graph rebuilds its per-day "
    "indexes when the days are materialized again)")


def _refuse_non_index(path: Path) -> None:
    """An index is a directory; a file there is an old pickle index or something else, and is
    never read beyond its first byte."""
    if path.is_dir() or not (path.exists() or path.is_symlink()):
        return
    try:
        with open(path, "rb") as f:
            first = f.read(1) if path.is_file() else b""
    except OSError as e:
        raise LmforgeError(f"{path} is not an lmforge dedup index: {e.strerror}") from e
    if first == b"\x80":  # the PROTO opcode that starts every pickle of protocol 2 or later
        raise LmforgeError(_PICKLE_MESSAGE.format(path=path))
    raise LmforgeError(f"{path} is a file, not an lmforge dedup index (a directory that "
                       "lmforge dedup --index made); give a new or existing index directory")


def _damaged(index_dir: Path, what: str) -> LmforgeError:
    return LmforgeError(f"dedup index {index_dir} is damaged or not an lmforge index ({what}); "
                        "restore it, or rebuild it under a new --index directory")


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(index_dir: Path) -> _Manifest | None:
    path = index_dir / _MANIFEST
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        if raw[:1] == b"\x80":
            raise LmforgeError(_PICKLE_MESSAGE.format(path=path))
        manifest = _Manifest.model_validate_json(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "document"
        raise _damaged(index_dir, f"{_MANIFEST}: {where}: {err['msg']}") from None
    except OSError as e:
        raise _damaged(index_dir, f"{_MANIFEST}: {e.strerror or e}") from e
    if manifest.version != INDEX_VERSION:
        raise LmforgeError(f"dedup index {index_dir} has format version {manifest.version}; this "
                           f"lmforge reads version {INDEX_VERSION}: rebuild it or use a matching "
                           "lmforge")
    names = [s.name for s in manifest.segments]
    if names != [f"{i:06d}" for i in range(len(names))]:
        raise _damaged(index_dir, f"{_MANIFEST}: segments are not numbered 000000, 000001, ...")
    return manifest


def _check_params(index_dir: Path, stored: dict[str, Any], index: DedupIndex) -> None:
    if stored == index.params:
        return
    if stored.get("lsh_storage") != index.params["lsh_storage"]:
        if stored.get("lsh_storage") == "dict":
            raise LmforgeError(f"dedup index {index_dir} keeps its LSH in memory (built without "
                               "storage_config): use it without storage_config, or a new index")
        raise LmforgeError(f"dedup index {index_dir} keeps its LSH in external storage "
                           f"({stored.get('lsh_storage')!r}): pass the storage_config that built it")
    raise LmforgeError(f"dedup index {index_dir} was built with {stored}, not {index.params}: "
                       "use the same settings or a new index path")


def _read_segment(index_dir: Path, entry: _SegmentEntry, num_perm: int,
                  with_shingles: bool) -> _Segment:
    seg_dir = index_dir / _SEGMENTS / entry.name
    try:
        if set(entry.files) != set(_SEGMENT_FILES):
            raise _damaged(index_dir, f"segment {entry.name} does not list its files")
        for name, digest in entry.files.items():
            if _file_digest(seg_dir / name) != digest:
                raise _damaged(index_dir, f"{_SEGMENTS}/{entry.name}/{name} does not match its "
                               "checksum in the manifest")
        docs = pq.read_table(seg_dir / "documents.parquet")
        sigs = np.load(seg_dir / "signatures.npy", allow_pickle=False)
        exact = pq.read_table(seg_dir / "exact.parquet")
    except LmforgeError:
        raise
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _damaged(index_dir, f"segment {entry.name}: {e}") from e
    if (sigs.dtype != np.uint32 or sigs.shape != (entry.documents, num_perm)
            or docs.num_rows != entry.documents or exact.num_rows != entry.exact
            or docs.schema.names[:1] != ["id"] or exact.schema.names != ["digest", "id"]
            or with_shingles != ("shingles" in docs.schema.names)):
        raise _damaged(index_dir, f"segment {entry.name} does not have the shape its manifest "
                       "entry and the index settings give")
    shingles = None
    if with_shingles:
        col = docs.column("shingles").combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
        offsets = col.offsets.to_numpy()
        shingles = np.split(values, offsets[1:-1]) if len(offsets) > 1 else []
    return _Segment(ids=docs.column("id").to_pylist(), signatures=sigs, shingles=shingles,
                    exact=list(zip(exact.column("digest").to_pylist(),
                                   exact.column("id").to_pylist())))


def _write_segment(seg_dir: Path, seg: _Segment) -> dict[str, str]:
    """Write a segment's files into the new directory ``seg_dir``; returns their checksums."""
    seg_dir.mkdir()
    columns: dict[str, Any] = {"id": pa.array(seg.ids, pa.string())}
    if seg.shingles is not None:
        lengths = np.fromiter((len(s) for s in seg.shingles), dtype=np.int64, count=len(seg.shingles))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = (np.concatenate(seg.shingles) if seg.shingles else np.empty(0)).astype(np.uint32)
        columns["shingles"] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    pq.write_table(pa.table(columns), seg_dir / "documents.parquet")
    np.save(seg_dir / "signatures.npy", np.ascontiguousarray(seg.signatures, dtype=np.uint32),
            allow_pickle=False)
    pq.write_table(pa.table({"digest": pa.array([d for d, _ in seg.exact], pa.binary(16)),
                             "id": pa.array([i for _, i in seg.exact], pa.string())}),
                   seg_dir / "exact.parquet")
    return {name: _file_digest(seg_dir / name) for name in _SEGMENT_FILES}


def _write_manifest(path: Path, manifest: _Manifest) -> None:
    path.write_text(json.dumps(manifest.model_dump(), indent=1) + "\n")


def _remove_uncommitted_segments(index_dir: Path, manifest: _Manifest | None) -> None:
    """Segments renamed into place by a run killed before its manifest commit: garbage."""
    listed = {s.name for s in manifest.segments} if manifest else set()
    seg_root = index_dir / _SEGMENTS
    sweep_stale(seg_root)
    for p in seg_root.iterdir() if seg_root.is_dir() else ():
        if _SEGMENT_NAME.match(p.name) and p.name not in listed and is_lmforge_output(p):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _writer_lock(index_dir: Path) -> Iterator[dict[str, bool]]:
    """Hold the index's lock (non-blocking: a second writer is refused, not queued) for the
    block. Yields ``{"created": ..., "committed": False}``: a directory this run created is
    removed again when the block fails before the caller sets ``committed``."""
    for _ in range(3):
        created = not index_dir.exists()
        claim_output_dir(index_dir)
        lock_path = index_dir / _LOCK
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot open the lock of dedup index {lock_path}: "
                              f"{e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"cannot lock dedup index {lock_path}: {e.strerror}") from e
            raise LmforgeError(f"dedup index {index_dir} is in use by another run (its lock "
                               f"{lock_path} is held): run one dedup at a time per index") from None
        # A failed first run removes the directory it created: a lock taken on its removed
        # lock file would lock nothing, so take the new one.
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise LmforgeError(f"dedup index {index_dir} keeps being removed by another run")
    state = {"created": created, "committed": False}
    try:
        yield state
    except BaseException:
        if state["created"] and not state["committed"]:
            shutil.rmtree(index_dir, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _input_digest(in_path) -> str:
    """Content hash of the input file(s), in the order they are read."""
    h = hashlib.blake2b(digest_size=16)
    for file in parquet_files(in_path):
        h.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _sync_external(index: DedupIndex, index_dir: Path, manifest: _Manifest | None) -> None:
    """Make the Redis buckets hold exactly the committed keys (0 .. len(index) - 1)."""
    basename = index.basename
    size, n = index.lsh.keys.size(), len(index)
    if manifest is None:
        if size:
            raise LmforgeError(f"LSH storage {basename!r} already holds {size} documents but "
                               f"{index_dir} holds no index: use a new basename or clear it")
        return
    if size > n:  # buckets of a run killed before its commit
        index.forget_external(n, size)
        size = index.lsh.keys.size()
    if size != n:
        raise LmforgeError(f"LSH storage {basename!r} holds {size} documents but {index_dir} "
                           f"holds {n}: they are out of sync (another index wrote to the same "
                           "basename, or the storage was cleared)")


def start_index_from(snapshot: str | os.PathLike | None, index: str | os.PathLike) -> None:
    """Make ``index`` a copy of the committed state of the index ``snapshot`` (or remove it when
    ``snapshot`` is None): how the graph starts each day's index where the day before ended.
    Reading a snapshot needs no lock: committed segments never change and the manifest is
    replaced atomically."""
    index = Path(index)
    _refuse_non_index(index)
    if snapshot is None:
        if index.exists():
            with _writer_lock(index):
                shutil.rmtree(index)
        return
    snapshot = Path(snapshot)
    _refuse_non_index(snapshot)
    manifest = _read_manifest(snapshot) if snapshot.is_dir() else None
    if manifest is None:
        raise LmforgeError(f"{snapshot} is not an lmforge dedup index (no {_MANIFEST})")
    with _writer_lock(index), atomic_path(index, "dir") as tmp:
        (tmp / _SEGMENTS).mkdir(parents=True)
        for s in manifest.segments:
            shutil.copytree(snapshot / _SEGMENTS / s.name, tmp / _SEGMENTS / s.name)
        _write_manifest(tmp / _MANIFEST, manifest)


def _hook(point: str) -> None:
    """Tests only (see the module docstring): stop this process at a named point."""
    want = os.environ.get(_HOOK_ENV)
    if want and want.split(":")[0] == point:
        sig = want.partition(":")[2] or "SIGKILL"
        os.kill(os.getpid(), getattr(signal, sig))


def _hook_on_success(point: str):
    def exit_(exc_type, exc, tb) -> bool:
        if exc_type is None:
            _hook(point)
        return False
    return exit_


# ---------------------------------------------------------------------------------------------
# The stage


def _digest(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def _process_batch(rows: list[dict], cfg: DedupConfig, index: DedupIndex, perms,
                   stats: DedupStats, pairs: list[tuple[str, str, str, float]]
                   ) -> tuple[list[dict], list[dict]]:
    """Decide a batch in input order; returns its (kept, removed) rows."""
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
    # A read error is the input's, never the output's (the caller writes inside atomic_path,
    # which would report an OSError as a problem with the destination).
    try:
        yield from read_parquet_rows(in_path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise LmforgeError(f"cannot read {in_path}: {e}") from None


def _write_error(e: BaseException, path: Path) -> OutputError:
    no_space = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
        "No space left" in str(e)
    if no_space:
        return OutputError(f"no space left on the device writing {path}")
    return OutputError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Report a failed write as a one-line error that names the destination."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise _write_error(e, path) from None


def _close_quietly(writer: pq.ParquetWriter) -> None:
    # On the failure path only: the first error is the one to report, not "closed file".
    if writer.is_open:
        with contextlib.suppress(Exception):
            writer.close()


@dataclass
class _Commit:
    """Where a run that adds to the index commits: the next segment and the new manifest."""
    index_dir: Path
    manifest: _Manifest
    input: str
    output: str

    @property
    def name(self) -> str:
        return f"{len(self.manifest.segments):06d}"


def _run(in_path, out_path: Path, removed_path: Path, schema: pa.Schema,
         removed_schema: pa.Schema, cfg: DedupConfig, index: DedupIndex,
         commit: _Commit | None, stats: DedupStats) -> list[tuple[str, str, str, float]]:
    """Decide every document, then commit: kept, removed, segment, manifest (in this order)."""
    perms = permutations(cfg.num_perm, cfg.seed)
    pairs: list[tuple[str, str, str, float]] = []
    n_ids, n_exact = len(index.ids), len(index.exact)
    try:
        with contextlib.ExitStack() as stack:
            # Entered in reverse commit order: an ExitStack unwinds last-in, first-out.
            if commit:
                manifest_tmp = stack.enter_context(atomic_path(commit.index_dir / _MANIFEST))
                stack.push(_hook_on_success("segment_committed"))
                segment_tmp = stack.enter_context(
                    atomic_path(commit.index_dir / _SEGMENTS / commit.name, "dir"))
                stack.push(_hook_on_success("outputs_committed"))
            removed_tmp = stack.enter_context(atomic_path(removed_path))
            kept_tmp = stack.enter_context(atomic_path(out_path))
            with _writing(out_path):
                kept_w = pq.ParquetWriter(kept_tmp, schema)
            stack.callback(_close_quietly, kept_w)
            with _writing(removed_path):
                removed_w = pq.ParquetWriter(removed_tmp, removed_schema)
            stack.callback(_close_quietly, removed_w)

            def flush(batch: list[dict]) -> None:
                kept, removed = _process_batch(batch, cfg, index, perms, stats, pairs)
                with _writing(out_path):
                    kept_w.write_table(pa.Table.from_pylist(kept, schema=schema))
                with _writing(removed_path):
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
                    _hook("batch")
            if batch:
                flush(batch)
            with _writing(out_path):
                kept_w.close()
            with _writing(removed_path):
                removed_w.close()
            if commit:
                seg = index.segment_since(n_ids, n_exact, cfg.verify == "exact")
                with _writing(commit.index_dir):
                    files = _write_segment(segment_tmp, seg)
                    entry = _SegmentEntry(name=commit.name, input=commit.input,
                                          output=commit.output, documents=len(seg.ids),
                                          exact=len(seg.exact), files=files)
                    manifest = commit.manifest.model_copy(
                        update={"segments": [*commit.manifest.segments, entry]})
                    _write_manifest(manifest_tmp, manifest)
            _hook("prepared")
        if commit:
            _hook("index_committed")
    except BaseException:
        if index.external:  # buckets of this run, which did not commit
            with contextlib.suppress(Exception):
                index.forget_external(n_ids, len(index.ids))
        raise
    return pairs


def _check_config(cfg: DedupConfig) -> None:
    if not 0.0 < cfg.threshold <= 1.0:
        raise LmforgeError(f"threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.shingle < 1 or cfg.num_perm < 2:
        raise LmforgeError("shingle must be >= 1 and num_perm >= 2")
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
    together with the outputs (see the module docstring)."""
    cfg = cfg or DedupConfig()
    _check_config(cfg)
    t0 = time.perf_counter()
    out_path, removed_path = Path(out_path), Path(removed_path)
    if out_path.resolve() == removed_path.resolve():
        raise LmforgeError(f"kept and removed outputs are the same file: {out_path}")
    index_dir = Path(cfg.index_path) if cfg.index_path else None
    if index_dir is not None:
        _refuse_non_index(index_dir)
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
        with _writer_lock(index_dir) as lock:
            _hook("locked")
            manifest = _read_manifest(index_dir)
            index = DedupIndex(cfg)
            if manifest is not None:
                _check_params(index_dir, manifest.params, index)
            try:
                run_input = _input_digest(in_path)
            except OSError as e:
                raise LmforgeError(f"cannot read {in_path}: {e.strerror or e}") from None
            run_output = str(out_path.resolve())
            segments = manifest.segments if manifest else []
            replay = next((i for i, s in enumerate(segments)
                           if (s.input, s.output) == (run_input, run_output)), None)
            if replay is not None:
                # Committed before: derive the output from the index as it was before that run,
                # with an in-memory LSH (Redis buckets already hold that run's documents).
                index = DedupIndex(cfg, external=False)
                segments = segments[:replay]
            _remove_uncommitted_segments(index_dir, manifest)
            for entry in segments:
                index.load_segment(_read_segment(index_dir, entry, cfg.num_perm,
                                                 cfg.verify == "exact"))
            if index.external:
                _sync_external(index, index_dir, manifest)
            else:
                index.fill_lsh()
            if manifest is None:
                manifest = _Manifest(format=INDEX_FORMAT, version=INDEX_VERSION,
                                     params=index.params)
                if index.external:
                    # Claim the Redis basename for this index before writing to it: a run killed
                    # after its first insert must find an index whose buckets it may clean.
                    with _writing(index_dir):
                        with atomic_path(index_dir / _MANIFEST) as tmp:
                            _write_manifest(tmp, manifest)
            commit = None if replay is not None else _Commit(index_dir, manifest, run_input,
                                                             run_output)
            stats = DedupStats(index_documents_before=len(index), replayed=replay is not None,
                               lsh_bands=index.lsh.b, lsh_rows=index.lsh.r)
            pairs = _run(in_path, out_path, removed_path, schema, removed_schema, cfg, index,
                         commit, stats)
            lock["committed"] = True
    stats.index_documents_after = len(index)
    stats.samples = _sample_clusters(in_path, pairs, cfg.sample_clusters)
    stats.seconds = time.perf_counter() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lmforge dedup",
        description="Exact (normalized text) and near-duplicate (MinHash LSH) removal over Parquet "
                    "documents, keeping the first of each group in input order.")
    p.add_argument("input", help="documents Parquet file or directory (columns id, url, text)")
    p.add_argument("output", help="kept documents Parquet file")
    p.add_argument("--removed", help="removed documents Parquet with reason and duplicate_of "
                                     "(default: <OUT stem>.removed.parquet)")
    p.add_argument("--threshold", type=float, default=0.8,
                   help="Jaccard similarity of word shingles at which documents are duplicates")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    p.add_argument("--shingle", type=int, default=5, help="words per shingle")
    p.add_argument("--seed", type=int, default=1, help="MinHash seed")
    p.add_argument("--index", help="persistent index directory: documents kept in earlier runs "
                                   "count as kept, and this run's kept documents are added; a "
                                   "retry of a committed run gives the same output again")
    p.add_argument("--verify", choices=("exact", "estimate", "none"), default="exact",
                   help="confirm LSH candidates by exact Jaccard of shingle sets (default), by the "
                        "MinHash estimate (less memory), or not at all")
    p.add_argument("--batch-rows", type=int, default=2_000,
                   help="documents decided and written at a time (memory vs. progress updates)")
    args = p.parse_args(argv)
    if args.batch_rows < 1:
        p.error("--batch-rows must be at least 1")
    removed = args.removed or removed_path_for(args.output)
    try:
        cfg = DedupConfig(threshold=args.threshold, num_perm=args.num_perm, shingle=args.shingle,
                          seed=args.seed, index_path=args.index, verify=args.verify,
                          batch_rows=args.batch_rows)
        stats = dedup_documents(args.input, args.output, removed, cfg)
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
