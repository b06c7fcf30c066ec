"""Adapter tasks: the YAML registry and the conversations each task's source gives."""

from __future__ import annotations

import json

import pytest

from lmforge.paths import benchmarks_dir
from lmforge.train import sft_data, tasks
from lmforge.train.sft_data import read_conversations, sft_data_from_documents
from lmforge.train.tasks import (AdapterTask, TaskDataUnavailable, build_task_data, load_task,
                                 task_names)
from .test_sft_data import pydoc_docs  # noqa: F401  (a fixture)


def test_document_kinds_filter(pydoc_docs, tmp_path):  # noqa: F811
    path, _ = pydoc_docs
    stats = sft_data_from_documents(path, tmp_path / "sig.jsonl", max_examples=5000,
                                    kinds=["signature"])
    assert set(stats.by_task) == {"signature"} and stats.examples > 20
    for messages in read_conversations(tmp_path / "sig.jsonl"):
        assert "signature" in messages[0]["content"]
    rest = sft_data_from_documents(path, tmp_path / "rest.jsonl", max_examples=5000,
                                   kinds=[k for k in sft_data.DOCUMENT_KINDS if k != "signature"])
    everything = sft_data_from_documents(path, tmp_path / "all.jsonl", max_examples=5000)
    assert stats.examples + rest.examples == everything.examples
    with pytest.raises(ValueError, match="unknown example kinds"):
        sft_data_from_documents(path, tmp_path / "x.jsonl", kinds=["signatures"])


def test_shipped_tasks_build(pydoc_docs, tmp_path):  # noqa: F811
    assert task_names() == ["math", "signatures"]
    docs, _ = pydoc_docs
    signatures = build_task_data(load_task("signatures"), tmp_path / "s.jsonl", documents=docs)
    assert signatures.by_task == {"signature": signatures.examples} and signatures.examples > 20
    if benchmarks_dir() is None:
        pytest.fail("the benchmark mirror (LMFORGE_BENCHMARKS_DIR) is needed for the math task")
    math = build_task_data(load_task("math"), tmp_path / "m.jsonl")
    rows = list(read_conversations(tmp_path / "m.jsonl"))
    assert math.examples == len(rows) == load_task("math").limit
    assert all(r[-1]["content"].rstrip().split()[-1].rstrip(".").lstrip("-").replace(".", "").isdigit()
               for r in rows), "every math answer ends with its number"


def test_missing_sources_are_reported_not_faked(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "benchmarks_dir", lambda: None)
    with pytest.raises(TaskDataUnavailable, match="no benchmark mirror|none was found"):
        build_task_data(load_task("math"), tmp_path / "m.jsonl")
    with pytest.raises(TaskDataUnavailable, match="no curated documents"):
        build_task_data(load_task("signatures"), tmp_path / "s.jsonl", documents=tmp_path / "nope")
    monkeypatch.setattr(tasks, "benchmarks_dir", lambda: tmp_path)  # a mirror without GSM8K
    with pytest.raises(TaskDataUnavailable, match="task math: .*has no gsm8k/ folder"):
        build_task_data(load_task("math"), tmp_path / "m.jsonl")
    # A GSM8K-format file given by path, relative to the mirror, the older form of a qa task.
    with pytest.raises(TaskDataUnavailable, match="has no gsm8k/train.jsonl"):
        build_task_data(AdapterTask(name="m", description="m", source="qa",
                                    path="gsm8k/train.jsonl"), tmp_path / "m.jsonl")
    # A source that gives nothing is unavailable too (no adapter is trained on an empty file).
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TaskDataUnavailable, match="gave no conversations"):
        build_task_data(AdapterTask(name="e", description="e", source="jsonl", path=str(empty)),
                        tmp_path / "e.jsonl")
    # A file the task names that is not there is a mistake, not a missing mirror.
    missing = AdapterTask(name="x", description="x", source="jsonl", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="no file") as e:
        build_task_data(missing, tmp_path / "x.jsonl")
    assert not isinstance(e.value, TaskDataUnavailable)
    for name in ("m.jsonl", "e.jsonl", "x.jsonl"):
        assert not (tmp_path / name).exists()


