"""The documents dedup has kept so far, in memory: exact-text digests, a datasketch ``MinHashLSH``
over their MinHash signatures, the signatures themselves, the ids, and (``verify="exact"``) each
document's shingle set.

LSH keys are positions in the id list (0, 1, ...). The in-memory LSH is rebuilt from stored
signatures on load (they are datasketch's, bit for bit, so the buckets are the ones datasketch
would build); with Redis ``storage_config`` the buckets stay in Redis, keyed by the LSH key as
decimal bytes, so nothing read back from Redis is ever unpickled. How this state is stored on
disk and committed with each run is :mod:`lmforge.curate.dedup_index`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from lmforge.curate.minhash import SCHEME
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.curate.dedup import DedupConfig


@dataclass
class Segment:
    """What one run added to the index."""
    ids: list[str]
    signatures: np.ndarray  # (len(ids), num_perm) uint32
    shingles: list[np.ndarray] | None  # per id, sorted unique uint32 (verify="exact")
    exact: list[tuple[bytes, str]]  # (digest, kept id) first seen in this run


class DedupIndex:
    """Everything kept so far: exact-text digests, LSH over signatures, signatures, and ids.

    ``external=False`` keeps the LSH in memory even when ``cfg.storage_config`` names Redis (a
    replayed run derives its output from an earlier state of the index, which only the stored
    signatures still describe).
    """

    def __init__(self, cfg: DedupConfig, external: bool | None = None):
        storage = dict(cfg.storage_config or {"type": "dict"})
        if isinstance(storage.get("basename"), str):
            # JSON (the CLI's --storage-config, a config file) has no bytes, and datasketch
            # prefixes its Redis keys with the basename's bytes.
            storage["basename"] = storage["basename"].encode("utf-8")
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
        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme=SCHEME)

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

    def load_segment(self, seg: Segment) -> None:
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

    def segment_since(self, n_ids: int, n_exact: int, shingles: bool) -> Segment:
        return Segment(ids=self.ids[n_ids:], signatures=self.signatures[n_ids:].copy(),
                       shingles=self.shingles[n_ids:] if shingles else None,
                       exact=list(itertools.islice(self.exact.items(), n_exact, None)))

    def forget_external(self, first_key: int, end_key: int) -> None:
        """Remove keys [first_key, end_key) from the external LSH storage: those of a run that
        did not commit. Missing keys are skipped."""
        for key in range(first_key, end_key):
            with contextlib.suppress(ValueError):
                self.lsh.remove(self._key(key))
