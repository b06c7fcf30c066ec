"""The persistent dedup index on disk (``lmforge dedup --index DIR``), and the transaction that
commits each run's kept documents to it together with the run's outputs.

The index is data only, never a pickle (an index may sit in a shared artifact store, and nothing
read from there may run code)::

    DIR/.lmforge-output           lmforge made this directory
    DIR/manifest.json             format, the settings that built it, the committed runs in order
    DIR/lock                      flock'ed by the run that writes the index
    DIR/segments/000000/          the documents one run kept, in LSH key order:
        documents.parquet           id, and (verify="exact") the sorted unique shingle hashes
        signatures.npy              (documents, num_perm) uint32, read with allow_pickle=False
        exact.parquet               digest of normalized text -> kept id (exact=True)

On load the segments are appended to a :class:`~lmforge.curate.dedup_lsh.DedupIndex`, whose
in-memory LSH is rebuilt from the stored signatures; with Redis ``storage_config`` the buckets
stay in Redis. An old pickle index is refused with a message saying how to rebuild it; it is never
unpickled. Anything else that is not a well-formed index (a garbled manifest, a segment whose
checksum does not match) is a one-line :class:`LmforgeError`.

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

Steps 1 and 2 are :func:`open_run`; step 3 is the run (``lmforge.curate.dedup``) writing its
outputs between :meth:`Commit.begin` and :meth:`Commit.prepare`, which stage the index's
temporaries so that they are renamed after the outputs'.

For the tests only: ``LMFORGE_DEDUP_SIGNAL_AT=POINT[:SIGNAL]`` makes the run send itself SIGNAL
(default SIGKILL) when it reaches POINT - ``locked``, ``batch`` (after the first batch),
``prepared`` (all temporaries written), ``outputs_committed``, ``segment_committed`` or
``index_committed`` - so a test can kill -9 (or SIGSTOP) a run at an exact moment of its commit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

from lmforge.curate.dedup_lsh import DedupIndex, Segment
from lmforge.errors import LmforgeError, OutputError
from lmforge.io import (atomic_path, claim_output_dir, is_lmforge_output, parquet_files,
                        sweep_stale)

if TYPE_CHECKING:
    from lmforge.curate.dedup import DedupConfig

INDEX_FORMAT = "lmforge-dedup-index"
INDEX_VERSION = 2
MANIFEST, _LOCK, SEGMENTS = "manifest.json", "lock", "segments"
_SEGMENT_NAME = re.compile(r"^\d{6}$")
_SEGMENT_FILES = ("documents.parquet", "signatures.npy", "exact.parquet")
HOOK_ENV = "LMFORGE_DEDUP_SIGNAL_AT"


class SegmentEntry(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^\d{6}$")
    input: str = Field(pattern=r"^[0-9a-f]{32}$")  # blake2b-128 of the input file(s)
    output: str  # resolved path of the kept output
    documents: int = Field(ge=0)
    exact: int = Field(ge=0)
    files: dict[Literal["documents.parquet", "signatures.npy", "exact.parquet"],
                str]  # blake2b-128 of each file


class Manifest(BaseModel, extra="forbid"):
    format: Literal["lmforge-dedup-index"]
    version: int
    params: dict[str, Any]
    segments: list[SegmentEntry] = []


# ---------------------------------------------------------------------------------------------
# Reading and writing the files


_PICKLE_MESSAGE = (
    "{path} is a dedup index in the old pickle format, which lmforge no longer reads (loading a "
    "pickle can run code); rebuild it: run lmforge dedup again over the documents it was built "
    "from, oldest first, with --index naming a new directory (the graph rebuilds its per-day "
    "indexes when the days are materialized again)")


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


def _damaged(index_dir: Path, what: str) -> LmforgeError:
    return LmforgeError(f"dedup index {index_dir} is damaged or not an lmforge index ({what}); "
                        "restore it, or rebuild it under a new --index directory")


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_digest(in_path) -> str:
    """Content hash of the input file(s), in the order they are read."""
    h = hashlib.blake2b(digest_size=16)
    for file in parquet_files(in_path):
        h.update(file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_manifest(index_dir: Path) -> Manifest | None:
    path = index_dir / MANIFEST
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        if raw[:1] == b"\x80":
            raise LmforgeError(_PICKLE_MESSAGE.format(path=path))
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "document"
        raise _damaged(index_dir, f"{MANIFEST}: {where}: {err['msg']}") from None
    except OSError as e:
        raise _damaged(index_dir, f"{MANIFEST}: {e.strerror or e}") from e
    if manifest.version != INDEX_VERSION:
        raise LmforgeError(f"dedup index {index_dir} has format version {manifest.version}; this "
                           f"lmforge reads version {INDEX_VERSION}: rebuild it or use a matching "
                           "lmforge")
    names = [s.name for s in manifest.segments]
    if names != [f"{i:06d}" for i in range(len(names))]:
        raise _damaged(index_dir, f"{MANIFEST}: segments are not numbered 000000, 000001, ...")
    return manifest


def _write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.model_dump(), indent=1) + "\n")


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


def read_segment(index_dir: Path, entry: SegmentEntry, num_perm: int,
                 with_shingles: bool) -> Segment:
    seg_dir = index_dir / SEGMENTS / entry.name
    try:
        if set(entry.files) != set(_SEGMENT_FILES):
            raise _damaged(index_dir, f"segment {entry.name} does not list its files")
        for name, digest in entry.files.items():
            if file_digest(seg_dir / name) != digest:
                raise _damaged(index_dir, f"{SEGMENTS}/{entry.name}/{name} does not match its "
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
    return Segment(ids=docs.column("id").to_pylist(), signatures=sigs, shingles=shingles,
                   exact=list(zip(exact.column("digest").to_pylist(),
                                  exact.column("id").to_pylist())))


def _write_segment(seg_dir: Path, seg: Segment) -> dict[str, str]:
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
    return {name: file_digest(seg_dir / name) for name in _SEGMENT_FILES}


def _remove_uncommitted_segments(index_dir: Path, manifest: Manifest | None) -> None:
    """Segments renamed into place by a run killed before its manifest commit: garbage."""
    listed = {s.name for s in manifest.segments} if manifest else set()
    seg_root = index_dir / SEGMENTS
    sweep_stale(seg_root)
    for p in seg_root.iterdir() if seg_root.is_dir() else ():
        if _SEGMENT_NAME.match(p.name) and p.name not in listed and is_lmforge_output(p):
            shutil.rmtree(p, ignore_errors=True)


def _write_error(e: BaseException, path: Path) -> OutputError:
    no_space = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
        "No space left" in str(e)
    if no_space:
        return OutputError(f"no space left on the device writing {path}")
    return OutputError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report a failed write as a one-line error that names the destination."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise _write_error(e, path) from None


# ---------------------------------------------------------------------------------------------
# The transaction (see the module docstring)


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


def _sync_external(index: DedupIndex, index_dir: Path, manifest: Manifest | None) -> None:
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


@dataclass
class Commit:
    """Where a run that adds to the index commits: the next segment and the new manifest."""
    index_dir: Path
    manifest: Manifest
    input: str
    output: str
    _manifest_tmp: Path | None = None
    _segment_tmp: Path | None = None

    @property
    def name(self) -> str:
        return f"{len(self.manifest.segments):06d}"

    def begin(self, stack: contextlib.ExitStack) -> None:
        """Stage the manifest's and the segment's temporaries on ``stack`` before the run enters
        its outputs': an ExitStack unwinds last-in, first-out, so on success the outputs are
        renamed first, then the segment, then the manifest (the commit); on failure all go."""
        self._manifest_tmp = stack.enter_context(atomic_path(self.index_dir / MANIFEST))
        stack.push(_hook_on_success("segment_committed"))
        self._segment_tmp = stack.enter_context(
            atomic_path(self.index_dir / SEGMENTS / self.name, "dir"))
        stack.push(_hook_on_success("outputs_committed"))

    def prepare(self, seg: Segment) -> None:
        """Write the run's segment and the manifest that lists it to their temporaries."""
        assert self._manifest_tmp is not None and self._segment_tmp is not None
        with writing(self.index_dir):
            files = _write_segment(self._segment_tmp, seg)
            entry = SegmentEntry(name=self.name, input=self.input, output=self.output,
                                 documents=len(seg.ids), exact=len(seg.exact), files=files)
            manifest = self.manifest.model_copy(
                update={"segments": [*self.manifest.segments, entry]})
            _write_manifest(self._manifest_tmp, manifest)