def test_custom_task_directory_and_jsonl_source(monkeypatch, tmp_path):
    chats = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(5)]
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "greet.yaml").write_text(  # relative: beside the YAML
        "description: answers\nsource: jsonl\npath: ../chats.jsonl\nlimit: 3\n")
    (tmp_path / "tasks" / "bad.yaml").write_text("description: x\nsource: qa\n")
    (tmp_path / "tasks" / "typo.yaml").write_text("description: x\nsource: jsonl\npath: a\nlimt: 3\n")
    (tmp_path / "tasks" / "other.yaml").write_text("name: renamed\ndescription: x\nsource: jsonl\npath: a\n")
    monkeypatch.setenv("LMFORGE_ADAPTER_TASKS_DIR", str(tmp_path / "tasks"))
    assert task_names() == ["bad", "greet", "other", "typo"]
    stats = build_task_data(load_task("greet"), tmp_path / "out.jsonl")
    assert stats.examples == 3
    assert [r["messages"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())] \
        == [r["messages"] for r in rows[:3]]
    with pytest.raises(ValueError, match="needs a benchmark or a path"):
        load_task("bad")
    with pytest.raises(ValueError, match="limt"):
        load_task("typo")
    with pytest.raises(ValueError, match="differs from the file name"):
        load_task("other")
    for bad, why in (("source: documents\npath: x.jsonl", "takes no path"),
                     ("source: jsonl\npath: a.jsonl\nsplit: test", "split only applies"),
                     ("source: qa\nbenchmark: gsm8", "unknown benchmark 'gsm8'; known: gsm8k"),
                     ("source: jsonl\nbenchmark: gsm8k", "benchmark only applies to source 'qa'"),
                     ("source: qa\nbenchmark: gsm8k\npath: a.jsonl", "not both")):
        (tmp_path / "tasks" / "wrong.yaml").write_text(f"description: x\n{bad}\n")
        with pytest.raises(ValueError, match=why):
            load_task("wrong")
    # Known benchmark, but no question/answer form or no such split: refused before any work.
    for bad, why in (("benchmark: mmlu", "mmlu has no question/answer form"),
                     ("benchmark: gsm8k\nsplit: dev", "gsm8k has no split 'dev'")):
        (tmp_path / "tasks" / "wrong.yaml").write_text(f"description: x\nsource: qa\n{bad}\n")
        with pytest.raises(ValueError, match=why):
            build_task_data(load_task("wrong"), tmp_path / "w.jsonl")
        assert not (tmp_path / "w.jsonl").exists()
    (tmp_path / "tasks" / "wrong.yaml").unlink()
    with pytest.raises(ValueError, match="unknown adapter task 'nope'"):
        load_task("nope")
    (tmp_path / "tasks" / "broken.yaml").write_text(
        f"description: x\nsource: jsonl\npath: {tmp_path / 'broken.jsonl'}\n")
    (tmp_path / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1: not a chat row"):
        build_task_data(load_task("broken"), tmp_path / "b.jsonl")


def test_sft_data_cli_kinds(pydoc_docs, tmp_path, capsys):  # noqa: F811
    path, _ = pydoc_docs
    assert sft_data.main(["--from-docs", str(path), "--out", str(tmp_path / "c.jsonl"),
                          "--kinds", "classes,exports"]) == 0
    assert set(json.loads(capsys.readouterr().out)["by_task"]) == {"classes", "exports"}
    assert sft_data.main(["--from-docs", str(path), "--out", str(tmp_path / "c.jsonl"),
                          "--kinds", "nope"]) == 2


@pytest.mark.parametrize("text, says", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- a\n- list\n", "expected a mapping"),
    ("description: x\nsource: qa\npath: p.jsonl\nlimit: lots\n", "limit"),
    ("\tdescription: tab-indented\n", "not valid YAML"),
])
def test_malformed_task_files_are_one_line_errors(text, says, tmp_path, monkeypatch):
    from lmforge.errors import LmforgeError

    monkeypatch.setenv("LMFORGE_ADAPTER_TASKS_DIR", str(tmp_path))
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(LmforgeError, match=says) as e:
        load_task("bad")
    assert isinstance(e.value, ValueError) and "bad.yaml" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_a_task_with_no_conversations_leaves_the_earlier_output(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "task.jsonl"
    out.write_text("earlier\n")
    with pytest.raises(TaskDataUnavailable, match="gave no conversations"):
        build_task_data(AdapterTask(name="e", description="e", source="jsonl", path=str(empty)), out)
    assert out.read_text() == "earlier\n"
