from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from lmforge.crawl import crawler
from lmforge.crawl.crawler import CrawlConfig, crawl, normalize_url, parse_crawl_delay
from lmforge.crawl.local_site import serve_python_docs


def read_warc(out_dir: Path) -> list:
    """(type, url, status, http headers, warc headers, body) of every record in out_dir."""
    records = []
    for path in crawler.warc_files(out_dir):
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh):
                status = rec.http_headers.get_statuscode() if rec.http_headers else None
                records.append((rec.rec_type, rec.rec_headers.get_header("WARC-Target-URI"),
                                status, rec.http_headers, rec.rec_headers,
                                rec.content_stream().read()))
    return records


def failures(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "failures.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- units

def test_normalize_url():
    assert normalize_url("HTTP://Example.COM:80/a/b?z=1&a=2#frag") == "http://example.com/a/b?z=1&a=2"
    assert normalize_url("https://example.com:443") == "https://example.com/"
    assert normalize_url("https://example.com:8443/x") == "https://example.com:8443/x"
    assert normalize_url("http://[::1]:8080/") == "http://[::1]:8080/"
    with pytest.raises(ValueError):
        normalize_url("ftp://example.com/")
    with pytest.raises(ValueError):
        normalize_url("http:///nohost")


def test_parse_crawl_delay_picks_the_matching_group():
    robots = ("User-agent: otherbot\nCrawl-delay: 9\n\n"
              "User-agent: *\nDisallow: /x\nCrawl-delay: 0.5\n\n"
              "User-agent: lmforge-crawler\nCrawl-delay: 2\n")
    assert parse_crawl_delay(robots, "lmforge-crawler/0.1 (+url)") == 2.0
    assert parse_crawl_delay(robots, "somebot/1.0") == 0.5
    assert parse_crawl_delay("User-agent: *\nDisallow:\n", "x/1") is None


def test_decode_html_charsets():
    assert crawler.decode_html("café".encode("cp1252"))[0] == "café"          # fallback
    assert crawler.decode_html("café".encode("latin-1"), "text/html; charset=ISO-8859-1")[:2] == ("café", "iso8859-1")
    assert crawler.decode_html(b"<meta charset='koi8-r'>" + "мир".encode("koi8-r"))[0].endswith("мир")
    text, enc, bad = crawler.decode_html(b"ok \xff\xfe ok", "text/html; charset=utf-8")
    assert (enc, bad) == ("utf-8", 2) and "\ufffd" in text


def test_config_rejects_bad_seeds():
    with pytest.raises(ValueError):
        CrawlConfig(seeds=["not a url"])
    with pytest.raises(ValueError):
        crawl(CrawlConfig(), "/tmp/unused")  # no seeds


# --------------------------------------------------------------------------- the real site

def test_crawl_pydoc_writes_readable_warc_and_resumes(pydoc_url, tmp_path):
    cfg = CrawlConfig(seeds=[pydoc_url], max_pages=20)
    stats = crawl(cfg, tmp_path)
    assert stats.pages_fetched == 20 and stats.failures == 0
    assert stats.bytes > 100_000 and stats.pages_per_s > 0
    meta = stats.to_metadata()
    json.dumps(meta)  # JSON-able
    assert meta["pages_fetched"] == 20 and len(meta["warc_files"]) == 1
    # Complete under its final name; no temporary file left behind.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".lmforge-output"]

    records = read_warc(tmp_path)
    responses = [r for r in records if r[0] == "response"]
    requests = [r for r in records if r[0] == "request"]
    assert records[0][0] == "warcinfo"
    assert len(responses) == len(requests) == 20
    assert len({r[1] for r in responses}) == 20
    for _, url, status, http, warc, body in responses:
        assert url.startswith(pydoc_url) and status == "200"
        assert http.get_header("Content-Type").startswith("text/html")
        assert int(http.get_header("Content-Length")) == len(body)
        assert warc.get_header("WARC-Payload-Digest")
        assert b"<html" in body[:200]
    index = next(r for r in responses if r[1] == pydoc_url)
    assert b"Index of Modules" in index[5]

    # Run again: nothing stored is fetched again.
    again = crawl(cfg, tmp_path)
    assert again.pages_fetched == 0 and again.pages_already_stored == 20 and again.requests == 0
    # Raise the budget: only new pages are fetched, and the crawl goes on from the stored links.
    more = crawl(cfg.model_copy(update={"max_pages": 25}), tmp_path)
    assert more.pages_fetched == 5
    new_urls = {r[1] for r in read_warc(Path(more.warc_files[0]).parent) if r[0] == "response"}
    assert len(new_urls) == 25  # 20 old + 5 new, no URL twice


def test_crawl_respects_depth_and_domain(pydoc_url, tmp_path):
    stats = crawl(CrawlConfig(seeds=[pydoc_url + "json.html"], max_depth=0), tmp_path)
    assert stats.pages_fetched == 1
    urls = [r[1] for r in read_warc(tmp_path) if r[0] == "response"]
    assert urls == [pydoc_url + "json.html"]  # docs.python.org and file: links are not followed


# --------------------------------------------------------------------------- the hostile site

def test_hostile_site(hostile_site, tmp_path):
    cfg = CrawlConfig(seeds=[hostile_site.url], timeout_s=0.5, retries=1, backoff_s=0.05,
                      max_bytes=200_000, concurrency=4)
    stats = crawl(cfg, tmp_path)  # finishes, whatever the pages did
    base = hostile_site.url.rstrip("/")
    paths = hostile_site.paths()

    # robots.txt: fetched first and once; the disallowed path is never requested.
    assert paths[0] == "/robots.txt" and paths.count("/robots.txt") == 1
    assert not [p for p in paths if p.startswith("/private")]
    # Crawl-delay: request starts to the host are spaced by at least the delay.
    times = [t for t, p in hostile_site.log if p != "/robots.txt"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    delay = hostile_site.crawl_delay
    assert len(gaps) >= 10 and times[-1] - times[0] >= len(gaps) * delay * 0.95, gaps
    assert min(gaps) >= delay * 0.75, gaps  # slack for connection-setup jitter on a busy machine

    by_url = {}
    for f in failures(tmp_path):
        by_url.setdefault(f["url"], []).append(f)
    reasons = {url: [f["reason"] for f in fs] for url, fs in by_url.items()}
    assert reasons[base + "/private/secret.html"] == ["robots_disallowed"]
    assert reasons[base + "/private/other.html"] == ["robots_disallowed"]
    assert reasons[base + "/loop/a"] == ["redirect_loop"]
    assert reasons[base + "/binary"] == ["content_type"]
    assert reasons[base + "/error500"] == ["http_500"]
    assert reasons[base + "/slow"] == ["timeout"]
    assert reasons[base + "/notfound"] == ["http_404"]
    assert by_url[base + "/error500"][0]["attempts"] == 2 and paths.count("/error500") == 2
    assert by_url[base + "/slow"][0]["attempts"] == 2 and paths.count("/slow") == 2
    assert "/loop/b" in by_url[base + "/loop/a"][0]["detail"]
    assert not any("example.com" in url for url in by_url)   # off-site link never tried
    assert stats.failures_by_reason == {"robots_disallowed": 2, "redirect_loop": 1,
                                        "content_type": 1, "http_500": 1, "timeout": 1,
                                        "http_404": 1}
    assert stats.redirects == 2 and stats.truncated == 1

    records = {(r[0], r[1]): r for r in read_warc(tmp_path)}
    # Successful pages, including the fragment link (stored without its fragment).
    ok = ["/", "/page1", "/page2", "/huge", "/bad-utf8", "/gz", "/no-ctype", "/xhtml", "/page3"]
    for path in ok:
        assert ("response", base + path) in records and ("request", base + path) in records
    assert stats.pages_fetched == len(ok)
    # The redirect hops are stored as they happened.
    assert records[("response", base + "/loop/a")][2] == "302"
    assert records[("response", base + "/loop/b")][3].get_header("Location") == "/loop/a"
    # The huge page stopped at max_bytes, and the record says so.
    huge = records[("response", base + "/huge")]
    assert len(huge[5]) == 200_000 < hostile_site.huge_bytes
    assert huge[4].get_header("WARC-Truncated") == "length"
    # A gzip-encoded page is stored decoded, the wire encoding kept under X-Crawler-.
    gz = records[("response", base + "/gz")]
    assert b"travelled gzip-compressed" in gz[5]
    assert gz[3].get_header("Content-Encoding") is None
    assert gz[3].get_header("X-Crawler-Content-Encoding") == "gzip"
    # Invalid UTF-8 is stored as received (extraction decides what to do with it).
    assert "Très".encode("latin-1") in records[("response", base + "/bad-utf8")][5]
    # Failed fetches are not in the WARC.
    assert ("response", base + "/error500") not in records
    assert ("response", base + "/binary") not in records


def test_unreachable_site_is_a_recorded_failure(tmp_path):
    # A port nobody listens on: robots.txt cannot be read, so nothing may be fetched (RFC 9309).
    with serve_python_docs() as url:
        dead = url
    stats = crawl(CrawlConfig(seeds=[dead], timeout_s=2, retries=0), tmp_path)
    assert stats.pages_fetched == 0
    assert [f["reason"] for f in failures(tmp_path)] == ["robots_unavailable"]
    assert crawler.warc_files(tmp_path) == []
    # Without robots: the fetch itself fails, as a connection error.
    stats = crawl(CrawlConfig(seeds=[dead], timeout_s=2, retries=1, backoff_s=0.01,
                              respect_robots=False), tmp_path)
    assert [(f["reason"], f["attempts"]) for f in failures(tmp_path)] == [("connection_error", 2)]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(dead, timeout=2)  # and the docs server really is gone


def test_cli(pydoc_url, tmp_path, capsys):
    assert crawler.main(["--seed", "nonsense", "--out", str(tmp_path)]) == 2
    assert "bad seed URL" in capsys.readouterr().err
    assert crawler.main(["--out", str(tmp_path)]) == 2
    rc = crawler.main(["--seed", pydoc_url, "--out", str(tmp_path / "c"), "--max-pages", "3"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["pages_fetched"] == 3
