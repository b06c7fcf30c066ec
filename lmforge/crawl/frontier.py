"""The crawl frontier and its seen set, on disk: one SQLite file in the crawl directory.

A crawl of ten million URLs cannot hold ten million URLs in memory, and a killed crawl must not
start again from its seeds. So every URL the crawl has met is a row of ``frontier.sqlite``
(stdlib ``sqlite3``, WAL journal), with what became of it:

    queued   waiting; taken per host in (depth, discovery order): a partial index on
             (host, depth, seq) over the queued rows is each host's queue. The few URLs the
             running crawl has taken and not finished are held in memory, not written
    taken    a redirect target being fetched in its chain (queued again when a crawl starts)
    stored   its record is in the WARC file ``warc`` names; a 2xx ``page`` counts towards
             ``max_pages``
    failed   recorded in failures.jsonl; asked again by the next run, as before

Only a bounded buffer of rows is in memory. Writes are batched (one transaction per
``batch`` rows, or per take when new URLs were found) and always flushed before a WARC file is
renamed into place, so a URL marked
stored is in a WARC that exists, or in one that a kill lost: a crawl that starts finds the WARC
files its rows name missing and queues those URLs again. A URL is therefore never stored twice
and never lost, whenever the crawl was killed.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

FRONTIER_FILE = "frontier.sqlite"
QUEUED, TAKEN, STORED, FAILED = 0, 1, 2, 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    url   TEXT PRIMARY KEY,
    host  TEXT NOT NULL,
    depth INTEGER NOT NULL,
    seq   INTEGER NOT NULL,
    state INTEGER NOT NULL,
    warc  INTEGER,
    page  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS host_queue ON urls (host, depth, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS by_warc ON urls (warc) WHERE warc IS NOT NULL;
CREATE TABLE IF NOT EXISTS hosts (host TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS warcs (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
"""


def url_host(url: str) -> str:
    """The queue a URL waits in: its host and port (what politeness is counted per). URLs here
    are normalized (``scheme://netloc/...``), so no parsing is needed."""
    return url.split("/", 3)[2]


