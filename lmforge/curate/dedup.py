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
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import BaseModel, Field

from lmforge.curate.text import extend_schema, input_schema, normalize, open_sinks, shingle_hashes
from lmforge.io import atomic_path, read_parquet_rows, removed_path_for

INDEX_FORMAT = 1
_SCHEME = "affine32"  # datasketch 2's default permutation scheme (32-bit values)


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
    # A persistent index file: loaded if it exists, saved after the run with every kept document,
    # so the next batch is deduplicated against everything kept before.
    index_path: str | None = None
    # datasketch storage for the LSH, passed through: {"type": "dict"} (in memory, pickled into
    # index_path) or {"type": "redis", "basename": b"lmforge", "redis": {"host": ..., "port": ...}}.
    # Only the LSH buckets live in Redis: the kept ids, exact-text digests and signatures/shingles
    # stay in index_path, so Redis storage needs index_path and a fixed basename, and runs sharing
    # one basename must run one after the other (each loads the file the previous one saved).
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
# The index of kept documents (in memory, optionally persisted between runs)


class DedupIndex:
    """Everything kept so far: exact-text digests, LSH over signatures, signatures, and ids."""

    def __init__(self, cfg: DedupConfig):
        self.params = {"threshold": cfg.threshold, "num_perm": cfg.num_perm,
                       "shingle": cfg.shingle, "seed": cfg.seed, "verify": cfg.verify}
        lsh_kwargs: dict[str, Any] = {"threshold": cfg.threshold, "num_perm": cfg.num_perm,
                                      "weights": tuple(cfg.lsh_weights)}
        if cfg.lsh_params is not None:
            lsh_kwargs["params"] = tuple(cfg.lsh_params)
        if cfg.storage_config is not None:
            lsh_kwargs["storage_config"] = cfg.storage_config
        self.lsh = MinHashLSH(**lsh_kwargs)
        # LSH buckets outside this process (Redis): not pickled, reopened from storage_config.
        self.external = (cfg.storage_config or {}).get("type", "dict") != "dict"
        self.exact: dict[bytes, str] = {}  # digest of normalized text -> kept id
        self.ids: list[str] = []  # LSH key (int) -> kept id
        self.shingles: list[np.ndarray] = []  # LSH key -> sorted unique shingle hashes ("exact")
        self._sigs = np.empty((1024, cfg.num_perm), dtype=np.uint32)  # grown by doubling

    def similarity(self, key: int, sig: np.ndarray, shingles: np.ndarray | None) -> float:
        """Jaccard similarity of a kept document and a new one: exact when shingles are kept."""
        if shingles is not None:
            inter = np.intersect1d(self.shingles[key], shingles, assume_unique=True).size
            return inter / (len(self.shingles[key]) + len(shingles) - inter)
        return float(np.mean(self._sigs[key] == sig))

    def add(self, doc_id: str, digest: bytes | None, sig: np.ndarray | None,
            shingles: np.ndarray | None = None) -> None:
        if digest is not None:
            self.exact.setdefault(digest, doc_id)
        if sig is not None:
            key = len(self.ids)
            if key == len(self._sigs):
                self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
            self._sigs[key] = sig
            self.ids.append(doc_id)
            if shingles is not None:
                self.shingles.append(shingles)
            self.lsh.insert(key, LeanMinHash(seed=self.params["seed"], hashvalues=sig,
                                             scheme=_SCHEME), check_duplication=False)

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> None:
        state = {"format": INDEX_FORMAT, "params": self.params,
                 "lsh": None if self.external else self.lsh,
                 "exact": self.exact, "ids": self.ids, "shingles": self.shingles, "signatures": self._sigs[: len(self.ids)]}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load_or_create(cls, cfg: DedupConfig) -> "DedupIndex":
        index = cls(cfg)
        if index.external:
            # The LSH keys are positions in this index's id list: Redis buckets without the matching
            # file (or a file without its buckets) would answer with someone else's keys.
            if not cfg.index_path or "basename" not in cfg.storage_config:
                raise ValueError("storage_config of type "
                                 f"{cfg.storage_config['type']!r} holds only the LSH buckets: set "
                                 "index_path (kept ids and signatures live there) and a fixed "
                                 "'basename' in storage_config")
        if not cfg.index_path or not Path(cfg.index_path).exists():
            if index.external and not index.lsh.is_empty():
                raise ValueError(f"LSH storage {cfg.storage_config['basename']!r} already holds "
                                 f"{index.lsh.keys.size()} documents but {cfg.index_path} does not "
                                 "exist: use a new basename or clear it")
            return index
        with open(cfg.index_path, "rb") as f:
            state = pickle.load(f)
        if not isinstance(state, dict) or state.get("format") != INDEX_FORMAT:
            raise ValueError(f"{cfg.index_path} is not an lmforge dedup index (format {INDEX_FORMAT})")
        if state["params"] != index.params:
            raise ValueError(f"dedup index {cfg.index_path} was built with {state['params']}, "
                             f"not {index.params}: use the same settings or a new index path")
        if index.external:
            if index.lsh.keys.size() != len(state["ids"]):
                raise ValueError(f"LSH storage {cfg.storage_config['basename']!r} holds "
                                 f"{index.lsh.keys.size()} documents but {cfg.index_path} holds "
                                 f"{len(state['ids'])}: they are out of sync (another run wrote "
                                 "to the same basename, or the storage was cleared)")
        elif state["lsh"] is None:
            raise ValueError(f"{cfg.index_path} keeps its LSH in external storage: pass the "
                             "storage_config that built it")
        else:
            index.lsh = state["lsh"]
        index.exact, index.ids = state["exact"], state["ids"]
        index.shingles = state["shingles"]
        sigs = state["signatures"]
        index._sigs = np.concatenate([sigs, np.empty((max(len(sigs), 1024), sigs.shape[1]),
                                                     dtype=np.uint32)])
        return index


