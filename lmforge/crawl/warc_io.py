"""WARC files of a crawl directory: reading what earlier runs stored (resume) and writing request
and response records into size-capped gzip WARC files under temporary names."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urljoin, urlsplit

from lmforge.errors import LmforgeError
from lmforge.io import temp_name_prefix
from lmforge.crawl.urls import extract_links, normalize_url

if TYPE_CHECKING:  # warcio loads where WARC files are read or written, not with the graph
    from warcio.warcwriter import WARCWriter

# Headers that describe the bytes on the wire, not the decoded body the WARC stores. They are kept
# under an X-Crawler- prefix, as Common Crawl does, so the record still says what was sent.
_WIRE_HEADERS = ("content-encoding", "transfer-encoding", "content-length")

@dataclass
class _Fetched:
    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    truncated: bool
    content_type: str        # MIME type only, lower case
    date: str                # ISO 8601, when the response arrived
    warc: str = ""           # the WARC file it was written into ("" when not stored)


@dataclass
class _Stored:
    """What an earlier run stored for one URL: its links, or where it redirected, and in which
    WARC file."""
    links: list[str]
    redirect_to: str | None = None
    warc: str = ""


def warc_files(out_dir: str | os.PathLike) -> list[Path]:
    """The complete WARC files of a crawl directory (temporary ones are skipped)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith((".warc.gz", ".warc")))


def _load_stored(out_dir: Path) -> dict[str, _Stored]:
    stored: dict[str, _Stored] = {}
    for path in warc_files(out_dir):
        try:
            _load_stored_file(path, stored)
        except Exception as e:  # warcio's ArchiveLoadFailed, zlib errors: a damaged file
            detail = " ".join(str(e).split())[:200]
            raise LmforgeError(f"cannot resume from {path}: {type(e).__name__}: {detail} "
                               "(move the damaged WARC out of the crawl directory)") from None
    return stored


def _load_stored_file(path: Path, stored: dict[str, _Stored]) -> None:
    from warcio.archiveiterator import ArchiveIterator

    with open(path, "rb") as fh:
        for rec in ArchiveIterator(fh):
            if rec.rec_type != "response" or rec.http_headers is None:
                continue
            url = rec.rec_headers.get_header("WARC-Target-URI")
            try:
                url = normalize_url(url or "")
                status = int(rec.http_headers.get_statuscode() or 0)
            except ValueError:
                continue
            if 300 <= status < 400:
                loc = rec.http_headers.get_header("Location")
                with contextlib.suppress(ValueError):
                    stored[url] = _Stored([], normalize_url(urljoin(url, loc or "")), path.name)
            elif 200 <= status < 300:
                ctype = rec.http_headers.get_header("Content-Type")
                stored[url] = _Stored(extract_links(rec.content_stream().read(), url, ctype),
                                      warc=path.name)


class _WarcOut:
    """Appends records to a hidden temporary WARC; ``close()`` renames it into place, after
    ``before_commit()`` (the frontier writes what it knows of the file's records first)."""

    def __init__(self, out_dir: Path, max_bytes: int, user_agent: str,
                 before_commit: Callable[[], None] = lambda: None):
        self.out_dir, self.max_bytes, self.user_agent = out_dir, max_bytes, user_agent
        self.before_commit = before_commit
        self.finished: list[Path] = []
        self._fh: io.BufferedWriter | None = None
        self._writer: WARCWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None

    def _open(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self._final = self.out_dir / f"crawl-{stamp}-{secrets.token_hex(3)}.warc.gz"
        # Named so that a later run's sweep removes it if this process is killed mid-file.
        self._tmp = self.out_dir / f"{temp_name_prefix(self._final.name)}open.tmp"
        self._fh = open(self._tmp, "wb")
        from warcio.warcwriter import WARCWriter

        self._writer = WARCWriter(self._fh, gzip=True)
        info = {"software": "lmforge crawler", "format": "WARC File Format 1.1",
                "http-header-user-agent": self.user_agent,
                "robots": "obey", "operator": "lmforge"}
        self._writer.write_record(self._writer.create_warcinfo_record(self._final.name, info))

    def write_exchange(self, url: str, request_headers: list[tuple[str, str]],
                       response: "_Fetched") -> str:
        """Write one request and response; returns the name of the WARC file they went into."""
        from warcio.statusandheaders import StatusAndHeaders

        if self._writer is None:
            self._open()
        assert self._writer is not None and self._fh is not None and self._final is not None
        name = self._final.name
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        date = response.date
        req = self._writer.create_warc_record(
            url, "request", payload=io.BytesIO(b""),
            http_headers=StatusAndHeaders(f"GET {target} HTTP/1.1", request_headers,
                                          is_http_request=True),
            warc_headers_dict={"WARC-Date": date})
        headers = [(k, v) for k, v in response.headers if k.lower() not in _WIRE_HEADERS]
        headers += [(f"X-Crawler-{k}", v) for k, v in response.headers if k.lower() in _WIRE_HEADERS]
        headers.append(("Content-Length", str(len(response.body))))
        warc_headers = {"WARC-Date": date}
        if response.truncated:
            warc_headers["WARC-Truncated"] = "length"
        resp = self._writer.create_warc_record(
            url, "response", payload=io.BytesIO(response.body),
            http_headers=StatusAndHeaders(f"{response.status} {response.reason}", headers,
                                          protocol=response.http_version),
            warc_headers_dict=warc_headers)
        req.rec_headers.add_header("WARC-Concurrent-To", resp.rec_headers.get_header("WARC-Record-ID"))
        self._writer.write_record(req)
        self._writer.write_record(resp)
        if self._fh.tell() >= self.max_bytes:
            self.close()
        return name

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        assert self._tmp is not None and self._final is not None
        self.before_commit()
        os.replace(self._tmp, self._final)
        self.finished.append(self._final)
        self._fh = self._writer = self._tmp = self._final = None
