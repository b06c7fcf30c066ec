"""Helpers shared by the curation stages: text normalization, stable vectorized hashing of word
shingles, a writer that streams kept and removed documents to two Parquet files at once, checks
of input files (one-line errors naming the file), and a fastText model loader that validates the
file before fastText's native loader reads it.

Hashes here must be stable across processes and machines (a persistent MinHash index compares
today's documents with last month's), so nothing uses Python's salted ``hash()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # numpy and pyarrow load where documents are hashed or written
    import numpy as np
    import pyarrow as pa

from lmforge.errors import InputError, LmforgeError, MissingInputError  # noqa: F401
from lmforge.io import atomic_path, check_output, parquet_files


# ---------------------------------------------------------------------------------------------
# Input errors. They are LmforgeErrors (the CLI prints one line and exits 2) and keep the built-in
# type callers caught before (ValueError, FileNotFoundError).


# InputError and MissingInputError (imported above, from lmforge.errors) are what the stages raise.


def check_input_file(path: str | os.PathLike, what: str = "input file",
                     allow_empty: bool = False) -> Path:
    """``path`` as a Path, if it is a regular file (non-empty unless ``allow_empty``); else a
    one-line error naming it."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"{what} not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory; give a file")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a regular file")
    if p.stat().st_size == 0 and not allow_empty:
        raise InputError(f"{what} {p} is empty")
    return p

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

_P = 0x100000001B3  # the 64-bit FNV prime: odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_pow_cache: dict[str, Any] = {}


def hash_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^j and P^-j mod 2^64 for j < n (cached, grown by doubling)."""
    import numpy as np

    if not _pow_cache:
        _pow_cache["pw"] = np.ones(1, dtype=np.uint64)
        _pow_cache["inv"] = np.ones(1, dtype=np.uint64)
    pw = _pow_cache["pw"]
    if len(pw) < n:
        size = max(n, 2 * len(pw))
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.concatenate(([np.uint64(1)], np.full(size - 1, np.uint64(_P), np.uint64))),
                            dtype=np.uint64)
            inv = np.cumprod(np.concatenate(([np.uint64(1)], np.full(size - 1, np.uint64(_P_INV), np.uint64))),
                             dtype=np.uint64)
        _pow_cache["pw"], _pow_cache["inv"] = pw, inv
    return _pow_cache["pw"][:n], _pow_cache["inv"][:n]


def fmix64(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finalizer: spreads the polynomial hash's bits before truncation."""
    import numpy as np

    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def shingle_hashes(normalized: str, k: int) -> np.ndarray:
    """32-bit hashes of the k-word shingles of a ``normalize``d text (uint32, may repeat).

    A text of fewer than k words is one shingle; an empty text has none.
    """
    import numpy as np

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
    pw, inv = hash_powers(b.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(b.astype(np.uint64) * pw[: b.size],
                                                            dtype=np.uint64)))
        h = (prefix[ends] - prefix[starts]) * inv[starts]
        return (fmix64(h) >> np.uint64(32)).astype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Two-output Parquet writing: kept rows and removed rows stream to their files in one pass.


