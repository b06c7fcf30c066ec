"""The dedup index on disk: one append-only segment per day (or per run), data only.

A day is deduplicated against the segments of every earlier day, read in place (memory-mapped,
and only the hash ranges a task needs), never copied; it writes one new segment, its own. So the
index grows with the documents kept, not with days x index, and a day materialized again replaces
its own segment and nothing else::

    DIR/.lmforge-output              lmforge made this directory
    DIR/.lock                        flock'ed by the run that writes a segment
    DIR/<name>/                      one segment: the documents one day kept, in their order
        manifest.json                  format, settings, counts, the run's input hash and output
        ids.parquet                    id of each kept document (row r = the segment's row r)
        signatures.npy                 (documents, num_perm) uint32 MinHash signatures
        bands.npy                      (entries, 2) uint64 [band key, row], sorted by band key
        exact.npy                      (entries, 3) uint64 [digest hi, digest lo, row], sorted
        shingles.npy, shingle_offsets.npy   sorted unique shingle hashes per row (verify="exact")

Segments are ordered by name (days ``YYYY-MM-DD``, or ``000000``, ``000001``, ... for runs that
name none). A segment is written to a temporary directory, its manifest last, and renamed into
place: a directory named like a segment always holds a whole one. Every ``.npy`` is read with
``allow_pickle=False`` and checked against the manifest's dtype and shape, so a planted or garbled
file is a one-line :class:`LmforgeError`, never run. The index of lmforge versions before segments
(one directory with a ``manifest.json`` of format ``lmforge-dedup-index``, or a pickle) is
refused with how to rebuild it.

For the tests only: ``LMFORGE_DEDUP_SIGNAL_AT=POINT[:SIGNAL]`` makes the run send itself SIGNAL
(default SIGKILL) at POINT - ``locked``, ``sign_shard`` (in a signature task, half-way:
a worker's death), ``signatures`` (after the signature round),
``prepared`` (outputs and segment written to temporaries), ``outputs_committed`` or
``index_committed`` (the segment renamed into place) - so a test can kill -9 (or SIGSTOP) a run at
an exact moment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from lmforge.errors import LmforgeError, OutputError
from lmforge.io import claim_output_dir

SEGMENT_FORMAT = "lmforge-dedup-segment"
SEGMENT_VERSION = 1
MANIFEST, LOCK = "manifest.json", ".lock"
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
AUTO_NAME = re.compile(r"^\d{6}$")
HOOK_ENV, HOOK_ONCE_ENV = "LMFORGE_DEDUP_SIGNAL_AT", "LMFORGE_DEDUP_SIGNAL_ONCE"


class SegmentManifest(BaseModel, extra="forbid"):
    format: Literal["lmforge-dedup-segment"]
    version: int
    name: str = Field(pattern=SEGMENT_NAME.pattern)
    params: dict[str, Any]
    input: str = Field(pattern=r"^[0-9a-f]{32}$")  # blake2b-128 of the input file(s)
    output: str  # resolved path of the kept output
    documents: int = Field(ge=0)
    band_entries: int = Field(ge=0)
    exact_entries: int = Field(ge=0)
    shingle_values: int = Field(ge=0)


_PICKLE_MESSAGE = (
    "{path} is a dedup index in the old pickle format, which lmforge no longer reads (loading a "
    "pickle can run code); rebuild it: run lmforge dedup again over the documents it was built "
    "from, oldest first, with --index naming a new directory")
_OLD_FORMAT_MESSAGE = (
    "{path} is a dedup index of an older lmforge (one whole index per day, format "
    "lmforge-dedup-index); this lmforge keeps one segment per day: remove it (the graph: the "
    "dedup asset's index directory) and materialize the days again, oldest first")


def refuse_non_index(path: Path) -> None:
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


def damaged(where: Path, what: str) -> LmforgeError:
    return LmforgeError(f"dedup index segment {where} is damaged or not an lmforge segment "
                        f"({what}); restore it, or remove it and materialize its day again")


def _write_error(e: BaseException, path: Path) -> OutputError:
    # numpy's tofile reports a short write ("N requested and M written") without an errno.
    short = "requested and" in str(e) and "written" in str(e)
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e) \
            or short:
        return OutputError(f"no space left on the device writing {path}")
    return OutputError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report a failed write as a one-line error that names the destination."""
    import pyarrow as pa

    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise _write_error(e, path) from None


def save_npy(path: Path, array: np.ndarray) -> None:
    with writing(path):
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# Reading segments


