"""Helpers shared by the filter and dedup stages: text normalization, stable vectorized hashing of
word shingles, and a writer that streams kept and removed documents to two Parquet files at once.

Hashes here must be stable across processes and machines (a persistent MinHash index compares
today's documents with last month's), so nothing uses Python's salted ``hash()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.io import atomic_path, parquet_files

# ---------------------------------------------------------------------------------------------
# Normalization

_NON_WORD = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower-cased, NFKC, punctuation replaced by spaces, whitespace collapsed to single spaces.

    Two documents that differ only in case, punctuation or spacing normalize to the same string:
    that is what "exact duplicate" means for dedup, and the word stream shingles are made from.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------
# Shingle hashing, vectorized with numpy.
#
# A word shingle is the byte span from the start of word i to the end of word i+k-1 in the
# normalized text (words are separated by exactly one space there). A polynomial hash over bytes,
# computed mod 2^64 by letting uint64 arithmetic wrap, gives the hash of every span from one
# prefix-sum array: h(s, e) = (H[e] - H[s]) * P^-s. So a document's shingles cost a handful of
# numpy calls instead of one Python hash call per shingle. The odd base P has an inverse mod 2^64.

_P = np.uint64(0x100000001B3)  # the 64-bit FNV prime: odd, so invertible mod 2^64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_pow_cache = {"pw": np.ones(1, dtype=np.uint64), "inv": np.ones(1, dtype=np.uint64)}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^j and P^-j mod 2^64 for j < n (cached, grown by doubling)."""
    pw = _pow_cache["pw"]
    if len(pw) < n:
        size = max(n, 2 * len(pw))
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.concatenate(([np.uint64(1)], np.full(size - 1, _P, np.uint64))),
                            dtype=np.uint64)
            inv = np.cumprod(np.concatenate(([np.uint64(1)], np.full(size - 1, _P_INV, np.uint64))),
                             dtype=np.uint64)
        _pow_cache["pw"], _pow_cache["inv"] = pw, inv
    return _pow_cache["pw"][:n], _pow_cache["inv"][:n]


def _fmix64(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finalizer: spreads the polynomial hash's bits before truncation."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def shingle_hashes(normalized: str, k: int) -> np.ndarray:
    """32-bit hashes of the k-word shingles of a ``normalize``d text (uint32, may repeat).

    A text of fewer than k words is one shingle; an empty text has none.
    """
    if k < 1:
        raise ValueError(f"shingle size must be >= 1, got {k}")
    b = np.frombuffer(normalized.encode("utf-8"), dtype=np.uint8)
    if b.size == 0:
        return np.empty(0, dtype=np.uint32)
    spaces = np.flatnonzero(b == 32)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [b.size]))
    if len(starts) < k:
        starts, ends = starts[:1], ends[-1:]
    else:
        starts, ends = starts[: len(starts) - k + 1], ends[k - 1:]
    pw, inv = _powers(b.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(b.astype(np.uint64) * pw[: b.size],
                                                            dtype=np.uint64)))
        h = (prefix[ends] - prefix[starts]) * inv[starts]
        return (_fmix64(h) >> np.uint64(32)).astype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Two-output Parquet writing: kept rows and removed rows stream to their files in one pass.


def input_schema(path: str | os.PathLike, required: tuple[str, ...] = ("id", "text")) -> pa.Schema:
    """The Arrow schema of a document table, with a clear error when it is not one."""
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"no Parquet files in {path}")
    schema = pq.ParquetFile(files[0]).schema_arrow
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise ValueError(f"{path} is not a document table: missing column(s) {', '.join(missing)}")
    return schema


def extend_schema(schema: pa.Schema, extra: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """``schema`` plus the columns in ``extra`` (replacing any of the same name)."""
    names = {n for n, _ in extra}
    fields = [f for f in schema if f.name not in names]
    return pa.schema(fields + [pa.field(n, t) for n, t in extra])


class ParquetSink:
    """Buffer rows and write them in batches to one Parquet file with a fixed schema."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 5_000):
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows: list[Mapping[str, Any]] = []
        self.count = 0
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, row: Mapping[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []

    def close(self) -> None:
        self.flush()
        self._writer.close()


@contextlib.contextmanager
def open_sinks(kept_path: str | os.PathLike, kept_schema: pa.Schema,
               removed_path: str | os.PathLike, removed_schema: pa.Schema,
               ) -> Iterator[tuple[ParquetSink, ParquetSink]]:
    """Two sinks whose files appear atomically, both or neither, when the block succeeds."""
    if Path(kept_path).resolve() == Path(removed_path).resolve():
        raise ValueError(f"kept and removed outputs are the same file: {kept_path}")
    with atomic_path(kept_path) as kept_tmp, atomic_path(removed_path) as removed_tmp:
        kept = ParquetSink(kept_tmp, kept_schema)
        removed = ParquetSink(removed_tmp, removed_schema)
        try:
            yield kept, removed
        finally:
            kept.close()
            removed.close()
