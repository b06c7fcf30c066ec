"""Quality classifier: a real fastText model trained on GSM8K train text (positives) against real
pydoc pages mixed with web-style junk (negatives), then used to score unseen documents."""

from __future__ import annotations

import json
import pydoc
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_checks import (DOCUMENT_STAGE_CASES, assert_refused, document_stage_refuses, foreign_dir,
                        lmforge, snapshot)
from lmforge.curate import quality as q
from lmforge.curate.quality import (META_FILE, MODEL_FILE, QualityConfig, qa_text, score_documents,
                                    train_quality_classifier)
from lmforge.io import write_parquet
from lmforge.paths import benchmarks_dir

TRAIN_MODULES = ("argparse", "collections", "csv", "datetime", "functools", "heapq", "itertools",
                 "json", "logging", "pathlib", "random", "shutil", "string", "textwrap", "typing",
                 "zipfile")
UNSEEN_MODULES = ("bisect", "calendar", "fractions", "gzip")

NAV = ["Home", "About", "About us", "Contact", "Login", "Sign up", "Register", "Cart", "Blog",
       "Products", "Services", "Privacy Policy", "Terms of Service", "Cookies", "Sitemap",
       "FAQ", "Careers", "Press", "Next", "Previous", "Share", "Tweet", "Subscribe", "Menu",
       "Search", "Help", "Support", "Accept all cookies", "Skip to content", "Back to top"]
SYMBOLS = list("{}[]<>|=#*&^%$@!~+/\\;:") + ["&nbsp;", "&amp;", "0x1f", "===", "-->", "<!--", "||"]


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def gsm8k_rows() -> list[dict]:
    root = benchmarks_dir()
    path = root / "gsm8k" / "train.jsonl" if root else None
    assert path is not None and path.is_file(), \
        "the quality tests need the GSM8K mirror (gsm8k/train.jsonl under LMFORGE_BENCHMARKS_DIR)"
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(1000), f)]


