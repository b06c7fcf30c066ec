"""Every command against a matrix of bad inputs: one line on stderr, exit status 2, no traceback,
nothing left behind, and what was there before unchanged.

The commands run in this process through ``lmforge.cli.main`` (the console script's own entry
point) to keep the matrix fast; a few cases run the real console script in a subprocess, which is
what a user types. Per-command details (truncated archives, garbled models, resume) are tested
beside each stage.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge import cli

DOCS = [{"id": f"d{i}", "url": f"http://example.org/{i}",
         "text": f"Document number {i} talks about arithmetic and the Python language. " * 8}
        for i in range(20)]


def _warc(path: Path) -> Path:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i in range(3):
            html = (f"<html><head><title>Page {i}</title></head><body><p>"
                    + "This page explains how the interpreter reads a module. " * 20
                    + "</p></body></html>").encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                       protocol="HTTP/1.1")
            rec = writer.create_warc_record(f"http://example.org/{i}", "response",
                                            payload=io.BytesIO(html), http_headers=headers)
            writer.write_record(rec)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A directory of good and bad inputs, plus outputs of an earlier run that must survive."""
    w = tmp_path_factory.mktemp("matrix")
    pq.write_table(pa.Table.from_pylist(DOCS), w / "docs.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "1", "body": "no text column"}]), w / "notext.parquet")
    (w / "empty.parquet").write_bytes(b"")
    (w / "garbage.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (w / "notes.txt").write_text("not a web archive\n" * 50)
    with gzip.open(w / "notwarc.warc.gz", "wb") as f:
        f.write(b"hello, this is gzip but not WARC\n" * 100)
    good = _warc(w / "good.warc.gz").read_bytes()
    (w / "truncated.warc.gz").write_bytes(good[: len(good) // 2])
    (w / "empty.jsonl").write_text("")
    (w / "badjson.jsonl").write_text('{"messages": [\n')
    (w / "wrongtype.jsonl").write_text(json.dumps({"messages": "hello"}) + "\n")
    (w / "samples_badtypes.jsonl").write_text(json.dumps({"task_id": 7, "completion": ["x"]}) + "\n")
    (w / "samples.jsonl").write_text(json.dumps(
        {"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    (w / "bad.yaml").write_text("tasks: [unclosed\n  - : :\n")
    (w / "adir").mkdir()
    (w / "adir" / "x.txt").write_text("x")
    # an earlier run's outputs, and a directory someone else keeps files in
    (w / "earlier").mkdir()
    pq.write_table(pa.Table.from_pylist(DOCS[:5]), w / "earlier" / "out.parquet")
    (w / "victim" / "sub").mkdir(parents=True)
    (w / "victim" / "keep.txt").write_text("x")
    return w


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# (command argv with {w} for the work directory, what the error must mention)
CASES = [
    # extract
    ("extract {w}/missing.warc.gz {w}/o.parquet", "missing.warc.gz"),
    ("extract {w}/notes.txt {w}/o.parquet", "notes.txt"),
    ("extract {w}/notwarc.warc.gz {w}/o.parquet", "notwarc.warc.gz"),
    ("extract {w}/truncated.warc.gz {w}/o.parquet", "truncated.warc.gz"),
    ("extract {w}/good.warc.gz {w}/victim", "victim"),
    ("extract {w}/good.warc.gz {w}/earlier/out.parquet/x.parquet", "out.parquet"),
    # filter
    ("filter {w}/missing.parquet {w}/o.parquet", "missing.parquet"),
    ("filter {w}/empty.parquet {w}/o.parquet", "empty.parquet"),
    ("filter {w}/garbage.parquet {w}/o.parquet", "garbage.parquet"),
    ("filter {w}/notext.parquet {w}/o.parquet", "text"),
    ("filter {w}/docs.parquet {w}/victim", "victim"),
    ("filter {w}/notes.txt {w}/o.parquet", "notes.txt"),
    # dedup
    ("dedup {w}/missing.parquet {w}/o.parquet", "missing.parquet"),
    ("dedup {w}/notext.parquet {w}/o.parquet", "text"),
    ("dedup {w}/garbage.parquet {w}/o.parquet", "garbage.parquet"),
    ("dedup {w}/docs.parquet {w}/victim", "victim"),
    ("dedup {w}/docs.parquet {w}/o.parquet --index {w}/notes.txt", "notes.txt"),
    ("dedup {w}/docs.parquet {w}/o.parquet --index {w}/adir", "adir"),
    # decontaminate
    ("decontaminate {w}/missing.parquet {w}/o.parquet", "missing.parquet"),
    ("decontaminate {w}/notext.parquet {w}/o.parquet", "text"),
    ("decontaminate {w}/docs.parquet {w}/victim", "victim"),
    # quality
    ("quality score {w}/docs.parquet {w}/o.parquet --model {w}/adir", "adir"),
    ("quality score {w}/docs.parquet {w}/o.parquet --model {w}/missing", "missing"),
    ("quality train {w}/notext.parquet {w}/qmodel --positives {w}/docs.parquet", "text"),
    ("quality train {w}/docs.parquet {w}/victim --positives {w}/docs.parquet", "victim"),
    # tokenizer and shards
    ("train-tokenizer {w}/missing.parquet {w}/tok", "missing.parquet"),
    ("train-tokenizer {w}/notext.parquet {w}/tok", "text"),
    ("train-tokenizer {w}/docs.parquet {w}/victim", "victim"),
    ("train-tokenizer {w}/docs.parquet {w}/earlier/out.parquet", "out.parquet"),
    ("tokenize {w}/docs.parquet {w}/shards --tokenizer {w}/adir", "adir"),
    ("tokenize {w}/docs.parquet {w}/victim --tokenizer {w}/adir", "victim"),
    # SFT data
    ("sft-data --from-qa {w}/missing.jsonl --out {w}/o.jsonl", "missing.jsonl"),
    ("sft-data --from-qa {w}/badjson.jsonl --out {w}/o.jsonl", "badjson.jsonl"),
    ("sft-data --from-qa {w}/empty.jsonl --out {w}/o.jsonl", "empty.jsonl"),
    ("sft-data --from-qa {w}/adir --out {w}/o.jsonl", "adir"),
    # training
    ("pretrain --preset tiny --data {w}/missing --tokenizer {w}/adir --out {w}/run", "missing|adir"),
    ("pretrain --preset tiny --data {w}/adir --tokenizer {w}/adir --out {w}/victim", "victim|adir"),
    ("sft --base {w}/adir --data {w}/wrongtype.jsonl --out {w}/sftrun", ""),
    ("sft --base {w}/adir --data {w}/adir --out {w}/sftrun", "adir"),
    ("sft --base {w}/missing --data {w}/badjson.jsonl --out {w}/sftrun", ""),
    ("lora --base {w}/missing --data {w}/badjson.jsonl --out {w}/lorarun", ""),
    # evaluation
    ("eval --model {w}/adir --suite smoke --out {w}/evalout", "adir"),
    ("eval --model {w}/missing --suite smoke --out {w}/evalout", "missing"),
    ("eval --model {w}/adir --suite {w}/bad.yaml --out {w}/evalout", "bad.yaml"),
    ("eval --model {w}/adir --suite no-such-suite --out {w}/evalout", "no-such-suite"),
    ("humaneval-exec {w}/missing.jsonl", "missing.jsonl"),
    ("humaneval-exec {w}/badjson.jsonl", "badjson.jsonl"),
    ("humaneval-exec {w}/samples_badtypes.jsonl", "samples_badtypes.jsonl"),
    ("humaneval-exec {w}/samples.jsonl -k 0", "-k"),
    ("humaneval-exec {w}/samples.jsonl --out {w}/victim", "victim"),
    # report
    ("report --artifacts {w}/missing --out {w}/victim", ""),
    # alignment
    ("preferences --from-jsonl {w}/missing.jsonl --out {w}/o.jsonl", "missing.jsonl"),
    ("preferences --from-jsonl {w}/badjson.jsonl --out {w}/o.jsonl", "badjson.jsonl"),
    ("preferences --from-jsonl {w}/wrongtype.jsonl --out {w}/o.jsonl", "wrongtype.jsonl"),
    ("preferences --from-jsonl {w}/empty.jsonl --out {w}/o.jsonl", "empty.jsonl"),
    ("preferences --on-policy {w}/missing --out {w}/o.jsonl", "missing"),
    ("dpo --base {w}/missing --data {w}/badjson.jsonl --out {w}/dporun", "missing"),
    ("dpo --base {w}/adir --data {w}/wrongtype.jsonl --out {w}/dporun", ""),
    ("dpo --base {w}/adir --data {w}/adir --out {w}/dporun", "adir"),
    ("reward-model --base {w}/missing --data {w}/badjson.jsonl --out {w}/rmrun", "missing"),
    ("grpo --base {w}/missing --out {w}/grporun", "missing"),
    ("grpo --base {w}/adir --out {w}/victim", "adir|victim"),
    ("arena --battles-path {w}/missing.jsonl --out {w}/arenaout", "missing.jsonl"),
    ("arena --battles-path {w}/badjson.jsonl --out {w}/arenaout", "badjson.jsonl"),
    ("arena --battles-path {w}/empty.jsonl --out {w}/arenaout", "empty.jsonl|battles"),
    ("arena --model a={w}/missing --model b={w}/adir --out {w}/arenaout", "missing"),
    # scaling laws
    ("scaling-fit {w}/missing.jsonl", "missing.jsonl"),
    ("scaling-fit {w}/badjson.jsonl", "badjson.jsonl"),
    ("scaling-fit {w}/wrongtype.jsonl", "wrongtype.jsonl"),
    ("scaling-fit {w}/empty.jsonl", "empty.jsonl"),
]


@pytest.mark.parametrize("argv,mentions", CASES, ids=[c[0].split(" {w}")[0] + ":" + c[0].split("/")[1].split(" ")[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work, capfd, argv, mentions):
    before = _snapshot(work)
    args = argv.format(w=work).split()
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capfd.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert lines and "error" in lines[-1], err
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1, f"more than one error line:\n{err}"
    if mentions:
        assert re.search(mentions, lines[-1]), f"the error should name {mentions!r}: {lines[-1]}"
    assert _snapshot(work) == before, "a failed command changed or left files behind"


def test_the_console_script_reports_one_line(work):
    """The installed ``lmforge`` script and ``python -m`` behave alike, with no traceback."""
    script = Path(sys.executable).with_name("lmforge")
    before = _snapshot(work)
    for cmd in ([str(script), "filter", str(work / "docs.parquet"), str(work / "victim")],
                [sys.executable, "-m", "lmforge.curate.extract", str(work / "notes.txt"),
                 str(work / "o.parquet")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                              env={**os.environ, "LMFORGE_DEBUG": ""})
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _snapshot(work) == before
