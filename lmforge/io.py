"""Atomic writes and the document format shared by the curation stages.

Every stage writes to a temporary sibling and renames it into place on success, so a crash never
leaves a half-written output that a later stage would read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

# The columns every document table has; stages add their own (lang, lang_score, quality, ...).
DOCUMENT_COLUMNS = ("id", "url", "text")
# Removed documents keep these, plus whatever the stage knows (e.g. ``duplicate_of``).
REMOVED_COLUMNS = ("id", "url", "text", "reason")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` if the block succeeds.

    Works for files and directories alike: write a file at the yielded path, or create a directory
    there and fill it. An existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written at {target}")
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _table_from_rows(rows: list[Mapping[str, Any]], schema: pa.Schema | None) -> pa.Table:
    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    return pa.Table.from_pylist(rows)


def write_parquet(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                  schema: pa.Schema | None = None, batch_rows: int = 10_000) -> int:
    """Write row dicts to one Parquet file atomically, streaming in batches. Returns the row count.

    With no rows and no schema, an empty file with the document columns is written, so that
    readers downstream always find a file.
    """
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
        finally:
            if writer is not None:
                writer.close()
    return n


def read_parquet_rows(path: str | os.PathLike, columns: list[str] | None = None,
                      batch_rows: int = 10_000) -> Iterator[dict[str, Any]]:
    """Stream the rows of one Parquet file (or a directory of them) as dicts."""
    for file in parquet_files(path):
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield from batch.to_pylist()


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files at ``path``: the file itself, or the sorted ``*.parquet`` of a directory
    (for example one file per day), leaving out the removed documents stored beside them
    (``*.removed.parquet``, see ``removed_path_for``) and temporary files."""
    p = Path(path)
    if p.is_dir():
        return sorted(x for x in p.glob("*.parquet")
                      if not x.name.startswith(".") and not x.name.endswith(".removed.parquet"))
    if not p.exists():
        raise FileNotFoundError(f"no Parquet file or directory at {p}")
    return [p]


def count_rows(path: str | os.PathLike) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


# The removed documents of a stage go beside its output, whatever the stage.
def removed_path_for(out_path: str | os.PathLike) -> Path:
    """Where the documents that did not make it into ``out_path`` go.

    ``docs.parquet`` -> ``docs.removed.parquet`` in the same directory (any other name gets
    ``.removed.parquet`` appended).
    """
    p = Path(out_path)
    stem = p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name
    return p.with_name(f"{stem}.removed.parquet")
