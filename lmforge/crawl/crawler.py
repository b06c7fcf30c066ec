"""A polite asynchronous web crawler that writes WARC files, as Common Crawl does.

    seeds -> frontier (deduplicated, breadth first) -> workers (asyncio + aiohttp)
          -> robots.txt and per-host politeness -> fetch (retries, size cap, redirects by hand)
          -> WARC request/response records  +  failures.jsonl  +  links back into the frontier

Output in ``out_dir``:

- ``crawl-<time>-<tag>.warc.gz``: gzip WARC, one ``request`` and one ``response`` record per HTTP
  exchange that succeeded (2xx) or redirected (3xx), readable by ``warcio.ArchiveIterator``. It is
  written under a hidden temporary name and renamed when the crawl ends, so a file with the final
  name is always complete. Bodies are stored decoded (no Content-Encoding), capped at
  ``max_bytes`` with ``WARC-Truncated: length`` where the cap cut them.
- ``failures.jsonl``: every URL this run could not fetch, with a reason (``robots_disallowed``,
  ``timeout``, ``http_500``, ``content_type``, ``redirect_loop``, ...). Nothing fails silently.

Resume: the WARCs already in ``out_dir`` are read first. A URL stored there is never fetched
again; its stored links still feed the frontier, so a second run with a larger ``max_pages``
continues where the first stopped, and a run after a crash finishes the job. ``max_pages`` counts
the pages in ``out_dir``, not the pages of one run.

Politeness: robots.txt is fetched once per host and obeyed (``urllib.robotparser``, RFC 9309: a
4xx robots.txt allows everything, an unreachable one disallows everything), its ``Crawl-delay``
spaces the requests to that host, and so does ``per_host_delay_s``; at most
``per_host_concurrency`` requests are open to one host at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import io
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.robotparser
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from pydantic import BaseModel, Field, field_validator
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, claim_output_dir, temp_name_prefix

FAILURES_FILE = "failures.jsonl"
# Status codes worth asking again: the server may recover (RFC 9110 says so for 503 and 429).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Headers that describe the bytes on the wire, not the decoded body the WARC stores. They are kept
# under an X-Crawler- prefix, as Common Crawl does, so the record still says what was sent.
_WIRE_HEADERS = ("content-encoding", "transfer-encoding", "content-length")


class CrawlConfig(BaseModel):
    """What to crawl and how politely. Defaults are the ``tiny`` preset (the local pydoc server)."""

    seeds: list[str] = Field(default_factory=list, description="start URLs (http/https)")
    max_pages: int = Field(300, ge=1, description="pages (2xx responses) to have in out_dir")
    max_depth: int = Field(3, ge=0, description="links followed from a seed; 0 = seeds only")
    allowed_domains: list[str] | None = Field(
        None, description="hosts (and their subdomains) to stay on; default: the seeds' hosts")
    concurrency: int = Field(8, ge=1, description="requests open at once, overall")
    per_host_concurrency: int = Field(4, ge=1, description="requests open at once to one host")
    per_host_delay_s: float = Field(
        0.0, ge=0, description="least time between two request starts to one host; robots.txt "
        "Crawl-delay raises it. 0 suits the loopback demo; use >= 1 on the real web")
    max_crawl_delay_s: float = Field(30.0, ge=0, description="cap on a robots.txt Crawl-delay")
    timeout_s: float = Field(10.0, gt=0, description="whole-request timeout (connect + body)")
    retries: int = Field(2, ge=0, description="extra attempts after a 5xx/429, timeout or "
                         "connection error")
    backoff_s: float = Field(0.5, ge=0, description="first retry waits this, then doubles")
    max_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="body bytes kept per response; "
                           "reading stops there and the WARC record is marked truncated")
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["text/html", "application/xhtml+xml"],
        description="MIME types stored; other 2xx responses are recorded as failures")
    max_redirects: int = Field(5, ge=0, description="redirects followed from one URL")
    user_agent: str = "lmforge-crawler/0.1 (+https://github.com/lmforge/lmforge)"
    respect_robots: bool = True
    warc_max_bytes: int = Field(1024 ** 3, ge=1024 * 1024,
                                description="start a new WARC file after this many bytes")

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[str]) -> list[str]:
        out = []
        for s in seeds:
            try:
                out.append(normalize_url(s))
            except ValueError as e:
                raise ValueError(f"bad seed URL {s!r}: {e}") from None
        return out

    def domains(self) -> list[str]:
        if self.allowed_domains:
            return [d.lower().strip(".") for d in self.allowed_domains]
        return sorted({urlsplit(s).hostname or "" for s in self.seeds})


@dataclass
class CrawlStats:
    pages_fetched: int = 0          # 2xx responses stored by this run
    pages_already_stored: int = 0   # found in out_dir's WARCs (resume), not fetched again
    redirects: int = 0              # 3xx responses stored
    requests: int = 0               # HTTP requests sent, retries and robots.txt included
    bytes: int = 0                  # body bytes stored by this run
    truncated: int = 0              # responses cut at max_bytes
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    warc_files: list[str] = field(default_factory=list)   # written by this run
    failures_path: str = ""

    @property
    def failures(self) -> int:
        return sum(self.failures_by_reason.values())

    @property
    def pages_per_s(self) -> float:
        return self.pages_fetched / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_metadata(self) -> dict[str, Any]:
        return {
            "pages_fetched": self.pages_fetched,
            "pages_already_stored": self.pages_already_stored,
            "redirects": self.redirects,
            "requests": self.requests,
            "bytes": self.bytes,
            "mb": round(self.bytes / 1e6, 3),
            "truncated": self.truncated,
            "failures": self.failures,
            "failures_by_reason": dict(sorted(self.failures_by_reason.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "pages_per_s": round(self.pages_per_s, 2),
            "warc_files": list(self.warc_files),
            "failures_path": self.failures_path,
        }


# --------------------------------------------------------------------------- URLs and charsets

def normalize_url(url: str) -> str:
    """The canonical form the frontier deduplicates on (and document ids are hashed from).

    Lower-case scheme and host, no default port, no fragment, ``/`` for an empty path. Nothing
    else changes: query parameter order and percent-encoding can matter to a server.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname  # lower-cased by urlsplit
    if not host:
        raise ValueError(f"no host in URL: {url!r}")
    port = parts.port  # raises ValueError on a bad port
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    netloc = host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    if parts.username or parts.password:
        userinfo = parts.username or ""
        if parts.password:
            userinfo += f":{parts.password}"
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))