@dataclass
class Run:
    """A locked index, loaded as this run must see it; ``commit`` is None for a replayed run."""
    index: DedupIndex
    commit: Commit | None

    @property
    def replayed(self) -> bool:
        return self.commit is None


@contextlib.contextmanager
def open_run(index_dir: Path, cfg: DedupConfig, in_path, out_path: Path) -> Iterator[Run]:
    """Steps 1 and 2 of the transaction: lock the index, and load it as of this run (the whole
    index for a new run, the state before it for a committed one). The block writes the outputs
    and stages the commit (``Run.commit``); a block that fails leaves the index as it was, and
    removes the Redis buckets it wrote."""
    with _writer_lock(index_dir) as lock:
        hook("locked")
        manifest = read_manifest(index_dir)
        index = DedupIndex(cfg)
        if manifest is not None:
            _check_params(index_dir, manifest.params, index)
        try:
            run_input = input_digest(in_path)
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
            index.load_segment(read_segment(index_dir, entry, cfg.num_perm,
                                            cfg.verify == "exact"))
        if index.external:
            _sync_external(index, index_dir, manifest)
        else:
            index.fill_lsh()
        if manifest is None:
            manifest = Manifest(format=INDEX_FORMAT, version=INDEX_VERSION, params=index.params)
            if index.external:
                # Claim the Redis basename for this index before writing to it: a run killed
                # after its first insert must find an index whose buckets it may clean.
                with writing(index_dir):
                    with atomic_path(index_dir / MANIFEST) as tmp:
                        _write_manifest(tmp, manifest)
        commit = None if replay is not None else Commit(index_dir, manifest, run_input,
                                                        run_output)
        committed = len(index)
        try:
            yield Run(index, commit)
        except BaseException:
            if index.external:  # buckets of this run, which did not commit
                with contextlib.suppress(Exception):
                    index.forget_external(committed, len(index))
            raise
        # Committed (the manifest is in place): a signal from here on must not undo the index.
        lock["committed"] = True
        if commit:
            hook("index_committed")


