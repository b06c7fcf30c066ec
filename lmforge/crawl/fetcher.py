"""The crawl itself: a frontier on disk (``frontier.Frontier``: per-host queues, shallowest
first), asyncio workers over aiohttp, per-host politeness (robots.txt, Crawl-delay, a concurrency
cap), fetching with retries, a size cap and redirects followed by hand, and every outcome
recorded (WARC records or failures.jsonl, and the URL's row in the frontier)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from lmforge.io import atomic_path
from lmforge.crawl.crawl_config import FAILURES_FILE, RETRY_STATUSES, CrawlConfig, CrawlStats
from lmforge.crawl.frontier import Frontier
from lmforge.crawl.robots import _robots_allow_all, _robots_disallow_all, _robots_from_text, _Robots
from lmforge.crawl.urls import decode_html, extract_links, host_allowed, looks_like_html, normalize_url
from lmforge.crawl.warc_io import _Fetched, _WarcOut


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
    def __init__(self, cfg: CrawlConfig, out_dir: Path, frontier: Frontier):
        self.cfg, self.out_dir, self.frontier = cfg, out_dir, frontier
        self.domains = cfg.domains()
        self.stats = CrawlStats(pages_already_stored=frontier.stored_pages())
        self.failures: list[dict[str, Any]] = []
        self.buffer: deque[tuple[str, int]] = deque()  # taken from the frontier, not yet visited
        self.in_flight = 0  # fetches holding budget
        self.busy = 0  # visits running (they may queue links)
        self.changed = asyncio.Event()
        self.hosts: dict[str, _Host] = {}
        self.warc = _WarcOut(out_dir, cfg.warc_max_bytes, cfg.user_agent,
                             before_commit=frontier.flush)
        self.session: aiohttp.ClientSession | None = None
        self.last_progress = 0.0

    # -- frontier

    def enqueue(self, url: str, depth: int) -> None:
        # Links past max_depth are kept too (not fetched): a later run with a larger max_depth
        # goes on from them.
        if host_allowed(url, self.domains):
            self.frontier.add(url, depth)

    def next_url(self) -> tuple[str, int] | None:
        if not self.buffer:
            self.buffer.extend(self.frontier.take(2 * self.cfg.concurrency, self.cfg.max_depth,
                                                  self.cfg.per_host_concurrency))
        return self.buffer.popleft() if self.buffer else None

    def notify(self) -> None:
        """Wake the workers waiting for a URL or for budget."""
        self.changed.set()
        self.changed = asyncio.Event()

    def budget_left(self) -> int:
        return (self.cfg.max_pages - self.stats.pages_already_stored - self.stats.pages_fetched
                - self.in_flight)

    def fail(self, url: str, reason: str, detail: str = "", status: int | None = None,
             attempts: int = 0) -> None:
        self.frontier.mark_failed(url)
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
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self.warc.close()
                # What was taken but not fetched waits for the next run.
                self.frontier.release_taken()
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
        """Visit URLs until none is left or the budget is spent. While fetches in flight hold
        the rest of the budget, wait: if some of them fail, there is budget again."""
        while True:
            item = self.next_url() if self.budget_left() > 0 else None
            if item is None:
                if self.busy == 0:  # nothing runs that could queue a URL or free budget
                    self.notify()
                    return
                await self.changed.wait()
                continue
            self.busy += 1
            try:
                await self.visit(*item)
            except Exception as e:  # one bad page never stops the crawl; it is recorded
                self.fail(item[0], "error", f"{type(e).__name__}: {e}")
            finally:
                self.busy -= 1
                self.notify()

    async def visit(self, url: str, depth: int) -> None:
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
                  f"{self.stats.failures} failures, {self.frontier.queued()} queued", file=sys.stderr)

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
            if page.warc:
                self.frontier.mark_stored(current, page.warc, 200 <= page.status < 300, depth)
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
            if self.frontier.known(target):  # fetched, queued or stored on its own
                return None
            self.frontier.claim(target, depth)
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
            page.warc = self.warc.write_exchange(url, req_headers, page)
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
