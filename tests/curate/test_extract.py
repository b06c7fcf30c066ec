from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from cli_checks import assert_refused, lmforge, read_only_dir, snapshot
from lmforge.crawl.crawler import CrawlConfig, crawl
from lmforge.crawl.local_site import serve_python_docs
from lmforge.curate import extract as ex
from lmforge.curate.extract import ExtractConfig, extract
from lmforge.errors import LmforgeError
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
    # By default a cut-off archive stops the stage, naming it and the records read before the
    # cut, and nothing is written.
    with pytest.raises(LmforgeError, match=r"cut\.warc\.gz is cut short .*\d+ complete records? "
                                           r"read before the break"):
        extract([cut], tmp_path / "d.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.warc.gz", "full.warc.gz"]
    # on_bad_archive="skip": the bad file is left out, counted and named; the good one is read.
    stats = extract([cut, tmp_path / "full.warc.gz"], tmp_path / "d.parquet",
                    ExtractConfig(on_bad_archive="skip"))
    assert stats.documents == 5 and stats.warc_files == 2
    meta = stats.to_metadata()
    assert meta["bad_archives"] == 1 and "cut.warc.gz" in meta["bad_archive_files"][0]
    assert len(rows(tmp_path / "d.parquet")) == 5


def test_non_warc_input_is_an_error(tmp_path):
    (tmp_path / "notes.warc.gz").write_text("hello, I am not a WARC file\n")
    with pytest.raises(LmforgeError, match=r"notes\.warc\.gz is not a WARC file"):
        extract([tmp_path / "notes.warc.gz"], tmp_path / "d.parquet")
    stats = extract([tmp_path / "notes.warc.gz"], tmp_path / "d.parquet",
                    ExtractConfig(on_bad_archive="skip"))
    assert stats.documents == 0 and stats.to_metadata()["bad_archives"] == 1


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


# --------------------------------------------------------------------------- bad inputs, via the CLI

EXTRACT_CASES = ["missing", "empty", "not_warc", "truncated", "dir_without_warcs", "output_is_dir",
                 "removed_is_dir", "output_parent_is_file", "read_only_destination"]


@pytest.mark.parametrize("case", EXTRACT_CASES)
def test_cli_bad_inputs_are_one_line_errors(case, tmp_path):
    src = tmp_path / "crawl"
    src.mkdir()
    pages = [(f"http://site.test/{i}", 200, "text/html", html(f"P{i}", f"<p>page {i} " + "x" * 3000 + "</p>"))
             for i in range(5)]
    good = src / "crawl.warc.gz"
    write_warc(good, pages)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "docs.parquet"
    out.write_bytes(b"earlier output")
    removed_path_for(out).write_bytes(b"earlier removed")
    inp, says = good, ""
    if case == "missing":
        inp, says = src / "nope.warc.gz", "no WARC file"
    elif case == "empty":
        inp, says = src / "empty.warc.gz", "empty.warc.gz is empty"
        inp.write_bytes(b"")
    elif case == "not_warc":
        inp, says = src / "notes.warc.gz", "notes.warc.gz is not a WARC file"
        inp.write_text("these are my notes, not an archive\n" * 20)
    elif case == "truncated":
        data = good.read_bytes()
        inp, says = src / "cut.warc.gz", "cut.warc.gz is cut short"
        inp.write_bytes(data[: len(data) // 2])  # a real gzip WARC cut in the middle
    elif case == "dir_without_warcs":
        inp, says = tmp_path / "nothing_here", "no WARC files"
        inp.mkdir()
    elif case == "output_is_dir":
        out.unlink()
        (out / "sub").mkdir(parents=True)
        (out / "keep.txt").write_text("x\n")
        says = "is a directory"
    elif case == "removed_is_dir":
        removed_path_for(out).unlink()
        (removed_path_for(out) / "sub").mkdir(parents=True)
        says = "is a directory"
    elif case == "output_parent_is_file":
        out, says = out / "docs.parquet", "parent"
    roots = [src, work]
    if case == "read_only_destination":
        with read_only_dir(tmp_path / "ro") as ro:
            before = snapshot(*roots, ro)
            proc = lmforge("extract", inp, ro / "docs.parquet")
            line = assert_refused(proc, parents=[ro], before=before, roots=[*roots, ro],
                                  says="read-only")
    else:
        before = snapshot(*roots)
        proc = lmforge("extract", inp, out)
        line = assert_refused(proc, parents=[work, out.parent], before=before, roots=roots,
                              says=says)
    if case == "truncated":
        assert re.search(r"\d+ complete records? read before the break", line), line


def test_cli_skips_bad_archives_when_asked(tmp_path):
    write_warc(tmp_path / "good.warc.gz", [("http://site.test/", 200, "text/html", html("T", "<p>hello</p>"))])
    (tmp_path / "bad.warc.gz").write_text("not a WARC\n")
    proc = lmforge("extract", tmp_path / "good.warc.gz", tmp_path / "bad.warc.gz",
                   tmp_path / "o.parquet", "--on-bad-archive", "skip")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "bad.warc.gz" in warnings[0]
    meta = json.loads(proc.stdout)
    assert meta["bad_archives"] == 1 and meta["documents"] == 1
    assert "bad.warc.gz" in meta["bad_archive_files"][0]