def detect_charset(body: bytes, content_type: str | None = None) -> str | None:
    """The encoding a page declares: byte-order mark, then HTTP header, then ``<meta>``.

    None when it declares none, or names one Python does not know. Same order as the WHATWG
    encoding sniffing algorithm, without the statistical guessing.
    """
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name
    candidates = []
    if content_type:
        m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.I)
        if m:
            candidates.append(m.group(1))
    m = _META_CHARSET.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii", "ignore"))
    for name in candidates:
        try:
            return codecs.lookup(name).name
        except LookupError:
            continue
    return None


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str, int]:
    """Decode a page: ``(text, encoding, number of undecodable bytes replaced)``.

    Declared charset first; with none, UTF-8 if the bytes are valid UTF-8, else windows-1252 (the
    web's historical default). Never raises: bad bytes become U+FFFD and are counted, so callers
    decide how much damage they accept.
    """
    declared = detect_charset(body, content_type)
    if declared is None:
        try:
            return body.decode("utf-8"), "utf-8", 0
        except UnicodeDecodeError:
            declared = "cp1252"
    if declared.startswith("utf-8") and body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8):]
    try:
        return body.decode(declared), declared, 0
    except UnicodeDecodeError:
        _bad_bytes.n = 0
        text = body.decode(declared, errors=_COUNTING_ERRORS)
        return text, declared, _bad_bytes.n


# An error handler that replaces like "replace" and counts the bytes it replaced (per thread).
_COUNTING_ERRORS = "lmforge-count-replace"
_bad_bytes = threading.local()


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    _bad_bytes.n = getattr(_bad_bytes, "n", 0) + (err.end - err.start)
    return "\ufffd", err.end


