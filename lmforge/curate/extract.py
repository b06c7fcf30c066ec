"""WARC files -> one Parquet table of documents: the main text of every HTML page.

    WARC response records (2xx) -> HTML? -> decode (declared charset, else UTF-8, else cp1252)
        -> extract text (resiliparse or trafilatura) -> tidy whitespace -> Parquet

Reads our own crawls (``lmforge.crawl.crawler``) and Common Crawl WARCs alike.

Columns of ``out_path``: ``id`` (first 16 hex digits of the SHA-1 of the normalized URL, so the
same page has the same id in every run), ``url``, ``title``, ``fetch_time`` (ISO 8601, the WARC
date), ``text``.

Bad archives. Every WARC file is checked record by record before any page is extracted (a pass
that only decompresses: every record must be a WARC record with all the bytes its
``Content-Length`` promises; warcio alone reads a cut-off file as a shorter last record and a text
file as no records, without an error). A file that is not a WARC, is cut short or damaged stops
the stage with an error naming it and how many records were read before the break, and nothing is
written (``on_bad_archive="fail"``, the default); ``on_bad_archive="skip"`` leaves such a file
out, warns on stderr, and counts it in the stats (``bad_archives``, ``bad_archive_files``).

Nothing is dropped silently. Every response that does not become a document goes to the sibling
``removed_path_for(out_path)`` (``docs.parquet`` -> ``docs.removed.parquet``) with a ``reason``:
``not_html``, ``binary_content``, ``invalid_encoding``, ``empty``, ``extract_error``,
``duplicate_url``. Records that are not pages at all (requests, warcinfo, redirects and other
non-2xx responses) are counted in the stats, not listed.

Which extractor: measured on 320 pages of the pydoc server (12.2 MB of HTML, 2 shared CPU cores),
resiliparse ``extract_plain_text`` took 0.3 s (1000 pages/s) and kept 4.38 MB of text with code
indentation intact; trafilatura took 15-18 s (20 pages/s) and kept 3.50 MB with its defaults
(it drops up to 76 % of a page's documentation as boilerplate) or 4.14 MB with
``favor_recall=True``, flattening docstring lines into table rows. resiliparse's
``main_content=True`` heuristics glued words together on 42 of those pages ("objectgetattr") and
removed nothing useful, so the default is resiliparse over the whole page. For the open web, set
``main_content=True`` or ``extractor="trafilatura"``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, Field

from lmforge.crawl.urls import decode_html, looks_like_html, normalize_url
from lmforge.crawl.warc_io import warc_files
from lmforge.crawl.warc_source import scan_warc
from lmforge.config import add_config_arguments, config_from_args
from lmforge.curate.text import InputError, MissingInputError, check_outputs
from lmforge.errors import LmforgeError
from lmforge.curate.parallel import add_parallel_arguments, parallel_from_args
from lmforge.io import atomic_path, removed_path_for, write_parquet

def _schemas():
    """The extracted documents' schema and the removed ones' (pyarrow loads when extract runs)."""
    import pyarrow as pa

    text = ("id", "url", "title", "fetch_time", "text")
    kept = pa.schema([(c, pa.string()) for c in text])
    removed = pa.schema([(c, pa.string()) for c in (*text, "reason", "detail")])
    return kept, removed
# The chrome around every pydoc page: interpreter and kernel version (top left), navigation and
# search forms (top right), the module's file path and links (beside its name). Repeated on
# every page and machine-specific, so the tiny preset leaves it out; these selectors match
# nothing on most other sites, and a preset for the open web sets its own.
PYDOC_CHROME = ("div[style='float:left']", "div[style='float:right']", "table.heading td.extra")
# A removed row keeps this much of its text: enough to audit the decision, not a second corpus.
REMOVED_TEXT_CHARS = 2000


class ExtractConfig(BaseModel):
    """How to turn HTML into text. Defaults are the ``tiny`` preset (pydoc pages)."""

    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse", description="resiliparse: fast, keeps all visible text; trafilatura: "
        "slower, main-content heuristics tuned for articles")
    main_content: bool = Field(False, description="resiliparse: keep only what its heuristics "
                               "call main content (drops navigation; hurts documentation pages)")
    skip_selectors: list[str] = Field(
        default_factory=lambda: list(PYDOC_CHROME), description="resiliparse: CSS selectors of "
        "elements to leave out, e.g. 'nav', 'footer' (default: pydoc's page chrome)")
    favor_recall: bool = Field(True, description="trafilatura: keep more text when unsure")
    include_tables: bool = Field(True, description="trafilatura: keep text inside tables")
    html_content_types: list[str] = Field(
        default_factory=lambda: ["text/html", "application/xhtml+xml"],
        description="MIME types of the pages extracted; other responses are removed as not_html "
        "(a response without a Content-Type is sniffed)")
    max_invalid_fraction: float = Field(
        0.01, ge=0, le=1, description="share of undecodable bytes above which a page is "
        "removed as invalid_encoding (a stray bad byte is tolerated)")
    min_chars: int = Field(1, ge=1, description="pages with less extracted text are 'empty'")
    on_bad_archive: Literal["fail", "skip"] = Field(
        "fail", description="a WARC file that is not a WARC, is cut short or damaged: 'fail' stops "
        "with an error naming it (nothing is written); 'skip' leaves the file out, warns and "
        "counts it in the stats (bad_archives)")


@dataclass
class ExtractStats:
    warc_files: int = 0
    records: int = 0              # all WARC records read
    responses: int = 0            # 2xx response records: candidate documents
    skipped_status: int = 0       # non-2xx responses (redirects, errors): not documents
    documents: int = 0
    truncated: int = 0            # documents whose HTML the crawler cut at its size cap
    removed_by_reason: dict[str, int] = field(default_factory=dict)
    warc_errors: list[str] = field(default_factory=list)   # unreadable (parts of) WARC files
    bad_archive_files: list[str] = field(default_factory=list)  # skipped: "path: what is wrong"
    html_bytes: int = 0
    text_chars: int = 0
    elapsed_s: float = 0.0
    extractor: str = ""
    out_path: str = ""
    removed_path: str = ""

    @property
    def removed(self) -> int:
        return sum(self.removed_by_reason.values())

    def to_metadata(self) -> dict[str, Any]:
        return {
            "warc_files": self.warc_files,
            "records": self.records,
            "responses": self.responses,
            "skipped_status": self.skipped_status,
            "documents": self.documents,
            "truncated": self.truncated,
            "removed": self.removed,
            "removed_by_reason": dict(sorted(self.removed_by_reason.items())),
            "keep_rate": round(self.documents / self.responses, 4) if self.responses else 0.0,
            "warc_errors": list(self.warc_errors),
            "bad_archives": len(self.bad_archive_files),
            "bad_archive_files": list(self.bad_archive_files),
            "html_mb": round(self.html_bytes / 1e6, 3),
            "text_mb": round(self.text_chars / 1e6, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "pages_per_s": round(self.responses / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "extractor": self.extractor,
            "out_path": self.out_path,
            "removed_path": self.removed_path,
        }


def doc_id(url: str) -> str:
    """Stable document id: SHA-1 of the normalized URL, first 16 hex digits."""
    try:
        url = normalize_url(url)
    except ValueError:
        pass  # not http(s): hash it as it is
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- text extraction

_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")


def html_title(page: str) -> str:
    m = _TITLE.search(page[:200_000])
    if not m:
        return ""
    return " ".join(html.unescape(_TAG.sub("", m.group(1))).split())


def extract_text(page: str, cfg: ExtractConfig) -> str:
    """The visible text of one decoded HTML page, with tidy whitespace."""
    if cfg.extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        text = extract_plain_text(HTMLTree.parse(page), preserve_formatting=True,
                                  main_content=cfg.main_content, alt_texts=False,
                                  skip_elements=cfg.skip_selectors or None)
    else:
        import trafilatura

        text = trafilatura.extract(page, favor_recall=cfg.favor_recall,
                                   include_tables=cfg.include_tables, include_comments=False,
                                   deduplicate=False) or ""
    return tidy_whitespace(text)


# resiliparse separates table cells with tabs: a gap at the start of a line goes, one inside a
# line becomes a space. Spaces alone are indentation (code) and stay.
_LEADING_CELL_GAP = re.compile(r"^[ \t]*\t[ \t]*", re.M)
_CELL_GAP = re.compile(r"[ \t]*\t[ \t]*")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
_BLANK_RUN = re.compile(r"\n{3,}")


def tidy_whitespace(text: str) -> str:
    """Drop cell-separator tabs and line-end spaces, keep indentation, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\xa0", " ")  # pydoc (and many sites) indent with &nbsp;
    text = _CELL_GAP.sub(" ", _LEADING_CELL_GAP.sub("", text))
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUN.sub("\n\n", text).strip("\n")


