"""Safe outputs and the document format shared by the curation stages.

Every stage writes to a temporary sibling and renames it into place on success, so a crash never
leaves a half-written output that a later stage would read. No output destroys what lmforge did not
make: a file is never written where a directory stands, and a directory output replaces (or fills)
only an empty directory or one that carries lmforge's marker file (``.lmforge-output``), which every
directory output gets. Temporaries are named after the process that made them
(``.<name>.lmforge-<host>-<pid>-<random>.tmp``): removed on failure, and swept by the next write
beside them once that process is gone (after ``kill -9`` or a power cut).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, TYPE_CHECKING, Any, Iterable, Iterator, Literal, Mapping

from lmforge.errors import LmforgeError, MissingInputError, OutputError

if TYPE_CHECKING:  # pyarrow loads where Parquet is read or written, not with the graph
    import pyarrow as pa
    import pyarrow.parquet as pq

# The columns every document table has; stages add their own (lang, lang_score, quality, ...).
DOCUMENT_COLUMNS = ("id", "url", "text")
# Removed documents keep these, plus whatever the stage knows (e.g. ``duplicate_of``).
REMOVED_COLUMNS = ("id", "url", "text", "reason")

# Written into every directory lmforge makes as an output: only such a directory (or an empty one)
# may be replaced or written into by a later run.
OUTPUT_MARKER = ".lmforge-output"

Kind = Literal["file", "dir"]

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TMP_RE = re.compile(r"\.lmforge-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[^/]*\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def temp_name_prefix(name: str) -> str:
    """The prefix of a temporary beside ``name`` that :func:`sweep_stale` can attribute."""
    return f".{name}.lmforge-{_HOST}-{os.getpid()}-"


def sweep_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``parent`` left by lmforge processes of this host that are gone.

    A temporary that holds the previous version of an output (``old``, moved aside during a
    commit) while that output is missing is put back first: a kill between the two renames of a
    commit loses nothing. Returns the paths removed.
    """
    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_RE.search(p.name)
        if not m or m.group("host") != _HOST or _pid_alive(int(m.group("pid"))):
            continue
        old = p / "old"
        final_name = p.name[1:m.start()]
        if old.exists() and final_name and not (parent / final_name).exists():
            with contextlib.suppress(OSError):
                os.replace(old, parent / final_name)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def is_lmforge_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory lmforge made (it holds the marker file)."""
    return (Path(path) / OUTPUT_MARKER).is_file()


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


def _os_error(e: OSError, path: Path) -> LmforgeError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on the device writing {path}")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(f"cannot write {path}: {e.strerror}")
    if e.errno == errno.ENOTDIR:
        return OutputError(f"cannot write {path}: a parent of it is a file, not a directory")
    return OutputError(f"cannot write {path}: {e.strerror or e}")


def check_output(final: str | os.PathLike, kind: Kind = "file") -> Path:
    """Check, before any work, that an output of ``kind`` can be written at ``final``.

    Refuses (with :class:`OutputError`, one line) a file output where a directory stands, a
    directory output where a file stands, a directory output over a non-empty directory lmforge
    did not make, and a destination that cannot be written (read-only, no permission, a parent
    that is a file). Creates the parent directories and sweeps stale temporaries beside
    ``final``. Returns ``final`` as a Path.
    """
    final = Path(final)
    if final.is_symlink() and kind == "dir":
        raise OutputError(f"{final} is a symbolic link; give a directory lmforge can own")
    if kind == "file" and final.is_dir():
        raise OutputError(f"{final} is a directory; give the path of a file to write")
    if kind == "dir":
        if final.exists() and not final.is_dir():
            raise OutputError(f"{final} is a file; give the path of a directory to write")
        if final.is_dir() and not _is_empty_dir(final) and not is_lmforge_output(final):
            raise OutputError(f"{final} is a non-empty directory that lmforge did not make "
                              f"(no {OUTPUT_MARKER} in it); give a new or empty directory (one "
                              f"an earlier lmforge made: create {OUTPUT_MARKER} in it)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=temp_name_prefix(final.name), suffix=".tmp",
                                 dir=final.parent)
        os.rmdir(probe)
    except FileExistsError:
        raise OutputError(f"cannot write {final}: a parent of it is a file, not a directory")
    except OSError as e:
        raise _os_error(e, final) from e
    sweep_stale(final.parent)
    return final


def claim_output_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` a directory that lmforge writes into in place (a run or crawl directory).

    A missing or empty directory is created and marked; a marked one is taken as it is (a resumed
    run); anything else is refused by :func:`check_output`.
    """
    path = check_output(path, "dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / OUTPUT_MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"made_by": "lmforge"}) + "\n")
    except OSError as e:
        raise _os_error(e, path) from e
    sweep_stale(path)
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, kind: Kind = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` if the block succeeds.

    ``kind`` says what the block writes at the yielded path: a file, or a directory it creates and
    fills (which gets lmforge's marker). The destination is checked first (:func:`check_output`):
    nothing lmforge did not make is ever replaced. An existing output is replaced only after the
    new one is complete; the temporary is removed if the block fails, and swept by a later run if
    the process was killed.
    """
    final = check_output(final, kind)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_name_prefix(final.name), suffix=".tmp",
                                    dir=final.parent))
    except OSError as e:
        raise _os_error(e, final) from e
    target = tmp / final.name
    try:
        try:
            yield target
            if not target.exists():
                raise FileNotFoundError(f"atomic_path: nothing was written at {target}")
            if kind == "dir":
                if not target.is_dir():
                    raise LmforgeError(f"atomic_path: expected a directory at {target}")
                (target / OUTPUT_MARKER).write_text(json.dumps({"made_by": "lmforge"}) + "\n")
            elif target.is_dir():
                raise LmforgeError(f"atomic_path: expected a file at {target}")
            # Checked again at commit: the destination may have changed while the work ran.
            check_output(final, kind)
            if final.is_dir() and not final.is_symlink():
                os.replace(final, tmp / "old")
                os.replace(target, final)
            else:
                os.replace(target, final)
        except OSError as e:
            raise _os_error(e, final) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _table_from_rows(rows: list[Mapping[str, Any]], schema: pa.Schema | None) -> pa.Table:
    import pyarrow as pa

    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    return pa.Table.from_pylist(rows)


def write_parquet(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                  schema: pa.Schema | None = None, batch_rows: int = 10_000) -> int:
    """Write row dicts to one Parquet file atomically, streaming in batches. Returns the row count.

    With no rows and no schema, an empty file with the document columns is written, so that
    readers downstream always find a file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        batch: list[Mapping[str, Any]] = []
        try:
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_rows:
                    table = _table_from_rows(batch, schema)
                    if writer is None:
                        schema = table.schema
                        writer = pq.ParquetWriter(tmp, schema)
                    writer.write_table(table)
                    n += len(batch)
                    batch = []
            if batch or writer is None:
                if not batch and schema is None:
                    schema = pa.schema([(c, pa.string()) for c in DOCUMENT_COLUMNS])
                table = _table_from_rows(batch, schema)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                n += len(batch)
        except BaseException:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            raise
        else:
            writer.close()
    return n


def open_parquet(file: str | os.PathLike) -> pq.ParquetFile:
    """Open one Parquet file; a missing, empty or damaged file is a one-line :class:`LmforgeError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = Path(file)
    if file.is_dir():
        raise LmforgeError(f"{file} is a directory; expected a Parquet file")
    try:
        return pq.ParquetFile(file)
    except FileNotFoundError:
        raise MissingInputError(f"no Parquet file at {file}") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmforgeError(f"{file} is not a readable Parquet file ({first})") from None


def require_columns(path: str | os.PathLike, columns: Iterable[str]) -> list[Path]:
    """The Parquet files at ``path``, each checked to open and to have ``columns``."""
    files = parquet_files(path)
    for file in files:
        names = set(open_parquet(file).schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise LmforgeError(f"{file} has no column {', '.join(map(repr, missing))} "
                               f"(it has {', '.join(sorted(names)) or 'none'})")
    return files


def read_parquet_rows(path: str | os.PathLike, columns: list[str] | None = None,
                      batch_rows: int = 10_000) -> Iterator[dict[str, Any]]:
    """Stream the rows of one Parquet file (or a directory of them) as dicts. Named ``columns``
    must exist (a clear error names the file and the column otherwise)."""
    import pyarrow as pa

    files = require_columns(path, columns) if columns else parquet_files(path)
    for file in files:
        pf = open_parquet(file)
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise LmforgeError(f"{file} is damaged ({str(e).strip().splitlines()[0]})") from None


# A stage's day of documents is a directory of parts (``part-00000-<key>.parquet``, its removed
# rows in ``part-00000-<key>.removed.parquet``, ...) with ``_manifest.json`` written last: a
# directory without its manifest is a stage still running, or killed, and is never read.
MANIFEST_FILE = "_manifest.json"
PARTS_FORMAT = "lmforge-parts/1"
_PART_NAME = re.compile(r"^part-\d{5,}(-[0-9a-f]{1,64})?\.parquet$")


def part_path(day_dir: str | os.PathLike, index: int, key: str = "") -> Path:
    """The ``index``-th part of a day directory (its removed rows: :func:`removed_path_for`).
    ``key`` (hex) names what it was made from, so a run with another input or config writes
    beside the parts the committed manifest lists instead of over them."""
    return Path(day_dir) / f"part-{index:05d}{'-' + key if key else ''}.parquet"


def read_manifest(day_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a day directory, or None when it has none (unfinished, or not one).

    Part names are checked to be plain ``part-NNNNN[-key].parquet`` names in the directory: a
    planted manifest cannot make a reader open a file elsewhere."""
    path = Path(day_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: not a readable manifest ({e})") from None
    parts = manifest.get("parts") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != PARTS_FORMAT
            or not isinstance(parts, list)):
        raise LmforgeError(f"{path}: not a {PARTS_FORMAT} manifest")
    for part in parts:
        names = [part.get("file"), part.get("removed")] if isinstance(part, dict) else [None]
        if not all(isinstance(n, str) and _PART_NAME.match(n.replace(".removed", "", 1))
                   for n in names):
            raise LmforgeError(f"{path}: a part is not named part-NNNNN[-key].parquet: "
                               f"{part!r}"[:300])
    return manifest


def write_manifest(day_dir: str | os.PathLike, parts: list[Mapping[str, Any]],
                   **info: Any) -> dict[str, Any]:
    """Commit a day directory: its manifest, written last and atomically, lists ``parts``
    (``{"file", "removed", "rows", "removed_rows", ...}``) with ``info`` (the config's
    fingerprint, the stage)."""
    manifest = {"format": PARTS_FORMAT, **info, "parts": [dict(p) for p in parts],
                "rows": sum(int(p["rows"]) for p in parts),
                "removed_rows": sum(int(p["removed_rows"]) for p in parts)}
    write_json(Path(day_dir) / MANIFEST_FILE, manifest)
    return manifest


def _day_key(p: Path) -> str:
    return p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files of documents at ``path``: the file itself; the parts a day directory's
    manifest lists; or, for a directory of days (``<asset>/documents``), every day in order: the
    ``*.parquet`` files and the day directories that have a manifest (one without is unfinished
    and left out). The removed documents stored beside them (``*.removed.parquet``, see
    :func:`removed_path_for`) and temporary files are left out."""
    p = Path(path)
    if p.is_dir():
        manifest = read_manifest(p)
        if manifest is not None:
            files = [p / part["file"] for part in manifest["parts"]]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise MissingInputError(f"{p}: part(s) {', '.join(missing)} listed in its "
                                        f"{MANIFEST_FILE} are missing")
            return files
        if is_lmforge_output(p) and any(p.glob("part-*.parquet")):
            raise MissingInputError(f"{p} is an unfinished stage output (no {MANIFEST_FILE}): "
                                    "the stage is running or was killed; run it again")
        days = {_day_key(x): x for x in p.iterdir()
                if x.is_dir() and not x.name.startswith(".") and read_manifest(x) is not None}
        files = [x for x in p.glob("*.parquet")
                 if x.is_file() and not x.name.startswith(".")
                 and not x.name.endswith(".removed.parquet") and _day_key(x) not in days]
        out: list[Path] = []
        for x in sorted([*files, *days.values()], key=lambda x: (_day_key(x), x.name)):
            out.extend(parquet_files(x) if x.is_dir() else [x])
        return out
    if not p.exists():
        raise MissingInputError(f"no Parquet file or directory at {p}")
    return [p]


def removed_files(path: str | os.PathLike) -> list[Path]:
    """The removed documents that go with :func:`parquet_files` ``(path)`` (those that exist)."""
    return [r for r in map(removed_path_for, parquet_files(path)) if r.is_file()]


def count_rows(path: str | os.PathLike) -> int:
    return sum(open_parquet(f).metadata.num_rows for f in parquet_files(path))


# The removed documents of a stage go beside its output, whatever the stage.
def removed_path_for(out_path: str | os.PathLike) -> Path:
    """Where the documents that did not make it into ``out_path`` go.

    ``docs.parquet`` -> ``docs.removed.parquet`` in the same directory (any other name gets
    ``.removed.parquet`` appended).
    """
    p = Path(out_path)
    stem = p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name
    return p.with_name(f"{stem}.removed.parquet")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file (``.gz`` is read
    compressed). A missing file, a directory, a line that is not a JSON object or bytes that are
    not UTF-8 are a one-line :class:`LmforgeError` naming the file and the line. The one JSONL
    reader of the project: benchmarks, samples, metrics and reference text all go through it."""
    import gzip

    from lmforge.errors import InputError

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a directory; give a JSONL file")
    if not p.exists():
        raise MissingInputError(f"no JSONL file at {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{p}:{lineno}: not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{p}:{lineno}: expected a JSON object, got "
                                     f"{type(row).__name__}")
                yield lineno, row
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{p}: not a readable UTF-8 JSONL file ({type(e).__name__})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every object of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path)]


_HELD_LOCKS: dict[str, int] = {}


def hold_dir_lock(path: str | os.PathLike, on_wait: Callable[[str], None] | None = None,
                  poll: float = 2.0, say_every: float = 60.0) -> None:
    """Hold an exclusive lock on directory ``path`` (``.lmforge.lock`` in it) until
    :func:`release_dir_lock` or the process ends, waiting while another process holds it: two trainings never write one run directory at
    once (a retry whose killed predecessor's training is still running waits for it to end, then
    resumes from its last checkpoint). The kernel drops the lock when the holder dies, even by
    SIGKILL. ``on_wait`` is told, now and then, who it waits for."""
    import fcntl
    import time

    key = str(Path(path).resolve())
    if key in _HELD_LOCKS:
        return
    lock_path = Path(path) / ".lmforge.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    said = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            now = time.monotonic()
            if on_wait is not None and (said is None or now - said >= say_every):
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                on_wait(f"waiting for the process that is writing {path} (pid {holder}) to end")
                said = now
            time.sleep(poll)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[key] = fd


def release_dir_lock(path: str | os.PathLike) -> None:
    """Let go of :func:`hold_dir_lock`'s lock on ``path`` (closing it; the file stays)."""
    fd = _HELD_LOCKS.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