def _read_manifest(seg_dir: Path) -> SegmentManifest:
    path = seg_dir / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise damaged(seg_dir, f"{MANIFEST}: {e.strerror or e}") from None
    if raw[:1] == b"\x80":
        raise LmforgeError(_PICKLE_MESSAGE.format(path=path))
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise damaged(seg_dir, f"{MANIFEST} is not JSON") from None
    if isinstance(data, dict) and data.get("format") == "lmforge-dedup-index":
        raise LmforgeError(_OLD_FORMAT_MESSAGE.format(path=seg_dir))
    try:
        manifest = SegmentManifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "document"
        raise damaged(seg_dir, f"{MANIFEST}: {where}: {err['msg']}") from None
    if manifest.version != SEGMENT_VERSION:
        raise LmforgeError(f"dedup index segment {seg_dir} has format version "
                           f"{manifest.version}; this lmforge reads version {SEGMENT_VERSION}: "
                           "rebuild the index or use a matching lmforge")
    if manifest.name != seg_dir.name:
        raise damaged(seg_dir, f"its manifest names segment {manifest.name!r}")
    return manifest


@dataclass(frozen=True)
class SegmentRef:
    """A committed segment, as a task needs to find it: picklable, no open files."""
    path: Path
    name: str
    base: int  # the global key of its row 0 (rows of earlier segments come first)
    documents: int
    band_entries: int
    exact_entries: int
    shingle_values: int
    num_perm: int
    output: str
    input: str