class Frontier:
    """The URLs of one crawl directory (see the module doc)."""

    def __init__(self, path: str | Path, batch: int = 10_000, cache_kib: int = 8192):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)  # transactions by hand
        # The file sits in an artifact store that may be shared: its schema (a planted trigger or
        # view) may not call functions with side effects.
        self.db.execute("PRAGMA trusted_schema=OFF")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut loses the last commits, never the file
        self.db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")  # SQLite's page cache bounds its memory
        self.db.executescript(_SCHEMA)
        self.batch = batch
        self._pending: dict[str, tuple[str, int, int, int | None, int]] = {}  # url -> row to write
        self._new: dict[str, int] = {}  # url -> depth, to add if absent
        self._seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM urls").fetchone()[0]
        self._hosts = [h for (h,) in self.db.execute("SELECT host FROM hosts ORDER BY host")]
        self._known_hosts = set(self._hosts)
        self._idle_hosts: set[str] = set()  # no queued URL at the last look (until one is added)
        self._cursor = 0
        self._warc_ids: dict[str, int] = {}
        # Taken (queued on disk) and pending rows, per host: what a host's next take skips.
        self._taken: dict[str, str] = {}
        self._held: Counter[str] = Counter()

    # -- writes, batched -------------------------------------------------------------------

    def add(self, url: str, depth: int) -> None:
        """Queue ``url`` unless it is already known (queued, taken, stored or failed)."""
        if url in self._pending or self._new.get(url, depth + 1) <= depth:
            return
        self._new[url] = depth
        self._idle_hosts.discard(url_host(url))
        self._maybe_flush()

    def add_many(self, items: Iterable[tuple[str, int]]) -> None:
        for url, depth in items:
            self.add(url, depth)

    def claim(self, url: str, depth: int) -> None:
        """Record ``url`` as taken by this crawl (a redirect target, fetched in its chain)."""
        self._set(url, depth, TAKEN, None, 0)

    def mark_stored(self, url: str, warc_name: str, page: bool, depth: int = 0) -> None:
        self._set(url, depth, STORED, self._warc_id(warc_name), int(page))

    def mark_failed(self, url: str, depth: int = 0) -> None:
        self._set(url, depth, FAILED, None, 0)

    def _set(self, url: str, depth: int, state: int, warc: int | None, page: int) -> None:
        self._new.pop(url, None)
        host = url_host(url)
        if self._taken.pop(url, None) is None and url not in self._pending:
            self._held[host] += 1
        self._pending[url] = (host, depth, state, warc, page)
        self._maybe_flush()

    def _warc_id(self, name: str) -> int:
        if name not in self._warc_ids:
            self.db.execute("INSERT OR IGNORE INTO warcs (name) VALUES (?)", (name,))
            self._warc_ids[name] = self.db.execute("SELECT id FROM warcs WHERE name = ?",
                                                   (name,)).fetchone()[0]
        return self._warc_ids[name]

    def _maybe_flush(self) -> None:
        if len(self._pending) + len(self._new) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write every pending change in one transaction."""
        if not self._pending and not self._new:
            return
        new_hosts = []
        rows = []
        for url, depth in self._new.items():
            host = url_host(url)
            self._seq += 1
            rows.append((url, host, depth, self._seq))
            if host not in self._known_hosts:
                self._known_hosts.add(host)
                self._hosts.append(host)
                new_hosts.append((host,))
        updates = []
        for url, (host, depth, state, warc, page) in self._pending.items():
            self._seq += 1
            updates.append((url, host, depth, self._seq, state, warc, page))
            if host not in self._known_hosts:
                self._known_hosts.add(host)
                self._hosts.append(host)
                new_hosts.append((host,))
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO hosts (host) VALUES (?)", new_hosts)
            # A URL met again keeps its row: the seen set is the primary key.
            self.db.executemany("INSERT OR IGNORE INTO urls (url, host, depth, seq, state) "
                                "VALUES (?, ?, ?, ?, 0)", rows)
            self.db.executemany(
                "INSERT INTO urls (url, host, depth, seq, state, warc, page) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (url) DO UPDATE SET "
                "state = excluded.state, warc = excluded.warc, page = excluded.page", updates)
        self._new.clear()
        self._pending.clear()
        self._held = Counter(self._taken.values())

    # -- reads ---------------------------------------------------------------------------

    def known(self, url: str) -> bool:
        """Whether the crawl has met ``url`` (the seen set)."""
        if url in self._new or url in self._pending:
            return True
        return self.db.execute("SELECT 1 FROM urls WHERE url = ?", (url,)).fetchone() is not None

    def take(self, n: int, max_depth: int, per_host: int) -> list[tuple[str, int]]:
        """Up to ``n`` queued URLs of depth <= ``max_depth``, taken: at most ``per_host`` from
        one host, the hosts in turn, each host's shallowest and oldest first. A taken URL stays
        queued on disk until it is marked stored or failed (a kill loses nothing)."""
        if self._new:
            self.flush()  # URLs found since the last take join their queues
        out: list[tuple[str, int]] = []
        looked = 0
        while len(out) < n and looked < len(self._hosts):
            host = self._hosts[self._cursor]
            self._cursor = (self._cursor + 1) % len(self._hosts)
            looked += 1
            if host in self._idle_hosts:
                continue
            want = min(per_host, n - len(out))
            rows = self.db.execute(
                "SELECT url, depth FROM urls WHERE state = 0 AND host = ? AND depth <= ? "
                "ORDER BY depth, seq LIMIT ?", (host, max_depth, want + self._held[host])
            ).fetchall()
            rows = [r for r in rows if r[0] not in self._taken and r[0] not in self._pending][:want]
            if not rows:
                if not self._held[host]:
                    self._idle_hosts.add(host)
                continue
            for url, _ in rows:
                self._taken[url] = host
            self._held[host] += len(rows)
            out.extend(rows)
        return out

    def stored_pages(self) -> int:
        self.flush()
        return self.db.execute("SELECT COUNT(*) FROM urls WHERE state = 2 AND page = 1").fetchone()[0]

    def queued(self) -> int:
        self.flush()
        return self.db.execute("SELECT COUNT(*) FROM urls WHERE state = 0").fetchone()[0]

    def stored_urls(self) -> set[str]:
        """The URLs stored (for tests and small crawls: this is the one read that is not bounded)."""
        self.flush()
        return {u for (u,) in self.db.execute("SELECT url FROM urls WHERE state = 2")}

    # -- a crawl starts, a crawl ends ------------------------------------------------------

    def recover(self, complete_warcs: Iterable[str]) -> int:
        """Make the rows agree with the WARC files there are: URLs stored in a WARC that a kill
        lost, taken by a crawl that is gone, or failed last time are queued again. Returns how
        many were queued again."""
        self.flush()
        present = set(complete_warcs)
        lost = [i for i, name in self.db.execute("SELECT id, name FROM warcs") if name not in present]
        with self.db:
            self.db.execute("BEGIN")
            n = 0
            for warc_id in lost:
                n += self.db.execute("UPDATE urls SET state = 0, warc = NULL, page = 0 "
                                     "WHERE warc = ?", (warc_id,)).rowcount
                self.db.execute("DELETE FROM warcs WHERE id = ?", (warc_id,))
            n += self.db.execute("UPDATE urls SET state = 0 WHERE state IN (1, 3)").rowcount
        self._idle_hosts.clear()
        self._warc_ids.clear()
        return n

    def release_taken(self) -> None:
        """Forget what was taken and not finished: it is still queued on disk."""
        self._taken.clear()
        self.flush()

    def close(self) -> None:
        self.flush()
        self.db.close()  # the last connection checkpoints the WAL into the file and removes it
