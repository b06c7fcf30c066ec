"""MinHash signatures of many documents at once, bit-for-bit datasketch's.

Shingles are hashed by a vectorized polynomial hash (``text.shingle_hashes``) rather than SHA-1
per shingle, and the permutations are datasketch's own (same seed, same ``affine32`` scheme), so a
signature here is the one ``datasketch.MinHash(num_perm, seed).update_batch(shingle_hashes)``
gives with an identity hash function (tests/curate/test_dedup.py checks this). That is what lets
the dedup index feed these signatures to datasketch's ``MinHashLSH`` as ``LeanMinHash`` objects.
"""

from __future__ import annotations

import numpy as np

SCHEME = "affine32"  # datasketch 2's default permutation scheme (32-bit values)

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
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
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
