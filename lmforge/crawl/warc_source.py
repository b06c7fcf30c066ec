"""Existing WARC files (Common Crawl segments, another crawler's output) as the crawl, instead of
crawling: copy or download them into a crawl directory that ``extract`` reads.

    sources (file, directory, file:// or http(s) URL)
        -> already in out_dir? (imports.jsonl, or same name and size)  -> skip (resume)
        -> a pool of ``workers`` threads, one file each at a time:
           copy / download to a hidden temporary file (chunks, retries, optional byte cap)
           -> validate with warcio (every record WARC, every record complete)
           -> plain .warc, or one gzip member around all records (``gzip x.warc``, which warcio
              and so extract refuse)? gzip it one member per record, as Common Crawl does
           -> rename to ``<name>.warc.gz``
        -> imports.jsonl rewritten once per batch of finished files, and at the end

Output in ``out_dir``:

- ``<name>.warc.gz``: the source's records, byte for byte (plain WARCs are compressed on the
  way in, so everything here is what ``lmforge.curate.extract`` and the crawler's resume read).
  A name taken by another source gets ``-<8 hex digits of the source's SHA-1>`` added.
- ``imports.jsonl``: one line per imported file: ``source``, ``file``, ``bytes``, ``sha256``,
  ``records``, ``responses``, ``truncated``, ``imported_at``. A source listed there whose file is
  still in ``out_dir`` with that size is never fetched again. A file is renamed into place
  before its entry is written (with its batch), so an entry always has its bytes; a kill loses
  at most the entries of the batch under way, and the next run finds those files in place:
  the same size as a gzip source (or a URL's HEAD) takes them as they are, anything else is
  copied again and kept only if its SHA-256 differs (then under another name).
- ``import_failures.jsonl``: the sources this run could not import, with a reason (``not_found``,
  ``http_404``, ``http_503``, ``timeout``, ``connection_error``, ``not_warc``, ``truncated``,
  ``corrupt``, ``empty``, ``too_large``, ...). A failed source leaves no file behind.

Validation: warcio's ``ArchiveIterator`` is lenient (it reads a text file as ARC records and a
cut-off file as a shorter last record), so each record must be a WARC record and its block must
have the bytes its ``Content-Length`` promises.

``max_bytes`` caps how much of each source is read, for a sample of a 1 GB Common Crawl file:
the copy stops there and is cut back to the last record known to be complete (the one the cap
cut into, and the one before it, whose trailer may be missing, are dropped). Such files are
marked ``truncated`` in the manifest.

Downloads use ``urllib`` (1 MiB chunks, one file per worker): ``timeout_s`` is the longest wait
for the server to send anything, not a limit on the whole transfer, so a large file on a slow
link is fine and a stalled one is not. 5xx, 408, 429, timeouts, dropped connections and bodies
shorter than their Content-Length are retried with exponential backoff, from the start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


from lmforge.crawl.warc_io import warc_files
from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, claim_output_dir, sha256_file, temp_name_prefix
# The download and validation steps; ImportFailure and scan_warc stay importable from here.
from lmforge.crawl.warc_download import (CHUNK, USER_AGENT, ImportFailure,  # noqa: F401
                                         _copy_capped, _download, _head_size)
from lmforge.crawl.warc_validate import _GZIP_MAGIC, WarcScan, _temp_beside, _validated, scan_warc  # noqa: F401

MANIFEST_FILE = "imports.jsonl"
FAILURES_FILE = "import_failures.jsonl"


@dataclass
class WarcImportStats:
    files: int = 0                  # WARC files imported by this run
    already_imported: int = 0       # sources found in out_dir (resume), not fetched again
    bytes: int = 0                  # bytes this run wrote to out_dir
    records: int = 0                # WARC records in the files this run imported
    responses: int = 0              # of which response records (the pages extract reads)
    truncated_files: int = 0        # imported files cut at max_bytes
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)   # source, reason, detail
    elapsed_s: float = 0.0
    warc_files: list[str] = field(default_factory=list)   # every file the sources map to
    manifest_path: str = ""
    failures_path: str = ""

    @property
    def seconds(self) -> float:
        return self.elapsed_s

    @property
    def failed(self) -> int:
        return sum(self.failures_by_reason.values())

    def to_metadata(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "already_imported": self.already_imported,
            "bytes": self.bytes,
            "mb": round(self.bytes / 1e6, 3),
            "records": self.records,
            "responses": self.responses,
            "truncated_files": self.truncated_files,
            "failures": self.failed,
            "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
            "failure_samples": self.failures[:20],
            "elapsed_s": round(self.elapsed_s, 3),
            "mb_per_s": round(self.bytes / 1e6 / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "warc_files": list(self.warc_files),
            "manifest_path": self.manifest_path,
            "failures_path": self.failures_path,
        }


# --------------------------------------------------------------------------- sources

@dataclass
class _Source:
    key: str            # what the manifest records: an absolute path or the URL as given
    url: str | None     # http(s) URL, or None for a local file
    path: Path | None   # local file, or None for a URL
    name: str           # the file name it came with


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s))


def _expand(source: str, out_dir: Path) -> list[_Source]:
    """The files one source stands for. Raises ImportFailure when it stands for none."""
    if _is_url(source):
        parts = urlsplit(source)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise ImportFailure("bad_source", f"no host in URL {source!r}")
            return [_Source(source, source, None, unquote(parts.path.rsplit("/", 1)[-1]))]
        if scheme != "file":
            raise ImportFailure("bad_source", f"unsupported URL scheme {scheme!r} in {source!r} "
                                "(use a local path, file://, http:// or https://)")
        source = urllib.request.url2pathname(parts.path)
    p = Path(source).expanduser().resolve()
    if p.is_dir():
        if p == out_dir.resolve():
            raise ImportFailure("bad_source", f"{p} is the output directory itself")
        files = warc_files(p)
        if not files:
            raise ImportFailure("not_found", f"no *.warc.gz or *.warc files in directory {p}")
        return [_Source(str(f.resolve()), None, f.resolve(), f.name) for f in files]
    if p.is_file():
        return [_Source(str(p), None, p, p.name)]
    raise ImportFailure("not_found", f"no WARC file or directory at {p}")


def _target_name(name: str, key: str) -> str:
    """``x.warc.gz`` for ``x.warc.gz``, ``x.warc`` or ``x``; a hash of the source when no name."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    for suffix in (".gz", ".warc"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = stem.strip("._")
    return f"{stem or hashlib.sha1(key.encode()).hexdigest()[:16]}.warc.gz"