codecs.register_error(_COUNTING_ERRORS, _count_and_replace)


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_BASE_HREF = re.compile(rb"""<base\s[^>]*href\s*=\s*["']([^"']+)["']""", re.I)


def extract_links(body: bytes, base_url: str, content_type: str | None = None) -> list[str]:
    """Normalized absolute http(s) URLs of ``<a>``, ``<area>``, ``<frame>`` and ``<iframe>``."""
    import lxml.html  # trafilatura's dependency; imported here so the module loads fast

    if not body.strip():
        return []
    text, _, _ = decode_html(body, content_type)
    # lxml refuses a str that still declares its byte encoding (XHTML's <?xml ... ?>).
    text = _XML_DECLARATION.sub("", text, count=1)
    try:
        doc = lxml.html.document_fromstring(text)
    except (ValueError, lxml.etree.ParserError):
        return []
    base = base_url
    m = _BASE_HREF.search(body[:8192])
    if m:
        base = urljoin(base_url, m.group(1).decode("ascii", "ignore"))
    links, seen = [], set()
    for href in doc.xpath("//a/@href | //area/@href | //frame/@src | //iframe/@src"):
        href = str(href).strip()
        if not href or href.startswith(("#", "javascript:", "mailto:", "data:")):
            continue
        try:
            url = normalize_url(urljoin(base, href))
        except ValueError:
            continue
        if url not in seen:
            seen.add(url)
            links.append(url)
    return links


def looks_like_html(body: bytes) -> bool:
    """Sniff a body sent without Content-Type the way browsers do: by its first tag."""
    head = body[:1024].lstrip().lower()
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):].lstrip()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def host_allowed(url: str, domains: Iterable[str]) -> bool:
    host = urlsplit(url).hostname or ""
    return any(host == d or host.endswith("." + d) for d in domains)


# --------------------------------------------------------------------------- robots.txt

def _agent_token(user_agent: str) -> str:
    return user_agent.split("/")[0].strip().lower()


