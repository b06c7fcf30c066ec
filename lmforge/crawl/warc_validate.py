"""Validating a WARC file: every record must be a WARC record with the bytes its Content-Length
promises (warcio alone is lenient); plain and single-member gzip WARCs are recompressed one
gzip member per record, as Common Crawl stores them; a capped copy is cut at a record."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path


from lmforge.crawl.warc_download import CHUNK, ImportFailure

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class WarcScan:
    offsets: list[int] = field(default_factory=list)     # where each complete record starts
    responses: list[bool] = field(default_factory=list)  # whether each one is a response
    stop: int | None = None                               # where the first bad record starts
    error: ImportFailure | None = None


def scan_warc(path: str | os.PathLike) -> WarcScan:
    """Read every record; stop at the first that is not WARC, is cut short or cannot be read.

    ``error`` says what broke (``reason`` not_warc, truncated or corrupt) and ``offsets`` holds
    the complete records before it. Only gzip is decompressed: no record is parsed, so this is a
    fraction of the cost of extracting the pages."""
    scan = WarcScan()
    # warcio writes its own multi-line warnings to stderr for such files; the scan's result says
    # what is wrong, once, where the caller reports it.
    from warcio.archiveiterator import ArchiveIterator  # loads with the work, not the graph

    with open(path, "rb") as fh, contextlib.redirect_stderr(io.StringIO()):
        it = ArchiveIterator(fh, no_record_parse=True)  # the raw block, to count its bytes
        try:
            for rec in it:
                n = 0
                while chunk := rec.raw_stream.read(CHUNK):
                    n += len(chunk)
                offset = it.get_record_offset()  # after the read: it reads the record to its end
                if rec.format != "warc":
                    scan.stop, scan.error = offset, ImportFailure(
                        "not_warc", f"record at byte {offset} is not a WARC record")
                    return scan
                if n != rec.length:
                    scan.stop, scan.error = offset, ImportFailure(
                        "truncated", f"record at byte {offset} has {n} of its {rec.length} bytes"
                        if rec.length is not None else
                        f"record at byte {offset} is cut off in its headers")
                    return scan
                scan.offsets.append(offset)
                scan.responses.append(rec.rec_type == "response")
        except Exception as e:  # warcio's ArchiveLoadFailed, zlib errors, ...: a damaged file
            detail = " ".join(str(e).split())[:200].encode("ascii", "backslashreplace").decode()
            scan.stop = it.offset  # where the record it could not read starts
            scan.error = ImportFailure("not_warc" if not scan.offsets else "corrupt",
                                       f"after {len(scan.offsets)} records: "
                                       f"{type(e).__name__}: {detail}")
    return scan


def _temp_beside(raw: Path, tag: str) -> Path:
    """Another temporary of the same import, named so the sweep attributes it too."""
    return raw.with_name(f"{raw.name.removesuffix('.tmp')}-{tag}.tmp")


def _gunzip(src: Path, dst: Path) -> bool:
    """Decompress ``src`` into ``dst``; a stream cut short keeps what came before the cut."""
    try:
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            try:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
            except EOFError:
                pass
        return True
    except (OSError, ValueError, zlib.error):  # not gzip after all, or damaged inside
        return False


def _validated(raw: Path, capped: bool, max_bytes: int | None) -> tuple[Path, WarcScan, bool]:
    """The fetched bytes as a per-record gzip WARC of complete records, checked record by record.

    Returns (file to rename into place, its records, whether it is a cut-down sample).
    """
    with open(raw, "rb") as fh:
        compressed = fh.read(2) == _GZIP_MAGIC
    src, scan = raw, scan_warc(raw)
    if compressed and scan.error is not None and scan.error.reason != "truncated":
        # One gzip member around all records (``gzip file.warc``): warcio refuses it, so
        # extract would too. Unpack it and compress it again record by record.
        plain = _temp_beside(raw, "plain")
        if _gunzip(raw, plain):
            pscan = scan_warc(plain)
            if pscan.offsets and (pscan.error is None or capped):
                src, scan, compressed = plain, pscan, False
    end = src.stat().st_size
    if capped:
        # The cap cut into a record; the last one read whole may still lack its trailer.
        keep = len(scan.offsets) - (1 if scan.error is None else 0)
        if keep <= 0:
            raise ImportFailure("too_large", f"max_bytes={max_bytes} does not hold one "
                                "complete record; raise it")
        end = scan.offsets[keep] if keep < len(scan.offsets) else scan.stop
        scan = WarcScan(scan.offsets[:keep], scan.responses[:keep])
    elif scan.error is not None:
        raise scan.error
    if not scan.offsets:
        raise ImportFailure("empty", "no WARC records")
    if compressed:
        if capped:
            with open(src, "r+b") as fh:
                fh.truncate(end)
        return src, scan, capped
    packed = _temp_beside(raw, "gz")
    _gzip_records(src, packed, scan.offsets, end)
    return packed, scan, capped


def _gzip_records(src: Path, dst: Path, offsets: list[int], end: int) -> None:
    """Compress a plain WARC one record per gzip member, so readers can seek to any record."""
    bounds = offsets[1:] + [end]
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for start, stop in zip(offsets, bounds):
            fin.seek(start)
            # No file name in the header (GzipFile would take the temporary one): the same
            # records always give the same bytes.
            with gzip.GzipFile(filename="", fileobj=fout, mode="wb", compresslevel=6, mtime=0) as gz:
                left = stop - start
                while left > 0:
                    chunk = fin.read(min(CHUNK, left))
                    if not chunk:
                        break
                    gz.write(chunk)
                    left -= len(chunk)