def _disambiguated(name: str, key: str) -> str:
    return f"{name[: -len('.warc.gz')]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.warc.gz"

# --------------------------------------------------------------------------- the manifest

def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``imports.jsonl`` of ``out_dir`` as {source: entry}; the last entry of a source wins."""
    path = Path(out_dir) / MANIFEST_FILE
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
                entries[e["source"]] = e
            except (ValueError, KeyError, TypeError):
                continue  # a line some other tool wrote badly: not ours to trust
    return entries


def _write_manifest(out_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    with atomic_path(out_dir / MANIFEST_FILE) as tmp:
        with open(tmp, "w") as f:
            for e in entries.values():
                f.write(json.dumps(e, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- one source

@dataclass
class _Imported:
    """What one worker did with one source (the main thread adds it to the stats and manifest)."""
    path: Path
    entry: dict[str, Any]
    copied: bool            # False: the file was already there (adopted, nothing written)


def _import_one(src: _Source, out: Path, name: str, *, timeout_s: float, max_bytes: int | None,
                retries: int, backoff_s: float) -> _Imported:
    """Copy or download ``src``, validate it and rename it into place as ``out/name``. Touches
    nothing shared: it runs on a worker thread."""
    final = out / name
    if final.is_file() and max_bytes is None:
        # Not in the manifest, yet there: put there by hand, or imported by a run killed before
        # its batch's manifest was written. The same file if the same size (checkable without a
        # copy where the source is stored as it is: a gzip WARC).
        if src.path is not None:
            with open(src.path, "rb") as fh:
                same = fh.read(2) == _GZIP_MAGIC and src.path.stat().st_size == final.stat().st_size
        else:
            same = _head_size(src.url, timeout_s) == final.stat().st_size
        if same:
            scan = scan_warc(final)
            if scan.error is None and scan.offsets:
                return _Imported(final, _entry(src, final, scan, truncated=False), copied=False)

    # Named so that a later run's sweep removes it (and the .plain / .gz beside it) if this
    # process is killed mid-copy.
    raw = out / f"{temp_name_prefix(final.name)}part.tmp"
    temps = [raw, _temp_beside(raw, "plain"), _temp_beside(raw, "gz")]
    try:
        with open(raw, "wb") as fh:
            if src.url is not None:
                _, capped = _download(src.url, fh, max_bytes=max_bytes, timeout_s=timeout_s,
                                      retries=retries, backoff_s=backoff_s)
            else:
                with open(src.path, "rb") as fin:
                    _, capped = _copy_capped(fin, fh, max_bytes)
        ready, scan, truncated = _validated(raw, capped, max_bytes)
        entry = _entry(src, ready, scan, truncated=truncated, name=final.name)
        if final.is_file():
            if sha256_file(final) == entry["sha256"]:  # the same bytes (a plain WARC recompressed)
                return _Imported(final, entry, copied=False)
            final = out / _disambiguated(name, src.key)
            entry["file"] = final.name
        # The file first, its manifest entry with its batch: a kill loses entries, never bytes.
        os.replace(ready, final)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return _Imported(final, entry, copied=True)


def _entry(src: _Source, path: Path, scan: WarcScan, *, truncated: bool,
           name: str | None = None) -> dict[str, Any]:
    return {
        "source": src.key, "file": name or path.name, "bytes": path.stat().st_size,
        "sha256": sha256_file(path), "records": len(scan.offsets),
        "responses": sum(scan.responses), "truncated": truncated,
        "imported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# --------------------------------------------------------------------------- entry points

def import_warcs(sources: list[str], out_dir: str | os.PathLike, *, timeout_s: float = 60,
                 max_bytes: int | None = None, retries: int = 2, backoff_s: float = 0.5,
                 workers: int = 4, batch_files: int | None = None) -> WarcImportStats:
    """Import ``sources`` (files, directories, file:// or http(s) URLs) into ``out_dir`` as
    ``*.warc.gz``; see the module docstring. A source that fails is recorded, not raised.

    ``workers`` files are copied at once (threads: the work is I/O, zlib and hashing, which
    release the GIL); the manifest is written once per ``batch_files`` finished files (default:
    ``4 * workers``) and at the end. Names are decided up front, in source order, so the result
    does not depend on which worker finishes first."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ValueError("no WARC sources given")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if workers < 1 or (batch_files is not None and batch_files < 1):
        raise ValueError(f"workers and batch_files must be positive, got {workers}, {batch_files}")
    batch_files = batch_files or 4 * workers
    # Written in place (resume reads it): a new, empty or lmforge-made directory only.
    out = claim_output_dir(out_dir)
    stats = WarcImportStats(manifest_path=str(out / MANIFEST_FILE),
                            failures_path=str(out / FAILURES_FILE))
    manifest = read_manifest(out)
    start = time.monotonic()

    def fail(source: str, f: ImportFailure) -> None:
        stats.failures_by_reason[f.reason] = stats.failures_by_reason.get(f.reason, 0) + 1
        stats.failures.append({"source": source, "reason": f.reason, "detail": f.detail})
        print(f"warc import: FAILED {source}: {f.reason}: {f.detail}", file=sys.stderr)

    paths: dict[str, Path] = {}

    def done(key: str, path: Path) -> None:
        paths[key] = path

    jobs: list[tuple[_Source, str]] = []
    order: list[str] = []  # every source's key, in the order given: the order of warc_files
    repeats: list[str] = []  # a source met again in this run (a file and its file:// URL)
    owners = {e["file"]: k for k, e in manifest.items()}
    for source in map(str, sources):
        try:
            expanded = _expand(source, out)
        except ImportFailure as f:
            fail(source, f)
            continue
        for src in expanded:
            order.append(src.key)
            entry = manifest.get(src.key)
            if entry and (out / entry["file"]).is_file() and \
                    (out / entry["file"]).stat().st_size == entry["bytes"]:
                stats.already_imported += 1
                done(src.key, out / entry["file"])
                continue
            if any(src.key == job.key for job, _ in jobs):
                repeats.append(src.key)
                continue
            name = _target_name(src.name, src.key)
            if owners.get(name, src.key) != src.key:
                name = _disambiguated(name, src.key)
            owners[name] = src.key
            jobs.append((src, name))

    unwritten = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warc-import") as pool:
        futures = {pool.submit(_import_one, src, out, name, timeout_s=timeout_s,
                               max_bytes=max_bytes, retries=retries, backoff_s=backoff_s): src
                   for src, name in jobs}
        for future in as_completed(futures):
            src = futures[future]
            try:
                result = future.result()
            except ImportFailure as f:
                fail(src.key, f)
                continue
            except OSError as e:  # disk full, permission denied: this source, not the run
                fail(src.key, ImportFailure("os_error", f"{type(e).__name__}: {e}"))
                continue
            manifest[src.key] = result.entry
            unwritten += 1
            if result.copied:
                stats.files += 1
                stats.bytes += result.entry["bytes"]
                stats.records += result.entry["records"]
                stats.responses += result.entry["responses"]
                stats.truncated_files += result.entry["truncated"]
            else:
                stats.already_imported += 1
            done(src.key, result.path)
            print(f"warc import: {src.key} -> {result.path.name}", file=sys.stderr)
            if unwritten >= batch_files:
                _write_manifest(out, manifest)
                unwritten = 0
    if unwritten:
        _write_manifest(out, manifest)
    for key in repeats:
        if key in paths:
            stats.already_imported += 1
    stats.warc_files = list(dict.fromkeys(str(paths[k]) for k in order if k in paths))

    with atomic_path(out / FAILURES_FILE) as tmp:
        with open(tmp, "w") as f:
            for row in stats.failures:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    stats.elapsed_s = time.monotonic() - start
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmforge.crawl.warc_source", description=(
        "Import existing WARC files (local files, directories, file:// or http(s) URLs, e.g. "
        "Common Crawl segments) into a crawl directory as validated *.warc.gz. Run it again to "
        "resume: sources listed in OUT/imports.jsonl are not fetched again."))
    p.add_argument("sources", nargs="+", metavar="PATH_OR_URL", help="WARC sources")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--retries", type=int, default=2, help="retries on 5xx/timeouts (default: %(default)s)")
    p.add_argument("--max-warc-bytes", type=int, default=None,
                   help="read at most this many bytes of each WARC, cut at a record (default: all)")
    p.add_argument("--warc-timeout", type=float, default=60.0,
                   help="seconds to wait for a server to send anything (default: %(default)s)")
    add_workers_argument(p)
    args = p.parse_args(argv)
    return run_cli(args.sources, args.out, retries=args.retries, max_bytes=args.max_warc_bytes,
                   timeout_s=args.warc_timeout, prog=p.prog, workers=args.workers)


def add_workers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4,
                   help="WARC files imported at once (default: %(default)s); the manifest is "
                   "written once per 4 x workers files")


def run_cli(sources: list[str], out: str, *, retries: int, max_bytes: int | None,
            timeout_s: float, prog: str, workers: int = 4) -> int:
    """Import, print the stats as JSON; exit 0 when all imported, 1 when some failed."""
    try:
        stats = import_warcs(sources, out, timeout_s=timeout_s, max_bytes=max_bytes,
                             retries=retries, workers=workers)
    except (LmforgeError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats.to_metadata(), indent=2))
    return 1 if stats.failed else 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('warc-source', main, sys.argv[1:]))
