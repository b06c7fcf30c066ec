"""What a crawl does (:class:`CrawlConfig`, every field described once: the ``lmforge crawl``
flags and the Dagster launchpad are generated from it) and what it counts (:class:`CrawlStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from lmforge.crawl.urls import normalize_url

FAILURES_FILE = "failures.jsonl"
# Status codes worth asking again: the server may recover (RFC 9110 says so for 503 and 429).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


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
    user_agent: str = Field("lmforge-crawler/0.1 (+https://github.com/lmforge/lmforge)",
                            description="User-Agent header, and the identity robots.txt rules "
                            "are matched against")
    respect_robots: bool = Field(True, description="fetch and obey each host's robots.txt "
                                 "(its rules and Crawl-delay)")
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