def pydoc_chunks(modules, words_per_chunk: int = 120) -> list[str]:
    """The plain-text pydoc pages of ``modules``, cut into page-sized documents."""
    import importlib
    chunks = []
    for name in modules:
        words = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext).split()
        chunks += [" ".join(words[i:i + words_per_chunk])
                   for i in range(0, len(words) - words_per_chunk // 2, words_per_chunk)]
    return chunks


def junk(n: int, seed: int) -> list[str]:
    """Boilerplate navigation bars and symbol soup, the lowest tier of a raw crawl."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 2:
            docs.append(" | ".join(rng.choice(NAV) for _ in range(rng.randint(15, 40))))
        else:
            docs.append(" ".join(
                "".join(rng.choice(SYMBOLS) for _ in range(rng.randint(1, 4)))
                + (rng.choice(["", str(rng.randint(0, 999)), rng.choice(NAV).lower()]))
                for _ in range(rng.randint(20, 60))))
    return docs


def doc_rows(name: str, texts: list[str]) -> list[dict]:
    return [{"id": f"{name}-{i}", "url": f"http://x/{name}/{i}", "text": t}
            for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def gsm8k():
    return gsm8k_rows()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gsm8k):
    """A classifier trained on 400 GSM8K train rows vs pydoc chunks of 16 modules + junk."""
    root = tmp_path_factory.mktemp("quality")
    positives = root / "positives.jsonl"
    positives.write_text("".join(json.dumps(r) + "\n" for r in gsm8k[:400]))
    negatives = pydoc_chunks(TRAIN_MODULES)
    negatives = random.Random(0).sample(negatives, min(300, len(negatives))) + junk(150, seed=1)
    neg_path = root / "crawl.parquet"
    write_parquet(neg_path, doc_rows("crawl", negatives))
    cfg = QualityConfig(positives=[str(positives)], max_examples_per_class=400)
    model_dir = root / "model"
    stats = train_quality_classifier(neg_path, model_dir, cfg)
    return {"dir": model_dir, "stats": stats, "cfg": cfg, "negatives": neg_path, "root": root}


def test_fasttext_line_and_qa_text():
    assert q.fasttext_line("Hello,  World!\nfoo.bar(x=1)") == "hello , world ! foo . bar ( x = 1 )"
    assert q.fasttext_line("ＡＢＣ x" * 3, max_chars=5) == "abc x"  # NFKC after truncation
    assert q.fasttext_line("") == ""
    text = q.qa_text("How many?", "She sold 48/2 = <<48/2=24>>24 clips.\n#### 72")
    assert text == "How many?\nShe sold 48/2 = 24 clips.\nThe answer is 72."


def test_training_reports_heldout_metrics(trained):
    stats, model_dir = trained["stats"], trained["dir"]
    m = stats.to_metadata()
    # balanced: 400 positives, 450 negatives -> 400 per class, 40 held out of each
    assert m["examples_per_class"] == 400
    assert (m["train_examples"], m["heldout_examples"]) == (720, 80)
    assert m["positives_read"] == 400 and m["negatives_read"] == 450
    assert m["heldout_accuracy"] >= 0.95 and m["heldout_auc"] >= 0.98
    assert m["heldout_precision"] >= 0.9 and m["heldout_recall"] >= 0.9
    assert sorted(p.name for p in model_dir.iterdir()) == [".lmforge-output", "quality.bin",
                                                           "quality.json"]
    meta = json.loads((model_dir / "quality.json").read_text())
    assert meta["config"]["wordNgrams"] == 2 and meta["config"]["positives"] == trained["cfg"].positives
    assert meta["stats"]["heldout_accuracy"] == m["heldout_accuracy"]
    assert 0 < m["model_mb"] < 100 and m["vocabulary"] > 1000


def test_score_keeps_prose_and_removes_junk(trained, gsm8k, tmp_path):
    prose = [q.qa_text(r["question"], r["answer"]) for r in gsm8k[600:660]]  # never trained on
    bad = junk(60, seed=99)
    src = tmp_path / "docs.parquet"
    write_parquet(src, doc_rows("prose", prose) + doc_rows("junk", bad))
    out, removed = tmp_path / "kept.parquet", tmp_path / "removed.parquet"
    stats = score_documents(src, out, removed, trained["dir"], QualityConfig(threshold=0.5))

    kept, gone = rows(out), rows(removed)
    kept_prose = sum(r["id"].startswith("prose") for r in kept)
    kept_junk = sum(r["id"].startswith("junk") for r in kept)
    assert kept_prose >= 57 and kept_junk <= 3, (kept_prose, kept_junk)
    assert len(kept) + len(gone) == 120
    assert all(r["quality"] >= 0.5 for r in kept)
    assert all(r["reason"] == "quality" and r["quality"] < 0.5 for r in gone)
    assert set(pq.read_schema(out).names) == {"id", "url", "text", "quality"}
    assert set(pq.read_schema(removed).names) == {"id", "url", "text", "quality", "reason"}

    m = stats.to_metadata()
    assert (m["input_documents"], m["kept_documents"]) == (120, len(kept))
    assert m["keep_rate"] == round(len(kept) / 120, 4)
    assert m["removed_by_reason"] == {"quality": len(gone)}
    assert sum(m["score_histogram"].values()) == 120
    # the prose piles up at the top, the junk at the bottom
    assert m["score_histogram"]["0.9-1.0"] >= 50 and m["score_histogram"]["0.0-0.1"] >= 50
    deciles = list(m["score_deciles"].values())
    assert deciles == sorted(deciles) and deciles[0] < 0.1 and deciles[-1] > 0.9


def test_unseen_documentation_scores_like_the_crawl(trained, gsm8k, tmp_path):
    src = tmp_path / "docs.parquet"
    write_parquet(src, doc_rows("doc", pydoc_chunks(UNSEEN_MODULES)[:60]))
    stats = score_documents(src, tmp_path / "k.parquet", tmp_path / "r.parquet", trained["dir"])
    m = stats.to_metadata()
    # docstrings are English prose too, so a few pass; most look like the crawl they came from
    assert m["keep_rate"] <= 0.2 and m["score_deciles"]["p50"] < 0.1


def test_thresholds_and_keep_fraction(trained, gsm8k, tmp_path):
    prose = [q.qa_text(r["question"], r["answer"]) for r in gsm8k[700:720]]
    mixed = prose + pydoc_chunks(UNSEEN_MODULES)[:10] + junk(10, seed=5) + ["", "   "]
    src = tmp_path / "docs.parquet"
    write_parquet(src, doc_rows("d", mixed))

    def run(name: str, **kw):
        out, removed = tmp_path / f"{name}.parquet", tmp_path / f"{name}.removed.parquet"
        stats = score_documents(src, out, removed, trained["dir"], QualityConfig(**kw))
        return stats, {r["id"]: r["quality"] for r in rows(out)}, rows(removed)

    _, everything, none_removed = run("all", threshold=0.0)
    assert len(everything) == 42 and none_removed == []
    assert everything["d-40"] == everything["d-41"] == 0.0  # empty documents score 0
    scores = np.array(list(everything.values()))
    for t in (0.2, 0.5, 0.8):
        stats, kept, gone = run(f"t{t}", threshold=t)
        assert set(kept) == {k for k, s in everything.items() if s >= t}
        assert all(r["quality"] < t and r["reason"] == "quality" for r in gone)
        assert stats.kept_documents == int((scores >= t).sum())
    # DCLM-style: keep the top 25 % whatever the scores are
    stats, kept, _ = run("top", keep_fraction=0.25)
    assert len(kept) >= round(0.25 * 42)
    assert min(kept.values()) == pytest.approx(stats.threshold)
    assert min(kept.values()) >= max(s for k, s in everything.items() if k not in kept)
    assert stats.to_metadata()["keep_fraction"] == 0.25
    with pytest.raises(ValueError, match="threshold"):
        score_documents(src, tmp_path / "x.parquet", tmp_path / "y.parquet", trained["dir"],
                        QualityConfig(threshold=1.5))


def test_keep_fraction_over_a_day_of_parts_is_the_one_pass_result(trained, gsm8k, tmp_path):
    """Shards score their own parts, yet the day keeps the top fraction of the whole day: the
    threshold comes from a first pass over every part, on one process or two."""
    from lmforge.curate.parallel import ParallelConfig
    from lmforge.io import parquet_files, read_parquet_rows, removed_files

    prose = [q.qa_text(r["question"], r["answer"]) for r in gsm8k[720:740]]
    docs = doc_rows("d", prose + pydoc_chunks(UNSEEN_MODULES)[:10] + junk(10, seed=6))
    src = tmp_path / "parts"
    for i in range(3):
        write_parquet(src / f"p{i}.parquet", docs[i::3])
    one = tmp_path / "one.parquet"
    expected = score_documents(src, one, tmp_path / "one.removed.parquet", trained["dir"],
                               QualityConfig(keep_fraction=0.3))
    kept_one = sorted(r["id"] for r in rows(one))
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        stats = q.score_sharded(src, out, None, trained["dir"], QualityConfig(keep_fraction=0.3),
                                ParallelConfig(workers=workers))
        assert len(parquet_files(out)) == 3
        assert sorted(r["id"] for r in read_parquet_rows(out)) == kept_one
        assert len([r for f in removed_files(out) for r in read_parquet_rows(f)]) == \
            len(docs) - len(kept_one)
        assert stats.threshold == expected.threshold
        assert stats.to_metadata()["score_deciles"] == expected.to_metadata()["score_deciles"]


def test_default_positives_are_gsm8k_train_only(monkeypatch, tmp_path):
    (path,) = q.default_positives()
    assert path.endswith("gsm8k/train.jsonl")
    crawl = tmp_path / "crawl.parquet"
    write_parquet(crawl, doc_rows("c", pydoc_chunks(("heapq", "json", "textwrap")) + junk(40, 3)))
    stats = train_quality_classifier(crawl, tmp_path / "m", QualityConfig(max_examples_per_class=60))
    every_row = sum(1 for line in open(path, encoding="utf-8") if line.strip())
    assert stats.positives == [path] and stats.positives_read == every_row
    assert stats.heldout["accuracy"] >= 0.8

    monkeypatch.setattr(q, "benchmarks_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="positives"):
        train_quality_classifier(crawl, tmp_path / "m2", QualityConfig())
    assert not (tmp_path / "m2").exists()


def test_positive_sources(tmp_path):
    # short paragraphs are merged with the next until a chunk has min_words
    (tmp_path / "ref.txt").write_text("Boats.\n\nA chapter about\nthe sea and ships.\n \n\n"
                                      "Another paragraph that is long enough alone.\n\nEnd.\n")
    assert list(q.read_texts(tmp_path / "ref.txt", min_words=6)) == [
        "Boats.\n\nA chapter about\nthe sea and ships.",
        "Another paragraph that is long enough alone.", "End."]
    (tmp_path / "ref.jsonl").write_text('{"text": "a document"}\n\n{"question": "Q?", "answer": "A"}\n')
    assert list(q.read_texts(tmp_path / "ref.jsonl")) == ["a document", "Q?\nA"]
    write_parquet(tmp_path / "ref.parquet", doc_rows("r", ["one", "two"]))
    assert list(q.read_texts(tmp_path / "ref.parquet")) == ["one", "two"]

    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a `text`"):
        list(q.read_texts(tmp_path / "bad.jsonl"))
    (tmp_path / "ref.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="unsupported"):
        list(q.read_texts(tmp_path / "ref.csv"))
    with pytest.raises(FileNotFoundError):
        list(q.read_texts(tmp_path / "missing.jsonl"))


def test_bad_training_input_is_a_clear_error(tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"text": f"a real sentence number {i} with words"}) + "\n"
                           for i in range(20)))
    crawl = tmp_path / "crawl.parquet"
    write_parquet(crawl, doc_rows("c", ["home | about | contact | login | faq"] * 3))
    with pytest.raises(ValueError, match="too little data"):
        train_quality_classifier(crawl, tmp_path / "m", QualityConfig(positives=[str(ref)]))

    # a learning rate far too high makes fastText diverge: say so, and leave no model behind
    write_parquet(crawl, doc_rows("c", pydoc_chunks(("heapq", "json"))))
    with pytest.raises(RuntimeError, match="lower lr"):
        train_quality_classifier(crawl, tmp_path / "m", QualityConfig(positives=[str(ref)],
                                                                      lr=1e4))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_cli_train_and_score(trained, gsm8k, tmp_path, capsys):
    positives = trained["root"] / "positives.jsonl"
    model = tmp_path / "model"
    code = q.main(["train", str(trained["negatives"]), str(model), "--positives", str(positives),
                   "--max-examples-per-class", "400"])
    assert code == 0 and (model / "quality.bin").is_file()
    # same data, seed and one thread: the very same model as the fixture's
    assert (model / "quality.bin").read_bytes() == (trained["dir"] / "quality.bin").read_bytes()
    assert json.loads((model / "quality.json").read_text())["stats"]["heldout_accuracy"] == \
        trained["stats"].heldout["accuracy"]

    src = tmp_path / "docs.parquet"
    prose = [q.qa_text(r["question"], r["answer"]) for r in gsm8k[800:810]]
    write_parquet(src, doc_rows("d", prose + junk(10, seed=7)))
    out = tmp_path / "kept.parquet"
    assert q.main(["score", str(src), str(out), "--model", str(model), "--threshold", "0.5"]) == 0
    assert {r["id"] for r in rows(out)} >= {f"d-{i}" for i in range(8)}
    assert all(r["reason"] == "quality" for r in rows(tmp_path / "kept.removed.parquet"))
    assert "kept ->" in capsys.readouterr().out

    assert q.main(["score", str(src), str(out), "--model", str(tmp_path / "nope")]) == 2
    assert "no quality model" in capsys.readouterr().err
    assert q.main(["train", str(tmp_path / "missing.parquet"), str(model)]) == 2


# --------------------------------------------------------------------------- bad inputs, via the CLI

@pytest.mark.parametrize("case", DOCUMENT_STAGE_CASES)
def test_cli_score_bad_inputs_are_one_line_errors(case, trained, gsm8k, tmp_path):
    model_dir = trained["dir"]
    docs = tmp_path / "good.parquet"
    write_parquet(docs, doc_rows("good", [qa_text(r["question"], r["answer"]) for r in gsm8k[:5]]))
    document_stage_refuses(["quality", "score", "--model", str(model_dir)], case,
                           tmp_path / "case", docs)


@pytest.mark.parametrize("how", ["cut", "garbage_after_header", "not_fasttext"])
def test_garbled_quality_model_is_an_error_not_a_crash(how, trained, gsm8k, tmp_path):
    model_dir = trained["dir"]
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / META_FILE).write_bytes((Path(model_dir) / META_FILE).read_bytes())
    data = (Path(model_dir) / MODEL_FILE).read_bytes()
    (bad / MODEL_FILE).write_bytes({"cut": data[: len(data) // 3],
                                    "garbage_after_header": data[:64] + bytes(range(256)) * 64,
                                    "not_fasttext": b"not a model\n" * 50}[how])
    docs = tmp_path / "docs.parquet"
    write_parquet(docs, doc_rows("d", [qa_text(r["question"], r["answer"]) for r in gsm8k[:3]]))
    before = snapshot(tmp_path)
    proc = lmforge("quality", "score", docs, tmp_path / "out.parquet", "--model", bad)
    assert_refused(proc, parents=[tmp_path], before=before, roots=[tmp_path],
                   says=str(bad / MODEL_FILE))  # exit 2, not -11 (SIGSEGV)


def test_cli_train_refuses_a_foreign_directory(gsm8k, tmp_path):
    docs = tmp_path / "crawl.parquet"
    write_parquet(docs, doc_rows("c", junk(20, 0)))
    target = foreign_dir(tmp_path / "mine")
    before = snapshot(tmp_path)
    proc = lmforge("quality", "train", docs, target)
    assert_refused(proc, parents=[tmp_path], before=before, roots=[tmp_path], says="did not make")
