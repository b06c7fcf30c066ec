"""SFT data: GSM8K conversations and instruction data derived from pydoc pages."""

from __future__ import annotations

import importlib
import json
import os
import pydoc
import re
import subprocess
import sys

import pytest

from lmforge.io import write_parquet
from lmforge.paths import benchmarks_dir
from lmforge.train import sft_data
from lmforge.benchmarks.gsm8k.reader import strip_calculator
from lmforge.train.sft_data import (read_conversations, sft_data_from_documents, sft_data_from_qa,
                                    validate_conversation)

# Stdlib modules rendered as their pydoc pages: the text the crawler fetches from the local
# documentation server, in pydoc's plain-text rendering (and one HTML page, extracted).
MODULES = ["json", "textwrap", "bisect", "base64", "heapq", "string", "difflib", "shutil", "glob",
           "fnmatch", "colorsys", "calendar", "csv", "gzip", "hashlib", "hmac", "html", "keyword",
           "linecache", "netrc", "numbers", "operator", "pprint", "queue", "quopri", "random",
           "sched", "secrets", "shlex", "statistics", "tempfile", "uuid", "zlib", "fractions"]


def _normal(text: str) -> str:
    return " ".join(text.replace("\xa0", " ").split())


@pytest.fixture(scope="module")
def pydoc_docs(tmp_path_factory):
    from resiliparse.extract.html2text import extract_plain_text

    rows = []
    for name in MODULES:
        module = importlib.import_module(name)
        rows.append({"id": f"pydoc-{name}", "url": f"http://127.0.0.1:8000/{name}.html",
                     "title": f"Pydoc: module {name}",
                     "text": pydoc.render_doc(module, renderer=pydoc.plaintext)})
    # One page the way the crawl sees it: the server's HTML, main text extracted; title only in
    # the url.
    html = pydoc.html.page(pydoc.describe(importlib.import_module("statistics")),
                           pydoc.html.document(importlib.import_module("statistics"), "statistics"))
    rows.append({"id": "html-statistics", "url": "http://127.0.0.1:8000/statistics.html", "title": "",
                 "text": extract_plain_text(html, main_content=True)})
    rows.append({"id": "index", "url": "http://127.0.0.1:8000/", "title": "Pydoc: Index of Modules",
                 "text": "Index of Modules\nbuiltins sys"})
    path = tmp_path_factory.mktemp("pydoc") / "docs.parquet"
    write_parquet(path, rows)
    return path, {r["id"]: r for r in rows}


def test_from_gsm8k(tmp_path):
    source = benchmarks_dir() / "gsm8k" / "train.jsonl"
    out = tmp_path / "gsm8k.jsonl"
    stats = sft_data_from_qa(source, out, limit=200)
    rows = [json.loads(line) for line in source.open().readlines()[:200]]
    conversations = list(read_conversations(out))
    assert stats.examples == len(conversations) == 200 and stats.mean_turns == 2.0
    assert stats.by_task == {"gsm8k": 200}
    for row, messages in zip(rows, conversations):
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == row["question"].strip()
        answer = messages[1]["content"]
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        assert answer.endswith(f"\nThe answer is {final}.")
        assert "<<" not in answer and "####" not in answer
        # The worked reasoning is kept: its first line, less calculator annotations.
        first_line = strip_calculator(row["answer"].splitlines()[0]).strip()
        assert answer.startswith(first_line)
    assert json.loads(json.dumps(stats.to_metadata()))["examples"] == 200


def test_from_gsm8k_counts_rows_without_answer(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Q1?", "answer": "2+2=4\n#### 4"}) + "\n"
                  + json.dumps({"question": "Q2?", "answer": "no final line"}) + "\n")
    stats = sft_data_from_qa(qa, tmp_path / "out.jsonl")
    assert stats.examples == 1 and stats.skipped == {"no_final_answer": 1}
    assert list(read_conversations(tmp_path / "out.jsonl"))[0][1]["content"] == "2+2=4\nThe answer is 4."


def test_from_documents(pydoc_docs, tmp_path):
    path, docs = pydoc_docs
    out = tmp_path / "docs.jsonl"
    stats = sft_data_from_documents(path, out, max_examples=5000, seed=0)
    conversations = list(read_conversations(out))
    assert stats.examples == len(conversations)
    # Several checkable examples per page: a few hundred from a few hundred pages.
    assert stats.examples >= 4 * len(MODULES)
    assert set(stats.by_task) == {"module_summary", "signature", "function_purpose", "classes", "exports"}
    assert stats.skipped == {"no_module_name": 1}  # the index page
    pages = {name: _normal(docs[f"pydoc-{name}"]["text"]) for name in MODULES}
    by_question = {}
    for messages in conversations:
        question, answer = messages[0]["content"], messages[1]["content"]
        by_question[question] = answer
        match = re.search(r"module `([\w.]+)`|`([\w.]+)` module|`(\w+)\.\w+` do", question)
        name = next(g for g in match.groups() if g)
        page = pages[name]
        # Every answer is copied from the page it was derived from.
        if "signature" in question:
            assert answer.startswith("`") and _normal(answer.strip("`")) in page
        elif question.startswith(("Which classes", "Which names")):
            assert all(f"{n}" in page for n in re.findall(r"`(\w+)`", answer))
        else:
            assert _normal(answer) in page, (question, answer)
    # Facts a reader can check against the Python documentation.
    summaries = {q: a for q, a in by_question.items() if "`textwrap`" in q and "signature" not in q}
    assert "Text wrapping and filling." in summaries.values()
    signatures = {a for q, a in by_question.items() if "`dedent`" in q and "signature" in q}
    assert signatures <= {"`dedent(text)`"}
    assert by_question.get("Which classes does the Python module `textwrap` define?") == "`textwrap` defines: `TextWrapper`."
    # The HTML page (module name from its url only) yields examples too.
    assert any("`statistics`" in q for q in by_question)


