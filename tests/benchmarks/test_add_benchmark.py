"""The README's "Adding a benchmark" example, run exactly as written: a new folder with a reader
and a task YAML is read by decontamination and by evaluation's task loading, and a suite picks its
task up with one line; nothing else changes. The example lives in a temporary root (given as an
argument or through LMFORGE_BENCHMARK_PATH), not in the package."""

from __future__ import annotations

import json

import pytest
import yaml

from lmforge import benchmarks as B
from lmforge.curate.decontaminate import DecontamConfig, decontaminate
from lmforge.evaluate.harness import load_suite
from lmforge.evaluate.tasks import check_local_tasks, local_task_names, task_include_paths
from lmforge.io import write_parquet
from readme_examples import readme_block

# Exactly the README's text (tests/readme_examples.py).
READER_PY = readme_block("benchmark-reader")  # lmforge/benchmarks/tinyqa/reader.py
TASK_YAML = readme_block("benchmark-task")  # lmforge/benchmarks/tinyqa/lmforge_tinyqa.yaml
SUITE_LINE = readme_block("benchmark-suite-line")  # one line under `tasks:` of a suite

QUESTIONS = [
    ("Which river flows through the old capital city that the travellers visited on their "
     "second day in the north?", "the Vltava"),
    ("How many wheels did the blue cart carry when the farmer drove it to the village market "
     "last spring?", "four"),
    ("What colour was the lantern that hung above the door of the small bakery at the end of "
     "the lane?", "green"),
]


@pytest.fixture
def example(tmp_path):
    """(root holding tinyqa/, a mirror holding tinyqa/ data)."""
    root, mirror = tmp_path / "extra", tmp_path / "mirror"
    (root / "tinyqa").mkdir(parents=True)
    (root / "tinyqa" / "reader.py").write_text(READER_PY)
    (root / "tinyqa" / "lmforge_tinyqa.yaml").write_text(TASK_YAML)
    (mirror / "tinyqa").mkdir(parents=True)
    for split, rows in (("test", QUESTIONS), ("train", [("What is two plus two, written as a "
                                                          "word?", "four")] * 3)):
        (mirror / "tinyqa" / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return root, mirror


def test_the_new_folder_is_registered_by_argument_or_environment(example, monkeypatch):
    root, mirror = example
    assert "tinyqa" not in B.names()
    bench = B.get("tinyqa", [root])
    assert bench.folder == root / "tinyqa"
    assert [i["question"] for i in bench.items("test", benchmarks_dir=mirror)] == [q for q, _ in QUESTIONS]
    assert bench.chat_pairs("test", benchmarks_dir=mirror)[1] == QUESTIONS[1]
    # The environment variable is read at each call, not at import.
    monkeypatch.setenv(B.PATH_ENV, str(root))
    assert "tinyqa" in B.names() and str(root) in task_include_paths()
    monkeypatch.delenv(B.PATH_ENV)
    assert "tinyqa" not in B.names()


def test_decontamination_protects_the_new_benchmark(example, tmp_path):
    root, mirror = example
    docs = tmp_path / "docs.parquet"
    write_parquet(docs, [
        {"id": "quote", "url": "http://x/quote", "text": f"Quiz night! {QUESTIONS[2][0]} Answer below."},
        {"id": "clean", "url": "http://x/clean", "text": "A lantern hung above the door. " * 5},
    ])
    cfg = DecontamConfig(benchmarks_dir=str(mirror), benchmark_roots=[str(root)])
    assert "tinyqa" in cfg.benchmark_names()  # no list to edit: every registered benchmark
    stats = decontaminate(docs, tmp_path / "kept.parquet", tmp_path / "removed.parquet", cfg)
    assert stats.benchmarks["tinyqa"].documents_removed == 1 and stats.kept_documents == 1
    assert stats.samples[0]["id"] == "quote" and stats.samples[0]["benchmark"] == "tinyqa"
    # Its data missing: reported as skipped with the reason, as for the shipped benchmarks.
    (mirror / "tinyqa" / "test.jsonl").unlink()
    stats = decontaminate(docs, tmp_path / "k2.parquet", tmp_path / "r2.parquet", cfg)
    assert "no test split" in stats.skipped["tinyqa"] and stats.removed_documents == 0


def test_evaluation_loads_the_new_task_and_a_suite_line_names_it(example, tmp_path):
    from lm_eval.tasks import TaskManager

    root, mirror = example
    tm = TaskManager(include_path=task_include_paths([root]), include_defaults=False,
                     metadata={"benchmarks_dir": str(mirror)})
    task = tm.load(["lmforge_tinyqa"])["tasks"]["lmforge_tinyqa"]
    docs = list(task.test_docs())
    assert [d["question"] for d in docs] == [q for q, _ in QUESTIONS]
    assert task.doc_to_text(docs[0]) == f"Question: {QUESTIONS[0][0]}\nAnswer:"
    # Adding it to a suite is one line; the suite's early check finds the task.
    suite = tmp_path / "mine.yaml"
    suite.write_text("name: mine\ntasks:\n" + SUITE_LINE)
    assert yaml.safe_load(SUITE_LINE)[0]["local_task"] == "lmforge_tinyqa"
    check_local_tasks(load_suite(suite), suite, [root])
    assert local_task_names([root])["lmforge_tinyqa"] == root / "tinyqa" / "lmforge_tinyqa.yaml"
    with pytest.raises(Exception, match="lmforge_tinyqa"):  # not there without its root
        check_local_tasks(load_suite(suite), suite)