def parse_crawl_delay(robots_txt: str, user_agent: str) -> float | None:
    """The Crawl-delay of the group that applies to ``user_agent`` (fractions allowed).

    ``RobotFileParser.crawl_delay`` accepts whole seconds only; sites write ``0.5`` too.
    """
    token = _agent_token(user_agent)
    groups: list[tuple[list[str], float | None]] = []
    agents: list[str] = []
    delay: float | None = None
    in_rules = False
    for raw in robots_txt.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (x.strip() for x in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:  # a user-agent line after rules starts a new group
                groups.append((agents, delay))
                agents, delay, in_rules = [], None, False
            agents.append(value.lower())
        else:
            in_rules = True
            if key == "crawl-delay":
                with contextlib.suppress(ValueError):
                    delay = float(value)
    if agents:
        groups.append((agents, delay))
    specific = [d for a, d in groups if any(x != "*" and x in token for x in a)]
    default = [d for a, d in groups if "*" in a]
    for d in specific or default:
        if d is not None and d >= 0:
            return d
    return None


@dataclass
class _Robots:
    parser: urllib.robotparser.RobotFileParser
    delay: float | None = None
    unavailable: str = ""   # why robots.txt could not be read (then nothing may be fetched)


def _robots_from_text(text: str, user_agent: str) -> _Robots:
    rp = urllib.robotparser.RobotFileParser()
    rp.parse(text.splitlines())
    return _Robots(rp, parse_crawl_delay(text, user_agent))


def _robots_allow_all() -> _Robots:
    rp = urllib.robotparser.RobotFileParser()
    rp.allow_all = True
    return _Robots(rp)


def _robots_disallow_all(reason: str) -> _Robots:
    rp = urllib.robotparser.RobotFileParser()
    rp.disallow_all = True
    return _Robots(rp, unavailable=reason)


# --------------------------------------------------------------------------- WARC in and out

@dataclass
class _Stored:
    """What an earlier run stored for one URL: its links, or where it redirected."""
    links: list[str]
    redirect_to: str | None = None


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
                    stored[url] = _Stored([], normalize_url(urljoin(url, loc or "")))
            elif 200 <= status < 300:
                ctype = rec.http_headers.get_header("Content-Type")
                stored[url] = _Stored(extract_links(rec.content_stream().read(), url, ctype))


class _WarcOut:
    """Appends records to a hidden temporary WARC; ``close()`` renames it into place."""

    def __init__(self, out_dir: Path, max_bytes: int, user_agent: str):
        self.out_dir, self.max_bytes, self.user_agent = out_dir, max_bytes, user_agent
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
        self._writer = WARCWriter(self._fh, gzip=True)
        info = {"software": "lmforge crawler", "format": "WARC File Format 1.1",
                "http-header-user-agent": self.user_agent,
                "robots": "obey", "operator": "lmforge"}
        self._writer.write_record(self._writer.create_warcinfo_record(self._final.name, info))

    def write_exchange(self, url: str, request_headers: list[tuple[str, str]], response: "_Fetched") -> None:
        if self._writer is None:
            self._open()
        assert self._writer is not None and self._fh is not None
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

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        assert self._tmp is not None and self._final is not None
        os.replace(self._tmp, self._final)
        self.finished.append(self._final)
        self._fh = self._writer = self._tmp = self._final = None


# --------------------------------------------------------------------------- fetching

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


class _Failure(Exception):
    def __init__(self, reason: str, detail: str = "", status: int | None = None, attempts: int = 1):
        super().__init__(reason)
        self.reason, self.detail, self.status, self.attempts = reason, detail, status, attempts


@dataclass
class _Host:
    sem: asyncio.Semaphore
    lock: asyncio.Lock
    robots: _Robots | None = None
    delay: float = 0.0
    next_start: float = 0.0


class _Crawler:
    def __init__(self, cfg: CrawlConfig, out_dir: Path, stored: dict[str, _Stored]):
        self.cfg, self.out_dir, self.stored = cfg, out_dir, stored
        self.domains = cfg.domains()
        self.stats = CrawlStats(pages_already_stored=sum(1 for s in stored.values() if s.redirect_to is None))
        self.failures: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.seen: set[str] = set()
        self.deferred: list[tuple[str, int]] = []
        self.in_flight = 0
        self.hosts: dict[str, _Host] = {}
        self.warc = _WarcOut(out_dir, cfg.warc_max_bytes, cfg.user_agent)
        self.session: aiohttp.ClientSession | None = None
        self.last_progress = 0.0

    # -- frontier

    def enqueue(self, url: str, depth: int) -> None:
        if url in self.seen or depth > self.cfg.max_depth or not host_allowed(url, self.domains):
            return
        self.seen.add(url)
        self.queue.put_nowait((url, depth))

    def budget_left(self) -> int:
        return (self.cfg.max_pages - self.stats.pages_already_stored - self.stats.pages_fetched
                - self.in_flight)

    def fail(self, url: str, reason: str, detail: str = "", status: int | None = None,
             attempts: int = 0) -> None:
        self.stats.failures_by_reason[reason] = self.stats.failures_by_reason.get(reason, 0) + 1
        self.failures.append({"url": url, "reason": reason, "detail": detail[:500], "status": status,
                              "attempts": attempts, "time": _now_iso()})

    # -- main loop

    async def run(self) -> CrawlStats:
        start = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency,
                                         limit_per_host=self.cfg.per_host_concurrency)
        # trust_env=False: a proxy set in the environment must not capture loopback crawls.
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False,
                                         cookie_jar=aiohttp.DummyCookieJar(),
                                         headers={"User-Agent": self.cfg.user_agent}) as session:
            self.session = session
            for seed in self.cfg.seeds:
                self.enqueue(seed, 0)
            workers = [asyncio.create_task(self.worker()) for _ in range(self.cfg.concurrency)]
            try:
                while True:
                    await self.queue.join()
                    # URLs put aside while in-flight fetches held the budget: if some of those
                    # fetches failed, there is budget again for them.
                    if self.deferred and self.budget_left() > 0:
                        for item in self.deferred:
                            self.queue.put_nowait(item)
                        self.deferred = []
                        continue
                    break
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self.warc.close()
                self.stats.elapsed_s = time.monotonic() - start
                self.stats.warc_files = [str(p) for p in self.warc.finished]
                self._write_failures()
        return self.stats

    def _write_failures(self) -> None:
        path = self.out_dir / FAILURES_FILE
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                for row in self.failures:
                    f.write(json.dumps(row, sort_keys=True) + "\n")
        self.stats.failures_path = str(path)

    async def worker(self) -> None:
        while True:
            url, depth = await self.queue.get()
            try:
                await self.visit(url, depth)
            except Exception as e:  # one bad page never stops the crawl; it is recorded
                self.fail(url, "error", f"{type(e).__name__}: {e}")
            finally:
                self.queue.task_done()

    async def visit(self, url: str, depth: int) -> None:
        if url in self.stored:  # resume: stored by an earlier run, follow its links from disk
            s = self.stored[url]
            if s.redirect_to:
                self.enqueue(s.redirect_to, depth)
            for link in s.links:
                self.enqueue(link, depth + 1)
            return
        if self.budget_left() <= 0:
            if self.in_flight > 0:
                self.deferred.append((url, depth))
            return
        self.in_flight += 1
        try:
            result = await self.fetch_following_redirects(url, depth)
        finally:
            self.in_flight -= 1
        if result is None:
            return
        final_url, page = result
        self.stats.pages_fetched += 1
        self.stats.bytes += len(page.body)
        self.stats.truncated += page.truncated
        for link in extract_links(page.body, final_url, _header(page.headers, "content-type")):
            self.enqueue(link, depth + 1)
        self._progress()

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self.last_progress >= 5:
            self.last_progress = now
            print(f"crawl: {self.stats.pages_fetched} pages, {self.stats.bytes / 1e6:.1f} MB, "
                  f"{self.stats.failures} failures, {self.queue.qsize()} queued", file=sys.stderr)

    async def fetch_following_redirects(self, url: str, depth: int) -> tuple[str, _Fetched] | None:
        """Fetch ``url``, following redirects by hand so that each hop is stored and checked."""
        chain = [url]
        current = url
        while True:
            try:
                page = await self.fetch(current)
            except _Failure as f:
                self.fail(current, f.reason, f.detail, f.status, f.attempts)
                return None
            if not (300 <= page.status < 400):
                return current, page
            self.stats.redirects += 1
            location = _header(page.headers, "location")
            if not location:
                self.fail(current, "bad_redirect", "3xx without Location", page.status)
                return None
            try:
                target = normalize_url(urljoin(current, location or ""))
            except ValueError:
                self.fail(current, "bad_redirect", f"Location: {location!r}", page.status)
                return None
            if target in chain:
                self.fail(url, "redirect_loop", " -> ".join(chain + [target]), page.status)
                return None
            if len(chain) > self.cfg.max_redirects:
                self.fail(url, "too_many_redirects", " -> ".join(chain + [target]), page.status)
                return None
            if not host_allowed(target, self.domains):
                self.fail(url, "redirect_offsite", target, page.status)
                return None
            if target in self.seen or target in self.stored:
                self.enqueue(target, depth)  # fetched, queued or stored on its own
                return None
            self.seen.add(target)
            chain.append(target)
            current = target

    async def host(self, url: str) -> _Host:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        h = self.hosts.get(origin)
        if h is None:
            h = self.hosts[origin] = _Host(asyncio.Semaphore(self.cfg.per_host_concurrency),
                                           asyncio.Lock(), delay=self.cfg.per_host_delay_s)
        if h.robots is None:
            async with h.lock:  # one robots.txt fetch per host, the others wait for it
                if h.robots is None:
                    h.robots = (await self.fetch_robots(origin) if self.cfg.respect_robots
                                else _robots_allow_all())
                    if h.robots.delay is not None:
                        h.delay = max(h.delay, min(h.robots.delay, self.cfg.max_crawl_delay_s))
        return h

    async def fetch_robots(self, origin: str) -> _Robots:
        assert self.session is not None
        url = origin + "/robots.txt"
        self.stats.requests += 1
        try:
            async with self.session.get(url, max_redirects=self.cfg.max_redirects) as r:
                body = await r.content.read(512 * 1024)
                if 400 <= r.status < 500:
                    return _robots_allow_all()
                if r.status >= 500:
                    return _robots_disallow_all(f"robots.txt answered {r.status}")
                text, _, _ = decode_html(body, r.headers.get("Content-Type"))
                # A server without robots.txt that answers every path with an HTML page (pydoc
                # does) has no rules, not rules made of HTML.
                if r.content_type == "text/html" and text.lstrip().startswith("<"):
                    return _robots_allow_all()
                return _robots_from_text(text, self.cfg.user_agent)
        except (aiohttp.ClientError, TimeoutError) as e:
            return _robots_disallow_all(f"robots.txt unreachable: {type(e).__name__}: {e}")

    async def fetch(self, url: str) -> _Fetched:
        """One URL with politeness and retries. Returns a 2xx/3xx response or raises _Failure."""
        h = await self.host(url)
        assert h.robots is not None
        if not h.robots.parser.can_fetch(self.cfg.user_agent, url):
            if h.robots.unavailable:
                raise _Failure("robots_unavailable", h.robots.unavailable, attempts=0)
            raise _Failure("robots_disallowed", attempts=0)
        attempts = self.cfg.retries + 1
        last: _Failure | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            async with h.sem:
                await self._wait_turn(h)
                try:
                    page = await self._get(url)
                except _Failure as f:  # not worth retrying (content type, 4xx)
                    f.attempts = attempt + 1
                    raise
                except TimeoutError as e:
                    last = _Failure("timeout", f"no complete answer within {self.cfg.timeout_s}s "
                                    f"({type(e).__name__})")
                    continue
                except aiohttp.ClientError as e:
                    last = _Failure("connection_error", f"{type(e).__name__}: {e}")
                    continue
            if page.status in RETRY_STATUSES:
                last = _Failure(f"http_{page.status}", page.reason, page.status)
                continue
            return page
        assert last is not None
        last.attempts = attempts
        raise last

    async def _wait_turn(self, h: _Host) -> None:
        """Space request starts to one host by its delay (robots Crawl-delay or configured)."""
        if h.delay <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, h.next_start)
        h.next_start = slot + h.delay
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _get(self, url: str) -> _Fetched:
        assert self.session is not None
        self.stats.requests += 1
        async with self.session.get(url, allow_redirects=False) as r:
            # aiohttp reports a missing Content-Type as application/octet-stream; tell them apart.
            ctype = (r.content_type or "").lower() if "Content-Type" in r.headers else ""
            is_redirect = 300 <= r.status < 400 and "Location" in r.headers
            if 200 <= r.status < 300 and ctype and ctype not in self.cfg.allowed_content_types:
                raise _Failure("content_type", ctype, r.status)
            if 400 <= r.status < 500 and r.status not in RETRY_STATUSES:
                raise _Failure(f"http_{r.status}", r.reason or "", r.status)
            body, truncated = b"", False
            if not is_redirect and r.status not in RETRY_STATUSES:
                body, truncated = await _read_capped(r, self.cfg.max_bytes)
            if 200 <= r.status < 300 and not ctype and not looks_like_html(body):
                raise _Failure("content_type", "(none, and the body is not HTML)", r.status)
            page = _Fetched(
                status=r.status, reason=r.reason or "",
                http_version=f"HTTP/{r.version.major}.{r.version.minor}" if r.version else "HTTP/1.1",
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in r.raw_headers],
                body=body, truncated=truncated, content_type=ctype, date=_now_iso())
            req_headers = list(r.request_info.headers.items())
        if page.status < 400:
            self.warc.write_exchange(url, req_headers, page)
        return page


