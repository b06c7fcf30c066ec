"""Existing WARC files as the crawl: local files, directories, file:// and http URLs, resume,
validation, byte caps, and that extract reads what was imported."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import pydoc
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.crawl import crawler
from lmforge.crawl.warc_source import FAILURES_FILE, MANIFEST_FILE, import_warcs, read_manifest
from lmforge.curate.extract import extract
from lmforge.io import OUTPUT_MARKER, read_parquet_rows

FAST = {"backoff_s": 0.01, "timeout_s": 5}
ROOT = Path(__file__).resolve().parents[2]


def pydoc_page(module_name: str) -> bytes:
    """The HTML page pydoc's server shows for a module: real text nobody here wrote."""
    module = __import__(module_name, fromlist=["_"])
    doc = pydoc.HTMLDoc()
    return doc.page(pydoc.describe(module), doc.document(module)).encode("utf-8")


def write_warc(path: Path, modules: list[str], *, gzip_records: bool = True) -> Path:
    """A WARC of pydoc pages as a crawler writes it: warcinfo, then request + response per page."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gzip_records)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "test"}))
        for name in modules:
            url = f"http://docs.test/{name}.html"
            w.write_record(w.create_warc_record(
                url, "request", payload=io.BytesIO(b""),
                http_headers=StatusAndHeaders(f"GET /{name}.html HTTP/1.1", [("Host", "docs.test")],
                                              is_http_request=True)))
            w.write_record(w.create_warc_record(
                url, "response", payload=io.BytesIO(pydoc_page(name)),
                http_headers=StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                              protocol="HTTP/1.1")))
    return path


def count_records(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        recs = [r.rec_type for r in ArchiveIterator(fh)]
    return len(recs), recs.count("response")


@pytest.fixture
def warc_server(tmp_path):
    """Serves tmp_path/served on 127.0.0.1; /flaky-* answers 503 once; logs (method, path)."""
    root = tmp_path / "served"
    root.mkdir()
    log: list[tuple[str, str]] = []
    flaked: set[str] = set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

        def do_GET(self):
            log.append(("GET", self.path))
            if "flaky" in self.path and self.path not in flaked:
                flaked.add(self.path)
                self.send_error(503, "try again")
                return
            super().do_GET()

        def do_HEAD(self):
            log.append(("HEAD", self.path))
            super().do_HEAD()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def test_import_file_directory_and_url_then_extract(tmp_path, warc_server):
    root, base, log = warc_server
    local = write_warc(tmp_path / "local.warc.gz", ["json"])
    folder = tmp_path / "folder"
    folder.mkdir()
    write_warc(folder / "plain.warc", ["textwrap"], gzip_records=False)   # gzipped on the way in
    write_warc(folder / "second.warc.gz", ["difflib"])
    write_warc(root / "flaky-remote.warc.gz", ["json.decoder"])
    corrupt = tmp_path / "corrupt.warc.gz"
    good = write_warc(tmp_path / "good.warc.gz", ["shlex", "difflib"]).read_bytes()
    mid = len(good) // 2                                 # past the warcinfo and the first page
    corrupt.write_bytes(good[:mid] + b"\x00garbage" * 50 + good[mid + 400:])
    out = tmp_path / "out"

    stats = import_warcs([str(local), str(folder), f"{base}/flaky-remote.warc.gz",
                          f"{base}/missing.warc.gz", str(corrupt)], out, **FAST)

    assert stats.files == 4 and stats.already_imported == 0
    assert stats.records == 4 * 3 and stats.responses == 4
    assert stats.failures_by_reason == {"http_404": 1, "corrupt": 1}
    by_source = {f["source"]: f for f in stats.failures}
    assert f"{base}/missing.warc.gz" in by_source[f"{base}/missing.warc.gz"]["detail"]  # names it
    assert ("GET", "/flaky-remote.warc.gz") in log and log.count(("GET", "/flaky-remote.warc.gz")) == 2
    # Only complete *.warc.gz and the two logs in out_dir: nothing from the failures, no temp files.
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["local.warc.gz", "plain.warc.gz", "second.warc.gz",
                            "flaky-remote.warc.gz", MANIFEST_FILE, FAILURES_FILE, OUTPUT_MARKER])
    plain = out / "plain.warc.gz"
    assert plain.read_bytes()[:2] == b"\x1f\x8b"
    # warcio refuses a multi-record gzip that is not one member per record: this read proves it is.
    assert count_records(plain) == (3, 1)
    assert sorted(stats.warc_files) == sorted(str(out / n) for n in names if n.endswith(".warc.gz"))
    meta = stats.to_metadata()
    json.dumps(meta)
    assert meta["files"] == 4 and meta["failures"] == 2 and meta["bytes"] == stats.bytes > 0
    failures = [json.loads(x) for x in (out / FAILURES_FILE).read_text().splitlines()]
    assert {f["reason"] for f in failures} == {"http_404", "corrupt"}
    manifest = read_manifest(out)
    assert manifest[str(local.resolve())]["sha256"] != manifest[f"{base}/flaky-remote.warc.gz"]["sha256"]
    assert manifest[str((folder / "plain.warc").resolve())]["records"] == 3

    # extract reads the imported directory and gets the pages' text.
    xstats = extract(out, tmp_path / "docs.parquet")
    docs = {d["url"]: d["text"] for d in read_parquet_rows(tmp_path / "docs.parquet")}
    assert xstats.documents == 4 and not xstats.warc_errors
    assert "JSONDecodeError" in docs["http://docs.test/json.html"]
    assert "dedent" in docs["http://docs.test/textwrap.html"]
    assert "SequenceMatcher" in docs["http://docs.test/difflib.html"]
    assert "raw_decode" in docs["http://docs.test/json.decoder.html"]


def test_reimport_does_not_fetch_again(tmp_path, warc_server):
    root, base, log = warc_server
    local = write_warc(tmp_path / "a.warc.gz", ["json"])
    write_warc(root / "b.warc.gz", ["textwrap"])
    out = tmp_path / "out"
    sources = [str(local), f"{base}/b.warc.gz", local.as_uri()]   # the file:// URL is the same file
    first = import_warcs(sources, out, **FAST)
    assert first.files == 2 and first.already_imported == 1 and not first.failed
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.warc.gz")}
    manifest = (out / MANIFEST_FILE).read_text()

    log.clear()
    again = import_warcs(sources, out, **FAST)
    assert again.files == 0 and again.already_imported == 3 and again.bytes == 0
    assert log == []                                     # not even a HEAD
    assert (out / MANIFEST_FILE).read_text() == manifest
    assert sorted(again.warc_files) == sorted(first.warc_files)

    # Without the manifest, the same name and size still count: HEAD only, no GET, no copy.
    (out / MANIFEST_FILE).unlink()
    third = import_warcs(sources, out, **FAST)
    assert third.files == 0 and third.already_imported == 3
    assert log == [("HEAD", "/b.warc.gz")]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.warc.gz")} == mtimes
    assert set(read_manifest(out)) == {str(local.resolve()), f"{base}/b.warc.gz"}

    # A different file under a taken name is imported beside it, not over it.
    other = tmp_path / "elsewhere"
    other.mkdir()
    write_warc(other / "a.warc.gz", ["difflib"])
    fourth = import_warcs([str(other / "a.warc.gz")], out, **FAST)
    assert fourth.files == 1 and Path(fourth.warc_files[0]).name.startswith("a-")
    assert count_records(out / "a.warc.gz") == (3, 1)


def test_max_bytes_keeps_whole_records(tmp_path):
    pages = ["json", "textwrap", "difflib", "shlex"]
    gz = write_warc(tmp_path / "gz.warc.gz", pages)
    plain = write_warc(tmp_path / "plain.warc", pages, gzip_records=False)
    for src in (gz, plain):
        out = tmp_path / f"out-{src.name}"
        stats = import_warcs([str(src)], out, max_bytes=src.stat().st_size * 6 // 10, **FAST)
        assert stats.files == 1 and stats.truncated_files == 1, stats.failures
        records, responses = count_records(Path(stats.warc_files[0]))
        assert 1 < records < 9 and records == stats.records and responses == stats.responses
        assert read_manifest(out)[str(src.resolve())]["truncated"] is True
    tiny = import_warcs([str(gz)], tmp_path / "out-tiny", max_bytes=100, **FAST)
    assert tiny.failures_by_reason == {"too_large": 1} and not list((tmp_path / "out-tiny").glob("*.warc*"))


def test_bad_inputs_are_recorded_not_raised(tmp_path):
    full = write_warc(tmp_path / "full.warc.gz", ["json", "textwrap"]).read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(full[: len(full) - 300])            # a download that stopped early
    text = tmp_path / "notes.warc"
    text.write_text("this is not a WARC file\n" * 20)   # warcio alone would read it as ARC
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    # `gzip file.warc`: one member around all records, which warcio refuses; recompressed.
    whole = tmp_path / "whole.warc.gz"
    whole.write_bytes(gzip.compress(write_warc(tmp_path / "w.warc", ["difflib"], gzip_records=False)
                                    .read_bytes()))
    out = tmp_path / "out"
    stats = import_warcs([str(cut), str(text), str(empty), str(whole), str(tmp_path / "nope.warc"),
                          "s3://bucket/x.warc.gz"], out, **FAST)
    assert stats.failures_by_reason == {"truncated": 1, "not_warc": 1, "empty": 1, "not_found": 1,
                                        "bad_source": 1}
    assert stats.files == 1 and count_records(out / "whole.warc.gz") == (3, 1)
    assert sorted(p.name for p in out.iterdir()) == sorted(["whole.warc.gz", MANIFEST_FILE, FAILURES_FILE,
                                                                OUTPUT_MARKER])
    with pytest.raises(ValueError):
        import_warcs([], out)


def test_crawl_cli_imports_with_warc_flag(tmp_path, capsys):
    src = write_warc(tmp_path / "cc.warc.gz", ["json"])
    out = tmp_path / "out"
    assert crawler.main(["--warc", str(src), "--warc", str(tmp_path / "missing.warc.gz"),
                         "--out", str(out)]) == 1           # one source failed
    meta = json.loads(capsys.readouterr().out)
    assert meta["files"] == 1 and meta["failures_by_reason"] == {"not_found": 1}
    assert crawler.main(["--warc", str(src), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["already_imported"] == 1
    assert crawler.main(["--warc", str(src), "--seed", "http://x.test/", "--out", str(out)]) == 2
    assert crawler.warc_files(out) == [out / "cc.warc.gz"]


# --------------------------------------------------------------------------- bad destinations, via the CLI

@pytest.mark.parametrize("case", ["foreign_dir", "out_is_file", "read_only_destination"])
def test_cli_refuses_a_destination_it_did_not_make(case, tmp_path):
    from cli_checks import assert_refused, foreign_dir, lmforge, read_only_dir, snapshot

    src = write_warc(tmp_path / "a.warc.gz", ["difflib"])
    out, says = tmp_path / "crawl", ""
    if case == "foreign_dir":
        foreign_dir(out)
        says = "did not make"
    elif case == "out_is_file":
        out.write_text("a file\n")
        says = "is a file"
    if case == "read_only_destination":
        with read_only_dir(tmp_path / "ro") as ro:
            before = snapshot(tmp_path)
            proc = lmforge("crawl", "--warc", src, "--out", ro / "crawl")
            assert_refused(proc, parents=[ro], before=before, roots=[tmp_path], says="read-only")
        return
    before = snapshot(tmp_path)
    proc = lmforge("crawl", "--warc", src, "--out", out)
    assert_refused(proc, parents=[tmp_path], before=before, roots=[tmp_path], says=says)
    # The crawler itself claims its directory the same way (before any request is made).
    proc = lmforge("crawl", "--seed", "http://127.0.0.1:9/", "--out", out)
    assert_refused(proc, parents=[tmp_path], before=before, roots=[tmp_path], says=says)


# --------------------------------------------------------------------------- in parallel, in batches

def _sources(tmp_path: Path) -> list[str]:
    """Gzip and plain WARCs, two of them under one name in two directories."""
    a, b = tmp_path / "src-a", tmp_path / "src-b"
    a.mkdir()
    b.mkdir()
    modules = ["json", "textwrap", "difflib", "shlex", "heapq", "bisect", "string", "base64"]
    for i, m in enumerate(modules[:5]):
        write_warc(a / f"seg-{i}.warc{'.gz' if i % 2 else ''}", [m], gzip_records=bool(i % 2))
    write_warc(b / "seg-1.warc.gz", [modules[5]])           # the name of a/seg-1, other bytes
    write_warc(b / "other.warc", modules[6:], gzip_records=False)
    return [str(a), str(b)]


def _result(out: Path) -> tuple[dict, dict]:
    files = {p.name: p.read_bytes() for p in out.glob("*.warc.gz")}
    manifest = {k: {f: v for f, v in e.items() if f != "imported_at"} for k, e in read_manifest(out).items()}
    return files, manifest


def test_parallel_import_equals_sequential_and_writes_the_manifest_per_batch(tmp_path, monkeypatch):
    from lmforge.crawl import warc_source

    sources = _sources(tmp_path)
    writes: list[int] = []
    real = warc_source._write_manifest

    def counting(out_dir, entries):
        writes.append(len(entries))
        real(out_dir, entries)

    monkeypatch.setattr(warc_source, "_write_manifest", counting)
    seq = import_warcs(sources, tmp_path / "seq", workers=1, batch_files=1, **FAST)
    assert seq.files == 7 and writes == [1, 2, 3, 4, 5, 6, 7]  # the old way: after every file
    writes.clear()
    par = import_warcs(sources, tmp_path / "par", workers=3, batch_files=3, **FAST)
    assert par.files == 7 and writes == [3, 6, 7]               # once per batch, then the rest
    assert _result(tmp_path / "par") == _result(tmp_path / "seq")
    assert [Path(p).name for p in par.warc_files] == [Path(p).name for p in seq.warc_files]
    assert (par.records, par.responses, par.bytes) == (seq.records, seq.responses, seq.bytes)
    assert len(list((tmp_path / "par").glob("seg-1*.warc.gz"))) == 2  # one disambiguated
    writes.clear()
    again = import_warcs(sources, tmp_path / "par", workers=3, **FAST)
    assert (again.files, again.already_imported, writes) == (0, 7, [])


N_KILLED = 24


def test_a_killed_import_loses_no_bytes_and_resumes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    modules = ["json", "textwrap", "difflib", "shlex", "heapq", "bisect", "string", "base64",
               "argparse", "typing", "pathlib", "inspect"]
    for i in range(N_KILLED):  # plain WARCs: each is recompressed, which takes a while
        write_warc(src / f"seg-{i:02d}.warc", [modules[(i + k) % 12] for k in range(5)],
                   gzip_records=False)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.crawl.warc_source", str(src),
                             "--out", str(out), "--workers", "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / MANIFEST_FILE).is_file():
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the import ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    listed = read_manifest(out)
    assert 0 < len(listed) < N_KILLED
    for entry in listed.values():  # every entry has its bytes
        f = out / entry["file"]
        assert f.stat().st_size == entry["bytes"] and hashlib.sha256(f.read_bytes()).hexdigest() == entry["sha256"]

    resumed = import_warcs([str(src)], out, workers=2, **FAST)
    assert resumed.already_imported >= len(listed)
    assert resumed.files + resumed.already_imported == N_KILLED
    clean = import_warcs([str(src)], tmp_path / "clean", workers=1, **FAST)
    files, manifest = _result(out)
    assert (files, manifest) == _result(tmp_path / "clean")  # no file twice, none lost
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != OUTPUT_MARKER]
    assert clean.files == N_KILLED
