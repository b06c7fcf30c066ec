"""The shipped benchmarks through their one reader: the registry, each benchmark's items from the
test sample (or the full mirror), GSM8K's two facts (calculator annotation, final answer), and a
malformed file named by line."""

from __future__ import annotations

import json

import pytest

from lmforge import benchmarks as B
from lmforge.benchmarks.gsm8k import reader as gsm8k
from lmforge.paths import benchmarks_dir


@pytest.fixture(scope="module")
def mirror():
    root = benchmarks_dir()
    assert root is not None, "set LMFORGE_BENCHMARKS_DIR (tests/data/benchmarks is the sample)"
    return root


def test_registry_lists_every_folder_with_a_reader():
    found = B.registry()
    assert list(found) == ["gsm8k", "heldout", "humaneval", "mmlu"]
    for name, bench in found.items():
        assert bench.folder == B.PACKAGE_ROOT / name and list(bench.folder.glob("*.yaml"))
    assert [n for n, b in found.items() if b.decontaminate] == ["gsm8k", "humaneval", "mmlu"]


def test_items_and_contamination_texts(mirror):
    gsm = B.get("gsm8k")
    raw = [json.loads(x) for x in (mirror / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert gsm.items("test") == [{"question": r["question"], "answer": r["answer"]} for r in raw]
    texts = gsm.contamination_texts()
    assert texts[:3] == [raw[0]["question"], raw[0]["answer"], gsm8k.strip_calculator(raw[0]["answer"])]
    assert not any("<<" in t for t in texts[2::3][:50])
    mmlu = B.get("mmlu").items("test")
    assert {len(i["choices"]) for i in mmlu} == {4} and {i["answer"] for i in mmlu} <= {0, 1, 2, 3}
    assert len({i["subject"] for i in mmlu}) == 57
    he = B.get("humaneval").items("test")
    assert len(he) == 164 and he[0]["task_id"] == "HumanEval/0"
    assert B.get("heldout").contamination_texts() == []  # nothing fixed to protect
    with pytest.raises(B.DataUnavailable, match="no held-out documents"):
        B.get("heldout").items("test")
    with pytest.raises(B.BenchmarkDataError, match="no split 'dev'"):
        gsm.items("dev")


def test_gsm8k_annotation_and_final_answer():
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072"
    assert gsm8k.strip_calculator(answer) == "She sold 48/2 = 24 clips.\nIn all 48+24 = 72.\n#### 1,072"
    assert gsm8k.split_answer(answer)[1] == "1,072" and gsm8k.split_answer("no final") is None
    q, a = gsm8k.chat({"question": " How many? ", "answer": answer})
    assert q == "How many?" and a == "She sold 48/2 = 24 clips.\nIn all 48+24 = 72.\nThe answer is 1072."
    assert gsm8k.chat({"question": "q", "answer": "no final line"}) is None
    assert gsm8k.reference_text("How many?", answer).endswith("72.\nThe answer is 1,072.")


def test_read_jsonl_names_the_bad_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(B.BenchmarkDataError, match=r"x.jsonl:3: expected a JSON object"):
        B.read_jsonl(p)
    p.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert B.read_jsonl(p) == [{"a": 1}, {"b": 2}]


def test_a_broken_extra_benchmark_is_one_line(tmp_path):
    from lmforge.errors import LmforgeError

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "reader.py").write_text("BENCHMARK = None\n")
    with pytest.raises(LmforgeError, match="broken: .*defines no BENCHMARK"):
        B.registry([tmp_path])
    (tmp_path / "broken" / "reader.py").write_text("import nope_not_a_module\n")
    with pytest.raises(LmforgeError, match="broken: .*does not import"):
        B.registry([tmp_path])
    (tmp_path / "broken" / "reader.py").unlink()
    (tmp_path / "gsm8k").mkdir()  # a second gsm8k shadows nothing: it is refused
    (tmp_path / "gsm8k" / "reader.py").write_text("BENCHMARK = None\n")
    with pytest.raises(LmforgeError, match="benchmark gsm8k is defined twice"):
        B.registry([tmp_path])
