from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.crawl.crawler import CrawlConfig, crawl
from lmforge.crawl.local_site import serve_python_docs
from lmforge.curate import extract as ex
from lmforge.curate.extract import ExtractConfig, extract
from lmforge.io import removed_path_for


@pytest.fixture(scope="module")
def pydoc_warc(tmp_path_factory) -> Path:
    """~20 real pages of this Python's documentation, crawled into a WARC directory."""
    out = tmp_path_factory.mktemp("pydoc_crawl")
    with serve_python_docs() as url:
        # json.html first: its links (json.decoder, json.encoder, ...) and the index fill the rest.
        stats = crawl(CrawlConfig(seeds=[url + "json.html", url], max_pages=20), out)
    assert stats.pages_fetched == 20
    return out


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_extract_pydoc_pages(pydoc_warc, tmp_path):
    out = tmp_path / "docs.parquet"
    stats = extract(pydoc_warc, out, ExtractConfig())
    docs = rows(out)
    assert pq.read_schema(out).names == ["id", "url", "title", "fetch_time", "text"]
    assert stats.documents == len(docs) == 20 and stats.removed == 0
    assert rows(removed_path_for(out)) == []
    for d in docs:
        assert d["id"] == hashlib.sha1(d["url"].encode()).hexdigest()[:16]
        assert d["title"].startswith("Pydoc: ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["fetch_time"])
        assert len(d["text"]) > 20
        assert not re.search(r"</?(html|td|tr|a|p|br|div|span)\b", d["text"])  # text, not markup
    assert len({d["id"] for d in docs}) == 20
    json_doc = next(d for d in docs if d["url"].endswith("/json.html"))
    assert json_doc["title"] == "Pydoc: package json"
    text = json_doc["text"]
    # The module's own documentation is kept, prose and code examples (indentation intact).
    assert "JSON (JavaScript Object Notation) <https://json.org> is a subset of" in text
    assert "\n    >>> import json\n" in text
    assert "Bob Ippolito" in text
    # pydoc's page chrome (interpreter build, navigation, file path) is left out.
    assert text.startswith("json (version ") and "Module Index" not in text and "GCC" not in text
    assert "\t" not in text and "\xa0" not in text and "\n\n\n" not in text
    meta = stats.to_metadata()
    assert meta["documents"] == 20 and meta["text_mb"] > 0.05 and meta["extractor"] == "resiliparse"


def test_trafilatura_is_selectable(pydoc_warc, tmp_path):
    # trafilatura is ~50x slower: two pages are enough to show it works through the same path.
    from warcio.archiveiterator import ArchiveIterator

    pages = []
    with open(next(pydoc_warc.glob("*.warc.gz")), "rb") as fh:
        for rec in ArchiveIterator(fh):
            url = rec.rec_headers.get_header("WARC-Target-URI")
            if rec.rec_type == "response" and url.endswith(("/json.html", "/json.decoder.html")):
                pages.append((url, 200, "text/html; charset=utf-8", rec.content_stream().read()))
    assert len(pages) == 2
    one = tmp_path / "one.warc.gz"
    write_warc(one, pages)
    stats = extract([one], tmp_path / "t.parquet", ExtractConfig(extractor="trafilatura"))
    docs = {d["url"].rsplit("/", 1)[1]: d for d in rows(tmp_path / "t.parquet")}
    assert stats.documents == 2 and stats.extractor == "trafilatura"
    assert "JavaScript syntax (ECMA-262 3rd edition)" in docs["json.html"]["text"]
    assert docs["json.decoder.html"]["title"] == "Pydoc: module json.decoder"


# --------------------------------------------------------------------------- hostile records

def write_warc(path: Path, pages: list[tuple[str, int, str | None, bytes]]) -> None:
    """A WARC of response records: (url, status, content type or None, body)."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for url, status, ctype, body in pages:
            headers = [("Content-Length", str(len(body)))]
            if ctype is not None:
                headers.append(("Content-Type", ctype))
            w.write_record(w.create_warc_record(
                url, "response", payload=io.BytesIO(body),
                http_headers=StatusAndHeaders(f"{status} X", headers, protocol="HTTP/1.1"),
                warc_headers_dict={"WARC-Date": "2026-01-02T03:04:05Z"}))


def html(title: str, body: str, charset: str = "utf-8") -> bytes:
    return (f"<html><head><title>{title}</title></head><body>{body}</body></html>").encode(charset)


def test_bad_inputs_go_to_removed(tmp_path):
    good = html("Good &amp; fine", "<p>Plain good text.</p><script>var hidden = 1;</script>")
    latin = html("Café", "<p>Un café à Besançon.</p>", "cp1252")   # no charset declared anywhere
    stray = html("Stray", "<p>" + "Mostly fine text. " * 50 + "</p>").replace(b"fine", b"f\xffne", 1)
    bad = (b"<html><head><meta charset='utf-8'><title>Bad</title></head><body>"
           + "Très mal encodé à Besançon. ".encode("latin-1") * 40 + b"</body></html>")
    write_warc(tmp_path / "a.warc.gz", [
        ("http://site.test/good", 200, "text/html; charset=utf-8", good),
        ("http://site.test/latin", 200, "text/html", latin),
        ("http://site.test/stray", 200, "text/html; charset=utf-8", stray),
        ("http://site.test/bad-utf8", 200, "text/html; charset=utf-8", bad),
        ("http://site.test/binary", 200, "application/octet-stream", bytes(range(256)) * 10),
        ("http://site.test/pdf", 200, "application/pdf", b"%PDF-1.4 ..."),
        ("http://site.test/nul", 200, "text/html", b"<html>\x00\x01\x02" + bytes(range(256)) * 10),
        ("http://site.test/empty-body", 200, "text/html", b""),
        ("http://site.test/only-script", 200, "text/html", html("Nothing", "<script>x()</script>")),
        ("http://site.test/sniffed", 200, None, html("Sniffed", "<p>No content type, still HTML.</p>")),
        ("http://site.test/gone", 404, "text/html", html("404", "not found")),
        ("http://site.test/moved", 301, "text/html", b""),
        ("http://site.test/good", 200, "text/html; charset=utf-8", good),   # again
    ])
    out = tmp_path / "docs.parquet"
    stats = extract(tmp_path, out)   # a directory works as input
    docs = {d["url"].rsplit("/", 1)[1]: d for d in rows(out)}
    removed = {(r["url"].rsplit("/", 1)[1], r["reason"]): r for r in rows(removed_path_for(out))}

    assert set(docs) == {"good", "latin", "stray", "sniffed"}
    assert docs["good"]["title"] == "Good & fine" and docs["good"]["text"] == "Plain good text."
    assert docs["latin"]["text"] == "Un café à Besançon." and docs["latin"]["title"] == "Café"
    assert docs["stray"]["text"].count("\ufffd") == 1     # one bad byte is tolerated
    assert docs["good"]["fetch_time"] == "2026-01-02T03:04:05Z"
    assert set(removed) == {("bad-utf8", "invalid_encoding"), ("binary", "not_html"),
                            ("pdf", "not_html"), ("nul", "binary_content"),
                            ("empty-body", "empty"), ("only-script", "empty"),
                            ("good", "duplicate_url")}
    assert removed[("binary", "not_html")]["detail"] == "application/octet-stream"
    assert "not valid utf-8" in removed[("bad-utf8", "invalid_encoding")]["detail"]
    assert removed[("only-script", "empty")]["title"] == "Nothing"
    assert stats.responses == 11 and stats.skipped_status == 2
    assert stats.documents == 4 and stats.removed == 7
    assert stats.removed_by_reason == {"invalid_encoding": 1, "not_html": 2, "binary_content": 1,
                                       "empty": 2, "duplicate_url": 1}


def test_cut_off_warc_keeps_what_was_read(tmp_path):
    pages = [(f"http://site.test/{i}", 200, "text/html", html(f"P{i}", f"<p>page {i} " + "x" * 3000 + "</p>"))
             for i in range(5)]
    write_warc(tmp_path / "full.warc.gz", pages)
    data = (tmp_path / "full.warc.gz").read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])   # a crawl killed mid-write
    stats = extract([cut], tmp_path / "d.parquet")
    assert 1 <= stats.documents < 5
    assert len(stats.warc_errors) == 1 and "cut.warc.gz" in stats.warc_errors[0]
    assert len(rows(tmp_path / "d.parquet")) == stats.documents


def test_removed_path_for():
    assert removed_path_for("/a/b/docs.parquet") == Path("/a/b/docs.removed.parquet")
    assert removed_path_for("out") == Path("out.removed.parquet")


def test_cli(tmp_path, capsys):
    assert ex.main([str(tmp_path / "missing.warc.gz"), str(tmp_path / "o.parquet")]) == 2
    assert "no WARC file" in capsys.readouterr().err
    write_warc(tmp_path / "a.warc.gz", [("http://site.test/", 200, "text/html", html("T", "<p>hello</p>"))])
    assert ex.main([str(tmp_path / "a.warc.gz"), str(tmp_path / "o.parquet")]) == 0
    assert rows(tmp_path / "o.parquet")[0]["text"] == "hello"
    with pytest.raises(SystemExit) as e:
        ex.main([str(tmp_path), str(tmp_path / "o2.parquet"), "--extractor", "nope"])
    assert e.value.code == 2
