"""MinHash LSH by band, with numpy: bucket keys, candidate pairs from one hash range of buckets,
their verification, and the clusters they form.

datasketch's ``MinHashLSH`` cuts a signature into ``b`` bands of ``r`` values and keeps one hash
table per band; two documents are candidates when some band of theirs is equal. Here a band's
bucket is a 64-bit key that mixes in the band's number (one table per band, as datasketch), so the
buckets of all bands can be cut into hash ranges and each range handled by its own task. A key
collision of two unequal bands would make a candidate datasketch never makes: every candidate
pair is confirmed by comparing the two signatures' bands before it is verified, so the candidates
are exactly datasketch's (tests/curate/test_dedup_sharded.py checks it against ``MinHashLSH``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lmforge.curate.text import fmix64

if TYPE_CHECKING:
    from lmforge.curate.dedup import DedupConfig

_P = np.uint64(0x100000001B3)  # the 64-bit FNV prime
_BAND_SEED = np.uint64(0x9E3779B97F4A7C15)


def banding(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows): the banding datasketch chooses for the threshold and weights, or
    ``cfg.lsh_params``."""
    from datasketch import MinHashLSH

    kwargs = {"threshold": cfg.threshold, "num_perm": cfg.num_perm,
              "weights": tuple(cfg.lsh_weights)}
    if cfg.lsh_params is not None:
        kwargs["params"] = tuple(cfg.lsh_params)
    lsh = MinHashLSH(**kwargs)
    return lsh.b, lsh.r


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) uint64: the bucket key of each band of each signature."""
    n = len(sigs)
    out = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(n, fmix64(np.array([j + 1], np.uint64) * _BAND_SEED)[0], np.uint64)
            for c in range(j * rows, (j + 1) * rows):
                h = fmix64(h * _P + sigs[:, c].astype(np.uint64))
            out[:, j] = h
    return out


def hash_range(p: int, parts: int) -> tuple[int, int]:
    """The p-th of ``parts`` equal ranges of 64-bit hashes: [lo, hi), hi up to 2**64."""
    return (p << 64) // parts, ((p + 1) << 64) // parts


def candidate_pairs(keys: np.ndarray, members: np.ndarray, first_new: int) -> np.ndarray:
    """The (earlier, later) pairs of members that share a bucket, where the later one is new
    (a member >= ``first_new``: documents of this run; older members are already in the index,
    and pairs among them were decided before). Members are global keys in (day, order) order.
    Returns unique pairs, (n, 2) int64, sorted."""
    if len(keys) < 2:
        return np.empty((0, 2), np.int64)
    order = np.lexsort((members, keys))
    keys, members = keys[order], members[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.concatenate((starts, [len(keys)])))
    two = starts[sizes == 2]  # most buckets that hold two or more hold two: at once
    pairs = [np.stack((members[two], members[two + 1]), axis=1)]
    for s, m in zip(starts[sizes > 2], sizes[sizes > 2]):
        group = members[s:s + m]  # ascending
        i, j = np.triu_indices(m, k=1)
        pairs.append(np.stack((group[i], group[j]), axis=1))
    pairs = [p[p[:, 1] >= first_new] for p in pairs]
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def share_band(a: np.ndarray, b: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Per pair of signature rows: some band is equal (datasketch would make them candidates)."""
    width = bands * rows
    same = (a[:, :width] == b[:, :width]).reshape(len(a), bands, rows)
    return same.all(axis=2).any(axis=1)


def estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair: the MinHash estimate of Jaccard similarity (the fraction of equal values)."""
    return (a == b).mean(axis=1)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle-hash arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (len(a) + len(b) - inter)


class UnionFind:
    """Clusters of documents joined by verified pairs (path halving, union by size)."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size.get(ra, 1) < self.size.get(rb, 1):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] = self.size.get(ra, 1) + self.size.get(rb, 1)

    def clusters(self) -> list[list[int]]:
        """Every cluster of two or more members, each sorted, in order of its first member."""
        groups: dict[int, list[int]] = {}
        for x in self.parent:
            groups.setdefault(self.find(x), []).append(x)
        return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


@dataclass
class Decisions:
    reason: np.ndarray  # per document of the day: 0 kept, 1 exact duplicate, 2 near duplicate
    duplicate_of: np.ndarray  # global key of the kept document it repeats, or -1
    similarity: np.ndarray
    clusters: list[list[int]]


def decide(first_new: int, first: np.ndarray, holder: np.ndarray, has_shingles: np.ndarray,
           pairs: np.ndarray, sims: np.ndarray, exact: bool) -> Decisions:
    """Keep-first over the verified pairs, in (day, order): what visiting the documents one by
    one with an LSH of the kept ones decides.

    ``first[t]`` is the first document of the day with t's normalized text, ``holder[t]`` the
    earliest kept document of an earlier day with it (or -1). Only the first of each text takes
    part in the buckets: a later copy has its signature, hence its candidates (and the first
    itself, at similarity 1), and is never kept, so pairs with it would change nothing. Only
    documents in a cluster or with a copy before them can be removed; the others are kept
    without a look."""
    n = len(first)
    reason = np.zeros(n, np.int8)
    dup = np.full(n, -1, np.int64)
    sim = np.zeros(n, np.float64)
    uf = UnionFind()
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for (x, y), s in zip(pairs.tolist(), sims.tolist()):
        uf.union(x, y)
        neighbours.setdefault(y - first_new, []).append((x, s))
        if x >= first_new:
            neighbours.setdefault(x - first_new, []).append((y, s))
    todo = set(np.flatnonzero(first != np.arange(n)).tolist()) | set(neighbours)
    if exact:
        todo |= set(np.flatnonzero(holder >= 0).tolist())
    for t in sorted(todo):
        f, me = int(first[t]), first_new + t
        if exact and holder[t] >= 0:
            reason[t], dup[t], sim[t] = 1, holder[t], 1.0
        elif exact and f != t and reason[f] == 0:
            reason[t], dup[t], sim[t] = 1, first_new + f, 1.0
        elif has_shingles[t]:
            best, best_sim = -1, -1.0
            options = neighbours.get(f, [])
            if f != t:
                options = [*options, (first_new + f, 1.0)]
            for x, s in options:
                if x >= me or (x >= first_new and reason[x - first_new] != 0):
                    continue  # later, or not kept: not in the LSH when t is visited
                if s > best_sim or (s == best_sim and x < best):
                    best, best_sim = x, s
            if best >= 0:
                reason[t], dup[t], sim[t] = 2, best, best_sim
    return Decisions(reason, dup, sim, uf.clusters())
