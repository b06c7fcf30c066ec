"""Downloading one WARC source over HTTP(S) with ``urllib``: streamed in 1 MiB chunks, capped at a
byte budget, retried with exponential backoff on 5xx, 408, 429, timeouts and short bodies.
A source that cannot be had is an :class:`ImportFailure` with a short reason."""

from __future__ import annotations

import http.client
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import BinaryIO



USER_AGENT = "lmforge-warc-import/0.1 (+https://github.com/lmforge/lmforge)"
CHUNK = 1024 * 1024
# Statuses worth asking again: the server may recover (RFC 9110 says so for 503 and 429).
_RETRY_STATUSES = frozenset({408, 429})


class ImportFailure(Exception):
    """One source could not be imported; ``reason`` is the short key counted in the stats."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _copy_capped(src: BinaryIO, dst: BinaryIO, max_bytes: int | None) -> tuple[int, bool]:
    """Copy until EOF or ``max_bytes``; return (bytes copied, whether the source had more)."""
    n = 0
    while True:
        want = CHUNK if max_bytes is None else min(CHUNK, max_bytes - n)
        if want <= 0:
            return n, bool(src.read(1))
        chunk = src.read(want)
        if not chunk:
            return n, False
        dst.write(chunk)
        n += len(chunk)


def _download(url: str, dst: BinaryIO, *, max_bytes: int | None, timeout_s: float, retries: int,
              backoff_s: float) -> tuple[int, bool]:
    """Stream ``url`` into ``dst`` (rewound on every retry). Raises ImportFailure."""
    last: ImportFailure | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
            dst.seek(0)
            dst.truncate()
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                n, capped = _copy_capped(r, dst, max_bytes)
                expected = r.headers.get("Content-Length")
                if not capped and expected and expected.isdigit() and n < int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - n)
                return n, capped
        except urllib.error.HTTPError as e:
            fail = ImportFailure(f"http_{e.code}", f"HTTP {e.code} {e.reason} for {url}")
            if e.code < 500 and e.code not in _RETRY_STATUSES:
                raise fail from None   # 404, 403, ...: asking again will not help
            last = fail
        except (TimeoutError, socket.timeout) as e:
            last = ImportFailure("timeout", f"nothing from {url} for {timeout_s}s ({type(e).__name__})")
        except http.client.IncompleteRead as e:
            last = ImportFailure("incomplete", f"{url}: connection closed with {e.expected} bytes "
                                 "still to come")
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                last = ImportFailure("timeout", f"nothing from {url} for {timeout_s}s")
            else:
                last = ImportFailure("connection_error", f"{url}: {type(e).__name__}: {reason}")
        print(f"warc import: {last.detail} (attempt {attempt + 1} of {retries + 1})", file=sys.stderr)
    assert last is not None
    raise last


def _head_size(url: str, timeout_s: float) -> int | None:
    """Content-Length of ``url`` from a HEAD request, or None when it cannot be had."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            size = r.headers.get("Content-Length")
            return int(size) if size and size.isdigit() else None
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return None