def test_from_documents_is_deterministic_and_capped(pydoc_docs, tmp_path):
    path, _ = pydoc_docs
    a = sft_data_from_documents(path, tmp_path / "a.jsonl", max_examples=50, seed=3)
    sft_data_from_documents(path, tmp_path / "b.jsonl", max_examples=50, seed=3)
    c = sft_data_from_documents(path, tmp_path / "c.jsonl", max_examples=50, seed=4)
    assert a.examples == c.examples == 50 and a.skipped["over_max_examples"] > 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "a.jsonl").read_text() != (tmp_path / "c.jsonl").read_text()


def test_validate_conversation():
    validate_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    for bad in ([], [{"role": "user", "content": "hi"}],
                [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}],
                [{"role": "user", "content": " "}, {"role": "assistant", "content": "y"}]):
        with pytest.raises(ValueError):
            validate_conversation(bad)


def test_cli(tmp_path, capsys):
    source = benchmarks_dir() / "gsm8k" / "train.jsonl"
    out = tmp_path / "out.jsonl"
    assert sft_data.main(["--from-qa", str(source), "--out", str(out), "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 5
    assert len(out.read_text().splitlines()) == 5
    assert sft_data.main(["--from-qa", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sft_data.main(["--out", str(out)])  # no source
    assert e.value.code == 2


def test_hub_offline_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.train.sft_data", "--from-hub", "lmforge-test/no-such-dataset",
         "--out", str(tmp_path / "x.jsonl")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "could not load 'lmforge-test/no-such-dataset'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.jsonl").exists()


# --------------------------------------------------------------------------- bad inputs, via the CLI

SFT_DATA_CASES = ["missing_qa", "empty_qa", "qa_is_dir", "qa_wrong_shape", "qa_not_json",
                  "docs_no_text_column", "docs_not_parquet", "out_is_dir", "out_parent_is_file",
                  "read_only_destination"]


@pytest.mark.parametrize("case", SFT_DATA_CASES)
def test_cli_bad_inputs_are_one_line_errors(case, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cli_checks import assert_refused, lmforge, read_only_dir, snapshot

    src = tmp_path / "src"
    src.mkdir()
    qa = src / "qa.jsonl"
    qa.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    out = work / "sft.jsonl"
    out.write_text("earlier output\n")
    args, says = ["--from-qa", qa], ""
    if case == "missing_qa":
        args, says = ["--from-qa", src / "nope.jsonl"], "nope.jsonl"
    elif case == "empty_qa":
        qa.write_text("")
        says = "no conversations"
    elif case == "qa_is_dir":
        args, says = ["--from-qa", src], "is a directory"
    elif case == "qa_wrong_shape":
        qa.write_text(json.dumps(["question", "answer"]) + "\n")
        says = "qa.jsonl:1"
    elif case == "qa_not_json":
        qa.write_text("question: what?\n")
        says = "qa.jsonl:1: not JSON"
    elif case == "docs_no_text_column":
        pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), src / "d.parquet")
        args, says = ["--from-docs", src / "d.parquet"], "missing column"
    elif case == "docs_not_parquet":
        (src / "d.parquet").write_text("nope\n")
        args, says = ["--from-docs", src / "d.parquet"], "not a readable Parquet"
    elif case == "out_is_dir":
        out.unlink()
        (out / "sub").mkdir(parents=True)
        (out / "keep.txt").write_text("x\n")
        says = "is a directory"
    elif case == "out_parent_is_file":
        out, says = out / "x.jsonl", "parent"
    roots = [src, work]
    if case == "read_only_destination":
        with read_only_dir(tmp_path / "ro") as ro:
            before = snapshot(*roots, ro)
            proc = lmforge("sft-data", *args, "--out", ro / "sft.jsonl")
            assert_refused(proc, parents=[ro], before=before, roots=[*roots, ro], says="read-only")
        return
    before = snapshot(*roots)
    proc = lmforge("sft-data", *args, "--out", out)
    assert_refused(proc, parents=[work, out.parent], before=before, roots=roots, says=says)
