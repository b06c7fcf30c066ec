"""The days of a curated corpus, and a cheap fingerprint of one day's input.

The curated corpus is a directory with one entry per day: ``<day>.parquet``, or ``<day>/`` with
``part-*.parquet`` and a ``_manifest.json`` written last. The tokenizer samples across these
days and the token shards are kept per day, so both need to tell the days apart; the files of a
day are always listed by ``lmforge.io.parquet_files`` (which knows what a finished day is).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lmforge.errors import MissingInputError
from lmforge.io import MANIFEST_FILE, parquet_files, read_manifest


def corpus_days(corpus: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(day, path)`` of every day of ``corpus``, sorted by day; a single Parquet file (or a
    directory of parts with its own manifest) is one day named after itself."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise MissingInputError(f"no Parquet file or directory at {corpus}")
    if not corpus.is_dir() or read_manifest(corpus) is not None:
        return [(corpus.name.removesuffix(".parquet"), corpus)]
    days: dict[str, Path] = {}
    for f in parquet_files(corpus):  # finished days only, in order
        top = corpus / f.relative_to(corpus).parts[0]
        days.setdefault(top.name.removesuffix(".parquet"), top)
    return sorted(days.items())


def input_fingerprint(day_path: str | os.PathLike) -> str:
    """A hash that changes whenever a day's documents are written again: its manifest's bytes
    and every file's name, size and modification time (each write is a new file, renamed into
    place). Nothing is read but metadata, so checking every day each night stays cheap."""
    day_path = Path(day_path)
    h = hashlib.sha256()
    manifest = day_path / MANIFEST_FILE
    if day_path.is_dir() and manifest.is_file():
        h.update(manifest.read_bytes())
    for f in parquet_files(day_path):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