def input_schema(path: str | os.PathLike, required: tuple[str, ...] = ("id", "text")) -> pa.Schema:
    """The Arrow schema of a document table (a Parquet file, or a directory of them), with a
    one-line error naming the file when it is missing, empty, not Parquet or lacks a column.

    Every file's footer is read (cheap), so a bad part of a directory fails here, before any
    output is started, rather than half-way through the stage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"no Parquet file or directory at {p}")
    if not p.is_dir():
        check_input_file(p, "documents file")
    files = parquet_files(p)
    if not files:
        raise MissingInputError(f"no Parquet files in directory {p}")
    schema: pa.Schema | None = None
    for f in files:
        if f.stat().st_size == 0:
            raise InputError(f"{f} is empty, not a Parquet file")
        try:
            file_schema = pq.ParquetFile(f).schema_arrow
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{f} is not a readable Parquet file: {_first_line(e)}") from None
        missing = [c for c in required if c not in file_schema.names]
        if missing:
            raise InputError(f"{f} is not a document table: missing column(s) "
                             f"{', '.join(missing)} (columns: {', '.join(file_schema.names)})")
        schema = schema or file_schema
    assert schema is not None
    return schema


def config_error(e: Exception) -> str:
    """One line for a bad setting: pydantic's errors name the field, others say what they say."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}"
                             for err in errors())
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def extend_schema(schema: pa.Schema, extra: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """``schema`` plus the columns in ``extra`` (replacing any of the same name)."""
    import pyarrow as pa

    names = {n for n, _ in extra}
    fields = [f for f in schema if f.name not in names]
    return pa.schema(fields + [pa.field(n, t) for n, t in extra])


class ParquetSink:
    """Buffer rows and write them in batches to one Parquet file with a fixed schema."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 5_000):
        import pyarrow.parquet as pq

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
            import pyarrow as pa

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
        raise InputError(f"kept and removed outputs are the same file: {kept_path}")
    with atomic_path(kept_path) as kept_tmp, atomic_path(removed_path) as removed_tmp:
        kept = ParquetSink(kept_tmp, kept_schema)
        removed = ParquetSink(removed_tmp, removed_schema)
        try:
            yield kept, removed
        finally:
            kept.close()
            removed.close()


def check_outputs(kept_path: str | os.PathLike, removed_path: str | os.PathLike,
                  inputs: tuple[str | os.PathLike, ...] = ()) -> None:
    """Check, before any work, that a stage's two outputs can be written: neither stands where a
    directory is, neither is an input, they are not one file, the place is writable."""
    kept, removed = Path(kept_path), Path(removed_path)
    if kept.resolve() == removed.resolve():
        raise InputError(f"kept and removed outputs are the same file: {kept}")
    for out in (kept, removed):
        for src in inputs:
            if Path(src).exists() and Path(src).resolve() == out.resolve():
                raise InputError(f"output {out} is the input {src}; give another path")
        check_output(out, "file")


# ---------------------------------------------------------------------------------------------
# fastText models. fastText's native loader trusts the file: a cut-off .ftz segfaults the process
# and random bytes after a valid header make it allocate and loop without end (both measured with
# fasttext-numpy2 0.10.4 and lid.176.ftz). So the file is first walked in Python, field by field,
# as fastText writes it (magic, version, args, dictionary, input matrix, output matrix; dense or
# product-quantized), every count checked against the bytes left and every index against its
# table, and it must end exactly where the last matrix does. A child process then loads it and
# predicts once, so anything the walk cannot see crashes the child, not the stage.

FASTTEXT_MAGIC = 793712314
FASTTEXT_VERSION = 12  # what fastText 0.9+ writes; 11 (older) is read the same way
_validated: dict[tuple[str, int, int], None] = {}


def _fasttext_layout(path: Path, data: bytes) -> str | None:
    """What is wrong with the fastText model bytes ``data``, or None."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise _Cut(pos)
        v = struct.unpack_from(fmt, data, pos)
        pos += size
        return v if len(v) > 1 else v[0]

    def skip(n: int, what: str) -> None:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise _Cut(pos, what)
        pos += n

    try:
        magic, version = take("<ii")
        if magic != FASTTEXT_MAGIC:
            return f"not a fastText model (magic number {magic}, expected {FASTTEXT_MAGIC})"
        if version not in (11, FASTTEXT_VERSION):
            return f"fastText format version {version} is not supported (expected {FASTTEXT_VERSION})"
        (dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn,
         _lr_update, _t) = take("<12id")
        if not (0 < dim <= 10_000 and 1 <= loss <= 4 and 1 <= model <= 3 and bucket >= 0
                and 0 <= minn <= maxn <= 100 and 0 < word_ngrams <= 100):
            return "its settings are out of range (dim, loss, model, bucket, minn/maxn, wordNgrams)"
        size, nwords, nlabels, _ntokens, prune = take("<iiiqq")
        if not (0 <= nwords and 0 <= nlabels and nwords + nlabels == size):
            return f"its dictionary counts do not add up ({nwords} words + {nlabels} labels != {size})"
        if size > len(data) - pos:
            raise _Cut(pos, "dictionary")
        for _ in range(size):
            end = data.find(b"\0", pos)
            if end < 0:
                raise _Cut(pos, "dictionary")
            pos = end + 1
            _count, kind = take("<qb")
            if kind not in (0, 1):
                return f"dictionary entry type {kind} at byte {pos - 1} is not a word or a label"
        pruned = []
        if prune > 0:
            if 8 * prune > len(data) - pos:
                raise _Cut(pos, "pruning index")
            pruned = struct.unpack_from(f"<{2 * prune}i", data, pos)
            pos += 8 * prune
        quant = take("<?")

        def matrix(quantized: bool) -> tuple[int, int]:
            if not quantized:
                m, n = take("<qq")
                if m < 0 or n < 0:
                    return -1, -1
                skip(4 * m * n, "matrix")
                return m, n
            qnorm, m, n, codesize = take("<?qqi")
            if m < 0 or n < 0:
                return -1, -1
            skip(codesize, "quantized codes")
            pq_dim, nsubq, dsub, lastdsub = take("<iiii")
            if pq_dim != n or nsubq <= 0 or dsub <= 0 or codesize != m * nsubq:
                return -1, -1
            skip(4 * pq_dim * 256, "centroids")
            if qnorm:
                skip(m, "norm codes")
                norm_dim, *_ = take("<iiii")
                skip(4 * norm_dim * 256, "norm centroids")
            return m, n

        rows_in, dim_in = matrix(quant)
        if (rows_in, dim_in) == (-1, -1) or dim_in != dim:
            return "its input matrix does not match its settings"
        qout = take("<?")
        rows_out, dim_out = matrix(quant and qout)
        if (rows_out, dim_out) == (-1, -1) or dim_out != dim or rows_out < 1:
            return "its output matrix does not match its settings"
        if prune < 0 and rows_in < nwords + bucket:
            return f"its input matrix has {rows_in} rows, fewer than {nwords} words + {bucket} buckets"
        if prune >= 0 and rows_in < nwords:
            return f"its input matrix has {rows_in} rows, fewer than its {nwords} words"
        if pruned and not all(0 <= v < rows_in for v in pruned[1::2]):
            return "its pruning index points outside its input matrix"
    except _Cut as cut:
        where = f" in its {cut.what}" if cut.what else ""
        return f"cut short{where} (byte {cut.pos} of {len(data)}): the file is incomplete"
    if pos != len(data):
        return f"{len(data) - pos} bytes follow the end of the model: the file is damaged"
    return None


class _Cut(Exception):
    def __init__(self, pos: int, what: str = ""):
        self.pos, self.what = pos, what


_PROBE = """
import sys
import fasttext
model = fasttext.load_model(sys.argv[1])
model.predict("a few words to check the model", k=1)
"""


def validate_fasttext_model(path: str | os.PathLike, what: str = "fastText model") -> Path:
    """Check that ``path`` is a complete fastText model that loads, without risking this process.

    Raises :class:`InputError` (one line, naming the file) for a file that is not one. A file that
    passed is remembered by path, size and modification time, so a process checks it once."""
    p = check_input_file(path, what)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _validated:
        return p
    problem = _fasttext_layout(p, p.read_bytes())
    if problem:
        raise InputError(f"{what} {p}: {problem}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(p)], capture_output=True,
                              text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        raise InputError(f"{what} {p}: fastText did not finish loading it in 300 s; "
                         "the file is damaged") from None
    if proc.returncode != 0:
        if proc.returncode < 0:
            why = f"fastText crashed loading it (signal {-proc.returncode})"
        else:
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise InputError(f"{what} {p}: cannot be loaded: {why}")
    _validated[key] = None
    return p


def load_fasttext_model(path: str | os.PathLike, what: str = "fastText model"):
    """The fastText model at ``path``, validated first (see :func:`validate_fasttext_model`)."""
    p = validate_fasttext_model(path, what)
    import fasttext  # the fasttext-numpy2 distribution; the PyPI `fasttext` breaks on NumPy 2

    try:
        return fasttext.load_model(str(p))
    except (ValueError, RuntimeError, MemoryError) as e:
        raise InputError(f"{what} {p}: cannot be loaded: {_first_line(e)}") from None