# --------------------------------------------------------------------------- records -> rows

def _is_html(content_type: str, body: bytes, allowed: list[str]) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime:
        return mime in allowed
    return looks_like_html(body)  # no Content-Type: sniff


def _looks_binary(body: bytes, encoding: str) -> bool:
    # NUL bytes do not occur in text encoded in anything but UTF-16/32.
    return b"\x00" in body[:65536] and not encoding.startswith(("utf-16", "utf-32"))


def _rows(paths: list[Path], cfg: ExtractConfig, stats: ExtractStats,
          removed: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()

    def remove(row: dict[str, Any], reason: str, detail: str = "") -> None:
        stats.removed_by_reason[reason] = stats.removed_by_reason.get(reason, 0) + 1
        removed.append({**row, "text": row.get("text", "")[:REMOVED_TEXT_CHARS],
                        "reason": reason, "detail": detail})

    from warcio.archiveiterator import ArchiveIterator

    for path in paths:
        stats.warc_files += 1
        try:
            with open(path, "rb") as fh:
                for rec in ArchiveIterator(fh):
                    stats.records += 1
                    if rec.format != "warc":
                        raise ValueError("a record that is not a WARC record")
                    if rec.rec_type != "response" or rec.http_headers is None:
                        continue
                    try:
                        status = int(rec.http_headers.get_statuscode() or 0)
                    except ValueError:
                        status = 0
                    if not 200 <= status < 300:
                        stats.skipped_status += 1
                        continue
                    stats.responses += 1
                    url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                    row = {"id": doc_id(url), "url": url, "title": "",
                           "fetch_time": rec.rec_headers.get_header("WARC-Date") or "", "text": ""}
                    ctype = rec.http_headers.get_header("Content-Type") or ""
                    body = rec.content_stream().read()
                    stats.html_bytes += len(body)
                    doc = _document(row, body, ctype, cfg, remove)
                    if doc is None:
                        continue
                    if doc["id"] in seen:
                        remove(doc, "duplicate_url", "the same URL appeared earlier")
                        continue
                    seen.add(doc["id"])
                    stats.documents += 1
                    stats.truncated += rec.rec_headers.get_header("WARC-Truncated") is not None
                    stats.text_chars += len(doc["text"])
                    yield doc
        except Exception as e:  # changed since it was checked: fail, or keep what was read
            detail = " ".join(str(e).split())[:300]
            msg = f"{path}: {type(e).__name__}: {detail}"
            if cfg.on_bad_archive == "fail":
                raise InputError(f"WARC file {msg}") from None
            stats.warc_errors.append(msg[:500])
            print(f"lmforge extract: warning: {msg}", file=sys.stderr)


def _document(row: dict[str, Any], body: bytes, ctype: str, cfg: ExtractConfig,
              remove) -> dict[str, Any] | None:
    if not _is_html(ctype, body, cfg.html_content_types):
        remove(row, "not_html", ctype or "(no Content-Type)")
        return None
    if not body.strip():
        remove(row, "empty", "no body")
        return None
    page, encoding, bad = decode_html(body, ctype)
    if _looks_binary(body, encoding):
        remove(row, "binary_content", "NUL bytes in an HTML response")
        return None
    if bad > cfg.max_invalid_fraction * len(body):
        remove({**row, "text": page}, "invalid_encoding",
               f"{bad} of {len(body)} bytes are not valid {encoding}")
        return None
    row = {**row, "title": html_title(page)}
    try:
        text = extract_text(page, cfg)
    except Exception as e:  # the extractor choked on this page; the others go on
        remove(row, "extract_error", f"{type(e).__name__}: {e}")
        return None
    if len(text.strip()) < cfg.min_chars:
        remove({**row, "text": text}, "empty", f"{len(text.strip())} characters of text")
        return None
    return {**row, "text": text}


def resolve_warc_paths(warc_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; directories expand to their ``*.warc.gz`` / ``*.warc`` files."""
    if isinstance(warc_paths, (str, os.PathLike)):
        warc_paths = [warc_paths]
    warc_paths = list(warc_paths)
    out: list[Path] = []
    for p in map(Path, warc_paths):
        if p.is_dir():
            out.extend(warc_files(p))
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise InputError(f"{p} is not a regular file or a directory of WARC files")
        else:
            raise MissingInputError(f"no WARC file or directory at {p}")
    if not out:
        raise MissingInputError(f"no WARC files (*.warc.gz, *.warc) in "
                                f"{', '.join(map(str, warc_paths))}")
    return out


def archive_problem(path: Path) -> str | None:
    """What is wrong with the WARC file ``path`` (None when every record is complete)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if size == 0:
        return "is empty, not a WARC file"
    try:
        scan = scan_warc(path)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    n = len(scan.offsets)
    if scan.error is not None:
        detail = scan.error.detail.removeprefix("after 0 records: ")[:160]
        if scan.error.reason == "not_warc" and n == 0:
            return f"is not a WARC file ({detail})"
        what = "is cut short" if scan.error.reason == "truncated" else "is damaged"
        return f"{what} ({detail}); {n} complete record{'s' * (n != 1)} read before the break"
    if n == 0:
        return "holds no WARC records: not a WARC file, or cut off before its first record"
    return None


def check_archives(paths: list[Path], cfg: ExtractConfig, stats: ExtractStats) -> list[Path]:
    """The WARC files to extract: every file is checked first; a bad one fails the stage, or with
    ``on_bad_archive="skip"`` is left out, counted and warned about."""
    good: list[Path] = []
    for path in paths:
        problem = archive_problem(path)
        if problem is None:
            good.append(path)
            continue
        if cfg.on_bad_archive == "fail":
            raise InputError(f"WARC file {path} {problem} (on_bad_archive='skip' / "
                             "--on-bad-archive skip leaves such files out)")
        stats.bad_archive_files.append(f"{path}: {problem}"[:500])
        print(f"lmforge extract: warning: skipping WARC file {path}: it {problem}", file=sys.stderr)
    return good


def extract(warc_paths: str | os.PathLike | Iterable[str | os.PathLike],
            out_path: str | os.PathLike, cfg: ExtractConfig | None = None) -> ExtractStats:
    """Write the documents of ``warc_paths`` to ``out_path`` and the rest to
    ``removed_path_for(out_path)``; both atomically."""
    cfg = cfg or ExtractConfig()
    if cfg.extractor == "resiliparse":
        try:
            import resiliparse  # noqa: F401  (fail before reading anything)
        except ImportError as e:
            raise LmforgeError("extractor 'resiliparse' needs `pip install resiliparse`; or use "
                               "extractor='trafilatura'") from e
    rpath = removed_path_for(out_path)
    paths = resolve_warc_paths(warc_paths)
    check_outputs(out_path, rpath, inputs=tuple(paths))
    stats = ExtractStats(extractor=cfg.extractor + (" (main_content)" if cfg.main_content and
                                                    cfg.extractor == "resiliparse" else ""))
    start = time.monotonic()
    paths = check_archives(paths, cfg, stats)
    stats.warc_files += len(stats.bad_archive_files)
    removed: list[dict[str, Any]] = []
    kept_schema, removed_schema = _schemas()
    write_parquet(out_path, _rows(paths, cfg, stats, removed), schema=kept_schema)
    write_parquet(rpath, removed, schema=removed_schema)
    stats.elapsed_s = time.monotonic() - start
    stats.out_path, stats.removed_path = str(out_path), str(rpath)
    return stats


def extract_part(warc_paths, out_path, removed_path, cfg: ExtractConfig) -> ExtractStats:
    """One shard of :func:`extract_sharded` (its removed rows go beside ``out_path``)."""
    if Path(removed_path) != removed_path_for(out_path):
        raise InputError(f"extract writes its removed pages to {removed_path_for(out_path)}")
    return extract(warc_paths, out_path, cfg)


def extract_sharded(warc_paths: str | os.PathLike | Iterable[str | os.PathLike],
                    out_path: str | os.PathLike, cfg: ExtractConfig | None = None,
                    parallel=None) -> ExtractStats:
    """:func:`extract` as ``parallel`` says: to a day directory, one part per WARC file (see
    ``lmforge.curate.stages.run_sharded``); to a ``.parquet`` file, all of them in one."""
    from lmforge.curate.stages import is_parts_output, run_sharded

    cfg = cfg or ExtractConfig()
    if not is_parts_output(out_path):
        return run_sharded(__name__, "extract_part", warc_paths, out_path,
                           removed_path_for(out_path), cfg, parallel, name="extract")
    paths = resolve_warc_paths(warc_paths)
    stats = run_sharded(__name__, "extract_part", None, out_path, None, cfg, parallel,
                        name="extract", merge="merge_part_stats", finish="drop_repeated_urls",
                        shards=[([str(p)], [p]) for p in paths])
    stats.out_path = str(out_path)
    stats.removed_path = str(Path(out_path) / "part-*.removed.parquet")
    return stats


def drop_repeated_urls(out_dir: Path, tasks: list, records: list[dict[str, Any]]) -> None:
    """A URL already extracted from an earlier WARC file of the day is removed from the later
    part as ``duplicate_url``, as one pass over all the files does: every URL is one document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.io import write_json

    seen: set[str] = set()
    for task, record in zip(tasks, records):
        ids = pq.read_table(task.output, columns=["id"]).column("id").to_pylist()
        repeated = [i for i, doc in enumerate(ids) if doc in seen]
        seen.update(ids)
        if not repeated:
            continue
        rows = pq.read_table(task.output).to_pylist()
        moved = [{**rows[i], "text": rows[i]["text"][:REMOVED_TEXT_CHARS],
                  "reason": "duplicate_url", "detail": "the same URL appeared earlier"}
                 for i in repeated]
        gone = set(repeated)
        kept_schema, removed_schema = _schemas()
        earlier = pq.read_table(task.removed).to_pylist()
        with atomic_path(task.removed) as tmp:
            pq.write_table(pa.Table.from_pylist(earlier + moved, schema=removed_schema), tmp)
        with atomic_path(task.output) as tmp:
            pq.write_table(pa.Table.from_pylist([r for i, r in enumerate(rows) if i not in gone],
                                                schema=kept_schema), tmp)
        stats = record["stats"]
        stats["documents"] -= len(moved)
        stats["text_chars"] -= sum(len(rows[i]["text"]) for i in repeated)
        reasons = stats["removed_by_reason"]
        reasons["duplicate_url"] = reasons.get("duplicate_url", 0) + len(moved)
        record["rows"] -= len(moved)
        record["removed_rows"] += len(moved)
        write_json(task.record, record)


def merge_part_stats(parts: list[dict[str, Any]], seconds: float, cfg: ExtractConfig
                     ) -> ExtractStats:
    """The stats of a day from its parts' (as :func:`extract` returned them, in JSON)."""
    stats = ExtractStats(extractor=parts[0]["extractor"], elapsed_s=seconds)
    for part in parts:
        for name in ("warc_files", "records", "responses", "skipped_status", "documents",
                     "truncated", "html_bytes", "text_chars"):
            setattr(stats, name, getattr(stats, name) + part[name])
        for reason, n in part["removed_by_reason"].items():
            stats.removed_by_reason[reason] = stats.removed_by_reason.get(reason, 0) + n
        stats.warc_errors.extend(part["warc_errors"])
        stats.bad_archive_files.extend(part["bad_archive_files"])
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge extract", description=(
        "Extract the text of the HTML pages in WARC files into a Parquet table of documents "
        "(id, url, title, fetch_time, text). Pages that yield no document go to "
        "OUT.removed.parquet with a reason."))
    p.add_argument("inputs", nargs="+", metavar="WARC_OR_DIR",
                   help="WARC files, or directories of *.warc.gz (e.g. a crawl's --out)")
    p.add_argument("out", metavar="OUT", help="documents to write: a directory, one part per WARC "
                   "file (shards run in parallel), or one .parquet file")
    add_config_arguments(p, ExtractConfig)
    add_parallel_arguments(p)
    args = p.parse_args(argv)
    try:
        stats = extract_sharded(args.inputs, args.out, config_from_args(ExtractConfig, args),
                                parallel_from_args(args))
    except LmforgeError as e:
        print(f"lmforge extract: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats.to_metadata(), indent=2))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('extract', main, sys.argv[1:]))
