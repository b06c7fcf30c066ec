"""The BPE tokenizer: trained on real text, loaded by transformers, exact, with a chat template."""

from __future__ import annotations

import json

import pytest

from cli_checks import assert_refused, foreign_dir, lmforge, read_only_dir, snapshot
from lmforge.io import count_rows, write_parquet
from lmforge.tokenize import bpe
from lmforge.tokenize.bpe import (EOT_TOKEN, IM_END_TOKEN, IM_START_TOKEN, SPECIAL_TOKENS,
                                  heldout_ids, train_tokenizer)


def test_autotokenizer_loads_with_special_tokens(trained, hf_tokenizer, tokenizer_cfg):
    out, stats = trained
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    tok = hf_tokenizer
    assert len(tok) == tokenizer_cfg.vocab_size == stats.vocab_size
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 0, 1)
    assert EOT_TOKEN == IM_END_TOKEN and tok.convert_tokens_to_ids(EOT_TOKEN) == 3
    # The config is spelled so that transformers 4.x can load it as well.
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == bpe.CHAT_TEMPLATE


def test_round_trip_is_exact(hf_tokenizer, gsm8k_docs):
    tok = hf_tokenizer
    held_out = [r["text"] for r in gsm8k_docs(1600)[1500:]]  # rows the tokenizer never saw
    samples = held_out + [
        "def f(x):\n\treturn x ** 2  # trailing spaces   \n\n",
        "Café, naïve, Größe, 東京, emoji 🚀 and a zero-width\u200bjoiner",
        "  leading and trailing whitespace  ",
        "",
    ]
    for text in samples:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # No bos is prepended (GPT-2 style): documents are separated by eos in the token stream.
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello", add_special_tokens=False)
    # Learned merges compress: common words are single tokens, not bytes.
    assert len(tok.encode(" the")) == 1


def test_chat_template(hf_tokenizer):
    tok = hf_tokenizer
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 6 times 7?"},
                {"role": "assistant", "content": "The answer is 42."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n"
                    "<|im_start|>assistant\nThe answer is 42.<|im_end|>\n")
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)

    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    start, end = tok.convert_tokens_to_ids([IM_START_TOKEN, IM_END_TOKEN])
    assert ids.count(start) == 3 and ids.count(end) == 3
    # The assistant mask covers exactly the answer and its closing <|im_end|>: what SFT trains on.
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "The answer is 42.<|im_end|>"
    assert ids[max(i for i, m in enumerate(mask) if m)] == end


