"""Fixtures for the crawler tests: the real pydoc site, and a hostile site on loopback."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from dataclasses import dataclass, field

import pytest

from lmforge.crawl.local_site import serve_python_docs

CRAWL_DELAY = 0.2      # the hostile site's robots.txt Crawl-delay, seconds
SLOW_SECONDS = 1.5     # how long /slow takes to answer (the crawl's timeout is shorter)
HUGE_BYTES = 3_000_000


@pytest.fixture(scope="session")
def pydoc_url():
    with serve_python_docs() as url:
        yield url


def _page(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body>{body}</body></html>").encode()


@dataclass
class HostileSite:
    url: str
    crawl_delay: float = CRAWL_DELAY
    huge_bytes: int = HUGE_BYTES
    log: list[tuple[float, str]] = field(default_factory=list)   # (arrival time, path)

    def paths(self) -> list[str]:
        return [p for _, p in self.log]


def _handler(site: HostileSite):
    index = _page("Hostile index", "".join(
        f'<a href="{h}">{h}</a> ' for h in [
            "/private/secret.html", "/loop/a", "/huge", "/binary", "/bad-utf8", "/error500",
            "/slow", "/page1", "/notfound", "/gz", "/no-ctype", "/xhtml", "http://example.com/offsite", "#top",
            "mailto:someone@example.com"]))
    page1 = _page("Page one", '<p>First page.</p><a href="/private/other.html">x</a>'
                  '<a href="/page2#frag">two</a>')
    page2 = _page("Page two", "<p>Second page, reached by a link with a fragment.</p>")
    huge = b"<html><head><title>Huge</title></head><body><p>" + b"lorem ipsum " * (HUGE_BYTES // 12) + b"</p></body></html>"
    # Declared UTF-8, but Latin-1 bytes throughout: many undecodable bytes.
    bad_utf8 = (b"<html><head><meta charset='utf-8'><title>Bad</title></head><body><p>"
                + "Très mal encodé, déjà vu à Besançon. ".encode("latin-1") * 50 + b"</p></body></html>")
    gz_body = gzip.compress(_page("Compressed", "<p>This page travelled gzip-compressed.</p>"))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep the test output clean
            pass

        def send(self, status: int, body: bytes = b"", ctype: str | None = "text/html; charset=utf-8",
                 extra: dict[str, str] | None = None):
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the crawler stopped reading (huge page) or gave up (slow page)

        def do_GET(self):
            site.log.append((time.monotonic(), self.path))
            p = self.path
            if p == "/robots.txt":
                self.send(200, f"User-agent: *\nDisallow: /private/\nCrawl-delay: {CRAWL_DELAY}\n".encode(),
                          "text/plain")
            elif p == "/":
                self.send(200, index)
            elif p == "/page1":
                self.send(200, page1)
            elif p == "/page2":
                self.send(200, page2)
            elif p == "/loop/a":
                self.send(302, extra={"Location": "/loop/b"})
            elif p == "/loop/b":
                self.send(302, extra={"Location": "/loop/a"})
            elif p == "/huge":
                self.send(200, huge)
            elif p == "/binary":
                self.send(200, bytes(range(256)) * 100, "application/octet-stream")
            elif p == "/bad-utf8":
                self.send(200, bad_utf8)
            elif p == "/error500":
                self.send(500, b"<html><body>oops</body></html>")
            elif p == "/slow":
                time.sleep(SLOW_SECONDS)
                self.send(200, _page("Slow", "<p>too late</p>"))
            elif p == "/no-ctype":  # HTML without a Content-Type header: sniffed
                self.send(200, _page("No type", "<p>Sniffed as HTML.</p>"), None)
            elif p == "/xhtml":  # an XML declaration before the HTML; its link must be found
                self.send(200, b'<?xml version="1.0" encoding="utf-8"?>\n'
                          b'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>X</title></head>'
                          b'<body><a href="page3">three</a></body></html>', "application/xhtml+xml")
            elif p == "/page3":
                self.send(200, _page("Page three", "<p>Linked from XHTML.</p>"))
            elif p == "/gz":
                self.send(200, gz_body, extra={"Content-Encoding": "gzip"})
            else:
                self.send(404, b"<html><body>not here</body></html>")

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client hanging up on a slow or huge answer is what the tests do on purpose


@pytest.fixture
def hostile_site():
    site = HostileSite(url="")
    server = _QuietServer(("127.0.0.1", 0), _handler(site))
    site.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