class Segment:
    """A committed segment's arrays, memory-mapped on first use and checked against its manifest."""

    def __init__(self, ref: SegmentRef):
        self.ref = ref

    def _npy(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.ref.path / name
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise damaged(self.ref.path, f"{name}: {' '.join(str(e).split()) or type(e).__name__}"
                          ) from None
        if arr.dtype != np.dtype(dtype) or arr.shape != shape:
            raise damaged(self.ref.path, f"{name} is {arr.dtype} {arr.shape}, the manifest says "
                          f"{dtype} {shape}")
        return arr

    @cached_property
    def signatures(self) -> np.ndarray:
        return self._npy("signatures.npy", "uint32", (self.ref.documents, self.ref.num_perm))

    @cached_property
    def bands(self) -> np.ndarray:
        return self._npy("bands.npy", "uint64", (self.ref.band_entries, 2))

    @cached_property
    def exact(self) -> np.ndarray:
        return self._npy("exact.npy", "uint64", (self.ref.exact_entries, 3))

    @cached_property
    def shingle_values(self) -> np.ndarray:
        return self._npy("shingles.npy", "uint32", (self.ref.shingle_values,))

    @cached_property
    def shingle_offsets(self) -> np.ndarray:
        return self._npy("shingle_offsets.npy", "uint64", (self.ref.documents + 1,))

    def rows(self, table: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """The entries of a sorted ``bands`` or ``exact`` table whose first column is in
        [lo, hi), with their rows checked (a row outside the segment is damage)."""
        part = range_of(table, lo, hi)
        if len(part) and int(part[:, -1].max()) >= self.ref.documents:
            raise damaged(self.ref.path, "an entry names a row the segment does not have")
        if len(part) > 1 and bool(np.any(part[1:, 0] < part[:-1, 0])):
            raise damaged(self.ref.path, "its hash table is not sorted")
        return part

    def ids(self, rows: list[int]) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.ref.path / "ids.parquet", columns=["id"])
        except (OSError, pa.ArrowException, KeyError) as e:
            raise damaged(self.ref.path, f"ids.parquet: {' '.join(str(e).split())[:200]}"
                          ) from None
        if table.num_rows != self.ref.documents:
            raise damaged(self.ref.path, f"ids.parquet has {table.num_rows} rows, the manifest "
                          f"says {self.ref.documents}")
        column = table.column("id")
        return [column[r].as_py() for r in rows]


def range_of(table: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows of ``table`` (sorted by its first column, uint64) whose first column is in [lo, hi);
    ``hi`` of 2**64 means no upper bound. Two binary searches: a memory-mapped table is read
    only where the range lies."""
    key = table[:, 0]
    start = int(np.searchsorted(key, np.uint64(lo), side="left"))
    end = len(key) if hi >= 1 << 64 else int(np.searchsorted(key, np.uint64(hi), side="left"))
    return np.asarray(table[start:end])


def check_params(seg_dir: Path, stored: dict[str, Any], params: dict[str, Any]) -> None:
    if stored != params:
        raise LmforgeError(f"dedup index segment {seg_dir} was built with {stored}, not {params}: "
                           "use the same settings or a new index path")


def committed_segments(index_dir: Path, params: dict[str, Any]) -> list[tuple[SegmentManifest, Path]]:
    """Every committed segment of the index, in name order, checked against ``params``."""
    if (index_dir / MANIFEST).exists():  # the whole-index format of lmforge before segments
        raise LmforgeError(_OLD_FORMAT_MESSAGE.format(path=index_dir))
    found = []
    for p in sorted(index_dir.iterdir()) if index_dir.is_dir() else ():
        if p.name.startswith("."):
            continue
        if p.suffix == ".pkl" or not p.is_dir():
            refuse_non_index(p)
        if not SEGMENT_NAME.match(p.name):
            raise LmforgeError(f"{p} is not a dedup index segment (names are days or six-digit "
                               "numbers); remove it")
        manifest = _read_manifest(p)
        check_params(p, manifest.params, params)
        found.append((manifest, p))
    return found


def segment_refs(entries: list[tuple[SegmentManifest, Path]]) -> list[SegmentRef]:
    refs, base = [], 0
    for m, p in entries:
        refs.append(SegmentRef(path=p, name=m.name, base=base, documents=m.documents,
                               band_entries=m.band_entries, exact_entries=m.exact_entries,
                               shingle_values=m.shingle_values,
                               num_perm=int(m.params["num_perm"]), output=m.output,
                               input=m.input))
        base += m.documents
    return refs


# ---------------------------------------------------------------------------------------------
# Writing a segment


def write_segment(seg_dir: Path, *, name: str, params: dict[str, Any], input_digest: str,
                  output: str, ids: list[str], signatures: np.ndarray, bands: np.ndarray,
                  exact: np.ndarray, shingles: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Fill the new directory ``seg_dir`` with a segment; the manifest is written last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seg_dir.mkdir()
    with writing(seg_dir):
        pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), seg_dir / "ids.parquet")
    save_npy(seg_dir / "signatures.npy", signatures.astype(np.uint32, copy=False))
    save_npy(seg_dir / "bands.npy", bands.astype(np.uint64, copy=False))
    save_npy(seg_dir / "exact.npy", exact.astype(np.uint64, copy=False))
    values = 0
    if shingles is not None:
        save_npy(seg_dir / "shingles.npy", shingles[0].astype(np.uint32, copy=False))
        save_npy(seg_dir / "shingle_offsets.npy", shingles[1].astype(np.uint64, copy=False))
        values = len(shingles[0])
    manifest = SegmentManifest(
        format=SEGMENT_FORMAT, version=SEGMENT_VERSION, name=name, params=params,
        input=input_digest, output=output, documents=len(ids), band_entries=len(bands),
        exact_entries=len(exact), shingle_values=values)
    with writing(seg_dir):
        (seg_dir / MANIFEST).write_text(json.dumps(manifest.model_dump(), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# The writer's lock


@contextlib.contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """Hold the index's lock for the block (non-blocking: a second writer is refused, not
    queued). Readers need none: a committed segment is only ever replaced whole, by a rename."""
    claim_output_dir(index_dir)
    lock_path = index_dir / LOCK
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot open the lock of dedup index {lock_path}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"cannot lock dedup index {lock_path}: {e.strerror}") from e
            raise LmforgeError(f"dedup index {index_dir} is in use by another run (its lock "
                               f"{lock_path} is held): run one dedup at a time per index") from None
        yield
    finally:
        os.close(fd)


def hook(point: str) -> None:
    """Tests only (see the module docstring): stop this process at a named point (only the
    first process to get there, when ``LMFORGE_DEDUP_SIGNAL_ONCE`` names a file to create)."""
    want = os.environ.get(HOOK_ENV)
    if want and want.split(":")[0] == point:
        once = os.environ.get(HOOK_ONCE_ENV)
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                return
        sig = want.partition(":")[2] or "SIGKILL"
        os.kill(os.getpid(), getattr(signal, sig))


def input_digest(in_path) -> str:
    """Content hash of the input file(s), in the order they are read: with the output's path,
    the name of a run (a retry of a committed run is found by it)."""
    import hashlib

    from lmforge.io import parquet_files

    h = hashlib.blake2b(digest_size=16)
    for file in parquet_files(in_path):
        h.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