def test_stats_measure_held_out_compression(trained, docs_path):
    _, stats = trained
    meta = stats.to_metadata()
    json.dumps(meta)
    # Every document is either trained on or held out, and a few are held out.
    assert stats.train_documents + stats.heldout_documents == count_rows(docs_path)
    assert 0 < stats.heldout_documents < 0.1 * count_rows(docs_path)
    # Byte-level BPE with 768 ids on English prose and code: well above 1 byte per token.
    assert 2.0 < stats.bytes_per_token < 6.0
    assert 1.0 < stats.tokens_per_word < 3.0
    assert stats.training_seconds > 0
    assert meta["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}


def test_heldout_split_is_deterministic(tmp_path, docs_path):
    a = heldout_ids(docs_path, 0.05, seed=0)
    assert a == heldout_ids(docs_path, 0.05, seed=0)
    assert a != heldout_ids(docs_path, 0.05, seed=1)
    assert 0.02 < len(a) / count_rows(docs_path) < 0.09
    # Two documents: one is held out, one is not, whatever their hashes.
    two = tmp_path / "two.parquet"
    write_parquet(two, [{"id": "a", "url": "", "text": "x"}, {"id": "b", "url": "", "text": "y"}])
    assert len(heldout_ids(two, 0.05)) == 1
    assert len(heldout_ids(two, 0.9)) == 1


def test_trains_on_a_bounded_sample_spread_over_the_days(tmp_path, gsm8k_docs):
    rows = gsm8k_docs(600)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, day in enumerate(["2026-01-01", "2026-01-02", "2026-01-03"]):
        write_parquet(corpus / f"{day}.parquet", rows[i * 200:(i + 1) * 200])
    budget = 30_000
    sample = [t for batch in bpe.sample_texts(corpus, budget, 0.05, 0) for t in batch]
    assert sample == [t for batch in bpe.sample_texts(corpus, budget, 0.05, 0) for t in batch]
    used = sum(len(t.encode()) for t in sample)
    assert budget <= used < budget + 3 * max(len(r["text"].encode()) for r in rows)
    by_text = {r["text"]: r["id"] for r in rows}
    ids = [by_text[t] for t in sample]
    # Every day contributes about a third, each from its first documents, none held out.
    for i, day in enumerate(["2026-01-01", "2026-01-02", "2026-01-03"]):
        day_ids = [x for x in ids if x in {r["id"] for r in rows[i * 200:(i + 1) * 200]}]
        day_bytes = sum(len(t.encode()) for t in sample if by_text[t] in day_ids)
        assert budget / 3 * 0.9 < day_bytes < budget / 3 + 2000
        held = heldout_ids(corpus / f"{day}.parquet", 0.05, 0)
        assert not held & set(day_ids)
        kept = [r["id"] for r in rows[i * 200:(i + 1) * 200] if r["id"] not in held]
        assert day_ids == kept[:len(day_ids)]
    a = train_tokenizer(corpus, tmp_path / "a", bpe.TokenizerConfig(vocab_size=400, sample_bytes=budget))
    train_tokenizer(corpus, tmp_path / "b", bpe.TokenizerConfig(vocab_size=400, sample_bytes=budget))
    assert a.train_chars == len("".join(sample)) and a.train_documents == len(sample)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a.heldout_documents > 0 and a.bytes_per_token > 1.5


def test_cli(tmp_path, gsm8k_docs, capsys):
    small = tmp_path / "small.parquet"
    write_parquet(small, gsm8k_docs(300))
    out = tmp_path / "tok"
    assert bpe.main([str(small), str(out), "--vocab-size", "400"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 400
    assert bpe.main([str(tmp_path / "missing.parquet"), str(tmp_path / "t2")]) == 2
    assert bpe.main([str(small), str(tmp_path / "t3"), "--vocab-size", "10"]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size" in err and "Traceback" not in err


def test_rejects_bad_input(tmp_path, tokenizer_cfg):
    empty = tmp_path / "empty.parquet"
    write_parquet(empty, [{"id": "a", "url": "", "text": ""}])
    with pytest.raises(ValueError, match="no non-empty training text"):
        train_tokenizer(empty, tmp_path / "tok", tokenizer_cfg)
    assert not (tmp_path / "tok").exists()


# --------------------------------------------------------------------------- bad inputs, via the CLI

@pytest.mark.parametrize("case", ["missing_docs", "empty_docs", "docs_is_dir_without_parquet",
                                  "no_text_column", "out_foreign_dir", "out_is_file",
                                  "read_only_destination"])
def test_cli_bad_inputs_are_one_line_errors(case, gsm8k_docs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    docs = src / "docs.parquet"
    write_parquet(docs, gsm8k_docs(20))
    out = tmp_path / "tokenizer"
    says = ""
    if case == "missing_docs":
        docs, says = src / "nope.parquet", "nope.parquet"
    elif case == "empty_docs":
        docs.write_bytes(b"")
        says = "empty"
    elif case == "docs_is_dir_without_parquet":
        docs, says = src / "d", "no Parquet files"
        docs.mkdir()
    elif case == "no_text_column":
        pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), docs)
        says = "missing column"
    elif case == "out_foreign_dir":  # train-tokenizer used to wipe unrelated files here
        foreign_dir(out)
        says = "did not make"
    elif case == "out_is_file":
        out.write_text("a file\n")
        says = "is a file"
    roots = [src, out]
    if case == "read_only_destination":
        with read_only_dir(tmp_path / "ro") as ro:
            before = snapshot(*roots, ro)
            proc = lmforge("train-tokenizer", docs, ro / "tok", "--vocab-size", "300")
            assert_refused(proc, parents=[ro], before=before, roots=[*roots, ro], says="read-only")
        return
    before = snapshot(*roots)
    proc = lmforge("train-tokenizer", docs, out, "--vocab-size", "300")
    assert_refused(proc, parents=[tmp_path], before=before, roots=roots, says=says)