async def _read_capped(r: aiohttp.ClientResponse, max_bytes: int) -> tuple[bytes, bool]:
    """Read at most ``max_bytes`` of the body; say whether there was more."""
    chunks, n = [], 0
    async for chunk in r.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        n += len(chunk)
        if n > max_bytes:
            return b"".join(chunks)[:max_bytes], True  # leaving the block closes the connection
    return b"".join(chunks), False


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- entry points

async def crawl_async(cfg: CrawlConfig, out_dir: str | os.PathLike) -> CrawlStats:
    """``crawl`` for callers already inside an event loop."""
    if not cfg.seeds:
        raise ValueError("CrawlConfig.seeds is empty: give at least one start URL")
    # Written in place (resume reads it): a new, empty or lmforge-made directory only.
    out = claim_output_dir(out_dir)
    stored = _load_stored(out)
    return await _Crawler(cfg, out, stored).run()


def crawl(cfg: CrawlConfig, out_dir: str | os.PathLike) -> CrawlStats:
    """Crawl ``cfg.seeds`` into ``out_dir`` (WARC + failures.jsonl); see the module docstring."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(crawl_async(cfg, out_dir))
    # Called from inside a running loop (a notebook, an async framework): crawl on a thread.
    result: list[CrawlStats] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(crawl_async(cfg, out_dir)))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def main(argv: list[str] | None = None) -> int:
    d = CrawlConfig()
    p = argparse.ArgumentParser(prog="lmforge crawl", description=(
        "Crawl a site politely into gzip WARC files (plus failures.jsonl). Run it again on the "
        "same --out to resume: stored URLs are not fetched again."))
    p.add_argument("--seed", action="append", default=[], help="start URL (repeatable)")
    p.add_argument("--serve-python-docs", action="store_true",
                   help="start this Python's pydoc server on loopback and crawl it (adds a seed)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-pages", type=int, default=d.max_pages, help="pages to have in --out (default: %(default)s)")
    p.add_argument("--max-depth", type=int, default=d.max_depth, help="link depth from the seeds (default: %(default)s)")
    p.add_argument("--allowed-domain", action="append", default=None,
                   help="host to stay on, subdomains included (repeatable; default: the seeds' hosts)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="open requests overall (default: %(default)s)")
    p.add_argument("--per-host-concurrency", type=int, default=d.per_host_concurrency,
                   help="open requests per host (default: %(default)s)")
    p.add_argument("--delay", type=float, default=d.per_host_delay_s,
                   help="seconds between request starts to one host (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request (default: %(default)s)")
    p.add_argument("--retries", type=int, default=d.retries, help="retries on 5xx/timeouts (default: %(default)s)")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help="body bytes kept per response (default: %(default)s)")
    p.add_argument("--user-agent", default=d.user_agent, help="User-Agent header and robots.txt identity")
    p.add_argument("--ignore-robots", action="store_true", help="do not fetch or obey robots.txt")
    p.add_argument("--warc", action="append", default=[], metavar="PATH_OR_URL",
                   help="import this WARC file, directory of WARCs, file:// or http(s) URL (e.g. a "
                   "Common Crawl segment) into --out instead of crawling (repeatable; uses --retries)")
    args = p.parse_args(argv)

    if args.warc:  # existing WARCs as the crawl: lmforge.crawl.warc_source
        if args.seed or args.serve_python_docs:
            print("lmforge crawl: --warc imports instead of crawling; leave out --seed and "
                  "--serve-python-docs", file=sys.stderr)
            return 2
        from lmforge.crawl.warc_source import run_cli
        return run_cli(args.warc, args.out, retries=args.retries, max_bytes=None, timeout_s=60.0,
                       prog=p.prog)

    def run(seeds: list[str]) -> int:
        try:
            cfg = CrawlConfig(
                seeds=seeds, max_pages=args.max_pages, max_depth=args.max_depth,
                allowed_domains=args.allowed_domain, concurrency=args.concurrency,
                per_host_concurrency=args.per_host_concurrency, per_host_delay_s=args.delay,
                timeout_s=args.timeout, retries=args.retries, max_bytes=args.max_bytes,
                user_agent=args.user_agent, respect_robots=not args.ignore_robots)
            if not cfg.seeds:
                raise ValueError("give at least one --seed (or --serve-python-docs)")
        except ValueError as e:
            msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            print(f"lmforge crawl: {msg}", file=sys.stderr)
            return 2
        stats = crawl(cfg, args.out)
        print(json.dumps(stats.to_metadata(), indent=2))
        return 0

    if args.serve_python_docs:
        from lmforge.crawl.local_site import serve_python_docs
        with serve_python_docs() as url:
            return run(args.seed + [url])
    return run(args.seed)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('crawl', main, sys.argv[1:]))