def start_index_from(snapshot: str | os.PathLike | None, index: str | os.PathLike) -> None:
    """Make ``index`` a copy of the committed state of the index ``snapshot`` (or remove it when
    ``snapshot`` is None): how the graph starts each day's index where the day before ended.
    Reading a snapshot needs no lock: committed segments never change and the manifest is
    replaced atomically."""
    index = Path(index)
    refuse_non_index(index)
    if snapshot is None:
        if index.exists():
            with _writer_lock(index):
                shutil.rmtree(index)
        return
    snapshot = Path(snapshot)
    refuse_non_index(snapshot)
    manifest = read_manifest(snapshot) if snapshot.is_dir() else None
    if manifest is None:
        raise LmforgeError(f"{snapshot} is not an lmforge dedup index (no {MANIFEST})")
    with _writer_lock(index), atomic_path(index, "dir") as tmp:
        (tmp / SEGMENTS).mkdir(parents=True)
        for s in manifest.segments:
            shutil.copytree(snapshot / SEGMENTS / s.name, tmp / SEGMENTS / s.name)
        _write_manifest(tmp / MANIFEST, manifest)


def hook(point: str) -> None:
    """Tests only (see the module docstring): stop this process at a named point."""
    want = os.environ.get(HOOK_ENV)
    if want and want.split(":")[0] == point:
        sig = want.partition(":")[2] or "SIGKILL"
        os.kill(os.getpid(), getattr(signal, sig))


def _hook_on_success(point: str):
    def exit_(exc_type, exc, tb) -> bool:
        if exc_type is None:
            hook(point)
        return False
    return exit_
