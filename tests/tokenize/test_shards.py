"""Token shards: exact counts, eos after every document, a deterministic split, atomic output."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_checks import assert_refused, foreign_dir, lmforge, read_only_dir, snapshot
from lmforge.io import (count_rows, part_path, read_parquet_rows, removed_path_for, write_manifest,
                        write_parquet)
from lmforge.tokenize import shards
from lmforge.tokenize.bpe import heldout_ids
from lmforge.tokenize.shards import ShardConfig, load_tokens, token_dtype, tokenize_documents


@pytest.fixture(scope="module")
def tokens_dir(trained, docs_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "tokens"
    stats = tokenize_documents(docs_path, trained[0], out, ShardConfig())
    return out, stats


def test_counts_match_re_encoding(tokens_dir, docs_path, hf_tokenizer):
    out, stats = tokens_dir
    val_ids = heldout_ids(docs_path, ShardConfig().val_fraction, ShardConfig().seed)
    docs = list(read_parquet_rows(docs_path))
    expected = {"train": [], "val": []}
    for d in docs:  # re-encode through transformers, independently of the shard writer
        split = "val" if d["id"] in val_ids else "train"
        expected[split].append(hf_tokenizer.encode(d["text"], add_special_tokens=False))
    eos = hf_tokenizer.eos_token_id
    for split in ("train", "val"):
        header = json.loads((out / f"{split}.json").read_text())
        tokens = load_tokens(out, split)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and not tokens.flags.writeable
        flat = [t for ids in expected[split] for t in (*ids, eos)]
        assert header["num_tokens"] == len(flat) == len(tokens)
        assert header["num_documents"] == len(expected[split])
        assert tokens.tolist() == flat
        # Every document ends with eos, and eos appears nowhere else.
        assert tokens[-1] == eos and int((tokens == eos).sum()) == len(expected[split])
        assert header["dtype"] == "uint16" and header["eos_id"] == eos == 0
        assert header["vocab_size"] == len(hf_tokenizer)
        assert len(header["tokenizer_sha256"]) == 64
    assert stats.train_documents + stats.val_documents == len(docs)
    assert stats.val_documents == len(val_ids) > 0
    assert stats.train_tokens == len(load_tokens(out, "train"))
    assert 2.0 < stats.bytes_per_token < 6.0 and stats.tokens_per_second > 0
    json.dumps(stats.to_metadata())


def test_val_parquet_holds_the_held_out_documents(tokens_dir, docs_path):
    out, stats = tokens_dir
    val = pq.read_table(out / "val.parquet").to_pylist()
    assert {r["id"] for r in val} == heldout_ids(docs_path, 0.05, 0)
    source = {d["id"]: d for d in read_parquet_rows(docs_path)}
    assert all(r["text"] == source[r["id"]]["text"] and r["url"] == source[r["id"]]["url"] for r in val)


def test_deterministic(tokens_dir, trained, docs_path, tmp_path):
    out, _ = tokens_dir
    again = tmp_path / "again"
    tokenize_documents(docs_path, trained[0], again, ShardConfig(batch_rows=97))
    for name in ("train.bin", "val.bin"):
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_special_token_text_and_empty_documents(trained, tmp_path, hf_tokenizer):
    docs = tmp_path / "docs.parquet"
    write_parquet(docs, [
        {"id": "a", "url": "u", "text": "A page that quotes <|endoftext|> and <|im_end|> literally."},
        {"id": "b", "url": "u", "text": ""},
        {"id": "c", "url": "u", "text": "Another document."},
    ])
    stats = tokenize_documents(docs, trained[0], tmp_path / "t", ShardConfig())
    assert stats.skipped_empty_documents == 1
    assert stats.train_documents + stats.val_documents == 2 and stats.val_documents == 1
    every = np.concatenate([load_tokens(tmp_path / "t", s) for s in ("train", "val")])
    assert int((every == 0).sum()) == 2  # only the two document separators
    assert 3 not in every.tolist()  # no <|im_end|> from document text
    assert "<|endoftext|> and <|im_end|>" in hf_tokenizer.decode(every.tolist())


def test_dtype_by_vocab_size():
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_failure_leaves_previous_output(trained, tmp_path):
    good = tmp_path / "good.parquet"
    write_parquet(good, [{"id": str(i), "url": "", "text": f"document number {i}"} for i in range(5)])
    out = tmp_path / "tokens"
    tokenize_documents(good, trained[0], out)
    before = (out / "train.bin").read_bytes()
    bad = tmp_path / "bad.parquet"
    write_parquet(bad, [{"id": "x", "url": "", "body": "no text column"}])
    with pytest.raises(ValueError, match="text"):
        tokenize_documents(bad, trained[0], out)
    assert (out / "train.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "good.parquet", "tokens"]


def test_cli(trained, docs_path, tmp_path, capsys):
    assert shards.main([str(docs_path), str(tmp_path / "t"), "--tokenizer", str(trained[0])]) == 0
    assert json.loads(capsys.readouterr().out)["val_documents"] > 0
    assert shards.main([str(docs_path), str(tmp_path / "u"), "--tokenizer", str(tmp_path)]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad inputs, via the CLI

SHARD_CASES = ["missing_docs", "empty_docs", "docs_not_parquet", "no_text_column", "out_foreign_dir",
               "out_is_file", "no_tokenizer", "garbled_tokenizer", "read_only_destination"]


@pytest.mark.parametrize("case", SHARD_CASES)
def test_cli_bad_inputs_are_one_line_errors(case, trained, gsm8k_docs, tmp_path):
    import pyarrow as pa

    src = tmp_path / "src"
    src.mkdir()
    docs = src / "docs.parquet"
    write_parquet(docs, gsm8k_docs(10))
    tok = src / "tok"
    tok.mkdir()
    for f in trained[0].iterdir():
        (tok / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "tokens"
    says = ""
    if case == "missing_docs":
        docs, says = src / "nope.parquet", "nope.parquet"
    elif case == "empty_docs":
        docs.write_bytes(b"")
        says = "empty"
    elif case == "docs_not_parquet":
        docs.write_text("not parquet\n")
        says = "not a readable Parquet"
    elif case == "no_text_column":
        pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), docs)
        says = "missing column"
    elif case == "out_foreign_dir":  # tokenize used to wipe unrelated files here
        foreign_dir(out)
        says = "did not make"
    elif case == "out_is_file":
        out.write_text("a file\n")
        says = "is a file"
    elif case == "no_tokenizer":
        tok = src / "no_tok"
        says = "no tokenizer directory"
    elif case == "garbled_tokenizer":
        (tok / "tokenizer.json").write_text('{"model": ')
        says = "not a tokenizer file"
    roots = [src, tmp_path / "tokens"]
    if case == "read_only_destination":
        with read_only_dir(tmp_path / "ro") as ro:
            before = snapshot(*roots, ro)
            proc = lmforge("tokenize", docs, ro / "tokens", "--tokenizer", tok)
            assert_refused(proc, parents=[ro], before=before, roots=[*roots, ro], says="read-only")
        return
    before = snapshot(*roots)
    proc = lmforge("tokenize", docs, out, "--tokenizer", tok)
    assert_refused(proc, parents=[tmp_path], before=before, roots=roots, says=says)


# --------------------------------------------------------------------------- one shard set per day

def _write_day_dir(corpus, day: str, rows: list[dict]) -> None:
    """A day in the curation stages' directory layout: parts, then ``_manifest.json`` last."""
    d = corpus / day
    d.mkdir()
    halves = [rows[: len(rows) // 2], rows[len(rows) // 2:]]
    for i, part in enumerate(halves):
        write_parquet(part_path(d, i), part)
        write_parquet(removed_path_for(part_path(d, i)), [])
    write_manifest(d, [{"file": part_path(d, i).name, "removed": removed_path_for(part_path(d, i)).name,
                        "rows": len(part), "removed_rows": 0} for i, part in enumerate(halves)])


def _split_of(days_list_dir, split: str) -> set[str]:
    from lmforge.train.data import shard_dirs

    return {r["id"] for d in shard_dirs(days_list_dir) for r in read_parquet_rows(d / "val.parquet")} \
        if split == "val" else set()


def test_a_new_day_tokenizes_only_that_day(trained, gsm8k_docs, tmp_path):
    from lmforge.train.data import open_shard, read_header, shard_dirs

    rows = gsm8k_docs(300)
    corpus, days = tmp_path / "corpus", tmp_path / "days"
    corpus.mkdir()
    write_parquet(corpus / "2026-01-01.parquet", rows[:150])  # the one-file layout of a day
    first = shards.tokenize_days(corpus, trained[0], days, tmp_path / "v1")
    assert (first.days, first.days_tokenized) == (1, 1)
    (day1,) = shard_dirs(tmp_path / "v1")
    before = {name: (day1 / name).stat() for name in ("train.bin", "val.bin", "manifest.json")}

    _write_day_dir(corpus, "2026-01-02", rows[150:])  # the parts + manifest layout
    second = shards.tokenize_days(corpus, trained[0], days, tmp_path / "v2")
    assert (second.days, second.days_tokenized) == (2, 1)
    dirs = shard_dirs(tmp_path / "v2")
    assert dirs[0].resolve() == day1.resolve() and len(dirs) == 2
    for name, st in before.items():  # the old day's files were not written again
        now = (day1 / name).stat()
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size)
    # The list reads as each day tokenized on its own, oldest first.
    for split in ("train", "val"):
        alone = [load_tokens(d, split) for d in dirs]
        tokens, header = open_shard(tmp_path / "v2", split)
        assert tokens[0:len(tokens)].tolist() == np.concatenate(alone).tolist()
        assert header["num_tokens"] == len(tokens) == sum(map(len, alone))
        assert json.loads((tmp_path / "v2" / f"{split}.json").read_text())["num_tokens"] == len(tokens)
        assert read_header(tmp_path / "v2", split)["num_tokens"] == len(tokens)
    assert second.train_tokens == first.train_tokens + json.loads(
        (dirs[1] / "manifest.json").read_text())["stats"]["train_tokens"]
    listing = json.loads((tmp_path / "v2" / "shards.json").read_text())
    assert [d["day"] for d in listing["days"]] == ["2026-01-01", "2026-01-02"]
    assert sum(d["train_tokens"] for d in listing["days"]) == second.train_tokens
    # The held-out split is per document: day 1's documents stay where they were.
    v1_val, v2_val = _split_of(tmp_path / "v1", "val"), _split_of(tmp_path / "v2", "val")
    assert v1_val and v1_val < v2_val
    assert v2_val - v1_val == heldout_ids(corpus / "2026-01-02", 0.05, 0)
    # The version's val.parquet: the first eval_documents held-out documents, oldest day first.
    assert [r["id"] for r in read_parquet_rows(tmp_path / "v2" / "val.parquet")] == \
        [r["id"] for d in dirs for r in read_parquet_rows(d / "val.parquet")]
    small = shards.tokenize_days(corpus, trained[0], days, tmp_path / "v3", ShardConfig(eval_documents=2))
    assert small.days_tokenized == 0 and count_rows(tmp_path / "v3" / "val.parquet") == 2


def test_day_sets_are_redone_when_their_input_or_files_change(trained, gsm8k_docs, tmp_path):
    from lmforge.train.data import shard_dirs

    rows = gsm8k_docs(200)
    corpus, days = tmp_path / "corpus", tmp_path / "days"
    corpus.mkdir()
    write_parquet(corpus / "2026-01-01.parquet", rows[:100])
    write_parquet(corpus / "2026-01-02.parquet", rows[100:])
    assert shards.tokenize_days(corpus, trained[0], days, tmp_path / "a").days_tokenized == 2
    assert shards.tokenize_days(corpus, trained[0], days, tmp_path / "a").days_tokenized == 0
    # Day 2 curated again (say with a new filter): only it is tokenized again, into a new set.
    old_day2 = shard_dirs(tmp_path / "a")[1].resolve()
    write_parquet(corpus / "2026-01-02.parquet", rows[100:180])
    again = shards.tokenize_days(corpus, trained[0], days, tmp_path / "b")
    assert again.days_tokenized == 1 and shard_dirs(tmp_path / "b")[1].resolve() != old_day2
    assert old_day2.is_dir()  # still what version "a" lists
    # A set without its manifest (killed before it was renamed into place, or damaged) is redone.
    day1 = shard_dirs(tmp_path / "b")[0]
    (day1 / "manifest.json").unlink()
    assert shards.tokenize_days(corpus, trained[0], days, tmp_path / "c").days_tokenized == 1
    with open(day1 / "train.bin", "ab") as f:
        f.write(b"\0\0")
    assert shards.tokenize_days(corpus, trained[0], days, tmp_path / "d").days_tokenized == 1
    # Another split setting is another set.
    assert shards.tokenize_days(corpus, trained[0], days, tmp_path / "e",
                                ShardConfig(val_fraction=0.2)).days_tokenized == 2


def test_days_cli(trained, gsm8k_docs, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_parquet(corpus / "2026-01-01.parquet", gsm8k_docs(50))
    assert shards.main([str(corpus), str(tmp_path / "out"), "--tokenizer", str(trained[0]),
                        "--days", str(tmp_path / "days")]) == 0
    assert json.loads(capsys.readouterr().out)["days_tokenized"] == 1
    assert (tmp_path / "out" / "shards.json").is_file()