# ---------------------------------------------------------------------------------------------
# The stage


def _digest(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def _process_batch(rows: list[dict], cfg: DedupConfig, index: DedupIndex,
                   perms, kept_sink, removed_sink, stats: DedupStats,
                   pairs: list[tuple[str, str, str, float]]) -> None:
    texts = [normalize(r["text"] or "") for r in rows]
    # Empty normalized text has no shingles; such documents are only compared exactly.
    hashes = [shingle_hashes(t, cfg.shingle) for t in texts]
    sigs = signatures(hashes, perms)
    for row, text, sig, h in zip(rows, texts, sigs, hashes):
        digest = _digest(text if text else (row["text"] or "").strip())
        if cfg.exact and digest in index.exact:
            kept_id = index.exact[digest]
            stats.exact_removed += 1
            removed_sink.write({**row, "reason": "exact_duplicate", "duplicate_of": kept_id})
            pairs.append(("exact_duplicate", kept_id, row["id"], 1.0))
            continue
        has_shingles = bool(text)
        unique = np.unique(h) if has_shingles and cfg.verify == "exact" else None
        if has_shingles and len(index):
            lean = LeanMinHash(seed=cfg.seed, hashvalues=sig, scheme=_SCHEME)
            best, best_sim = None, -1.0
            for key in index.lsh.query(lean):
                sim = index.similarity(key, sig, unique)
                if sim > best_sim or (sim == best_sim and key < best):
                    best, best_sim = key, sim
            if best is not None and (cfg.verify == "none" or best_sim >= cfg.threshold):
                kept_id = index.ids[best]
                stats.near_removed += 1
                removed_sink.write({**row, "reason": "near_duplicate", "duplicate_of": kept_id})
                pairs.append(("near_duplicate", kept_id, row["id"], best_sim))
                continue
        index.add(row["id"], digest if cfg.exact else None, sig if has_shingles else None, unique)
        kept_sink.write(row)
        stats.kept_documents += 1


def _sample_clusters(in_path, pairs: list[tuple[str, str, str, float]], n: int) -> list[dict]:
    """A few (kept, removed) pairs with text snippets, near duplicates first: the interesting ones."""
    near = [p for p in pairs if p[0] == "near_duplicate"]
    exact = [p for p in pairs if p[0] == "exact_duplicate"]
    chosen = (near[:n] + exact[:n])[:n]
    if not chosen:
        return []
    want = {i for _, kept, removed, _ in chosen for i in (kept, removed)}
    snippets: dict[str, str] = {}
    for row in read_parquet_rows(in_path, columns=["id", "text"]):
        if row["id"] in want and row["id"] not in snippets:
            snippets[row["id"]] = " ".join((row["text"] or "").split())[:160]
    return [{"reason": reason, "similarity": round(sim, 3),
             "kept_id": kept, "kept_text": snippets.get(kept, "(kept in an earlier batch)"),
             "removed_id": removed, "removed_text": snippets.get(removed, "")}
            for reason, kept, removed, sim in chosen]


def dedup_documents(in_path, out_path, removed_path, cfg: DedupConfig | None = None) -> DedupStats:
    """Write the first of every group of duplicates to ``out_path``, the others to
    ``removed_path`` with ``reason`` and ``duplicate_of``. Updates ``cfg.index_path`` if set."""
    cfg = cfg or DedupConfig()
    if not 0.0 < cfg.threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.shingle < 1 or cfg.num_perm < 2:
        raise ValueError("shingle must be >= 1 and num_perm >= 2")
    t0 = time.perf_counter()
    schema = input_schema(in_path)
    if not pa.types.is_string(schema.field("id").type) and not pa.types.is_large_string(
            schema.field("id").type):
        raise ValueError(f"{in_path}: column id must be a string, not {schema.field('id').type}")
    removed_schema = extend_schema(schema, [("reason", pa.string()), ("duplicate_of", pa.string())])
    index = DedupIndex.load_or_create(cfg)
    perms = permutations(cfg.num_perm, cfg.seed)
    stats = DedupStats(index_documents_before=len(index), lsh_bands=index.lsh.b,
                       lsh_rows=index.lsh.r)
    pairs: list[tuple[str, str, str, float]] = []
    with open_sinks(out_path, schema, removed_path, removed_schema) as (kept, removed):
        batch: list[dict] = []
        for row in read_parquet_rows(in_path):
            stats.input_documents += 1
            batch.append(row)
            if len(batch) >= cfg.batch_rows:
                _process_batch(batch, cfg, index, perms, kept, removed, stats, pairs)
                batch = []
                print(f"dedup: {stats.input_documents} documents, {stats.kept_documents} kept",
                      file=sys.stderr)
        if batch:
            _process_batch(batch, cfg, index, perms, kept, removed, stats, pairs)
    if cfg.index_path:
        index.save(cfg.index_path)
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
    p.add_argument("--index", help="persistent index file: documents kept in earlier runs count "
                                   "as kept, and this run's kept documents are added")
    p.add_argument("--verify", choices=("exact", "estimate", "none"), default="exact",
                   help="confirm LSH candidates by exact Jaccard of shingle sets (default), by the "
                        "MinHash estimate (less memory), or not at all")
    args = p.parse_args(argv)
    removed = args.removed or removed_path_for(args.output)
    try:
        cfg = DedupConfig(threshold=args.threshold, num_perm=args.num_perm, shingle=args.shingle,
                          seed=args.seed, index_path=args.index, verify=args.verify)
        stats = dedup_documents(args.input, args.output, removed, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"lmforge dedup: error: {e}", file=sys.stderr)
        return 2
    m = stats.to_metadata()
    print(f"dedup: kept {m['kept_documents']}/{m['input_documents']}; removed "
          f"{m['exact_duplicates_removed']} exact, {m['near_duplicates_removed']} near; "
          f"{m['documents_per_second']} docs/s", file=sys.stderr)
    print(f"kept -> {args.output}\nremoved -> {removed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
