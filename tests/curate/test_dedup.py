"""Dedup stage: exact and near duplicates made by editing real text, keep-first, duplicate_of,
bit-exact agreement with datasketch, an index that persists across calls, CLI."""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash

from lmforge.curate import dedup as dd
from lmforge.curate.dedup import DedupConfig, dedup_documents
from lmforge.curate.text import normalize, shingle_hashes


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def edit(text: str, n_edits: int, seed: int) -> str:
    """Substitute, delete or insert n words of a text."""
    rng = random.Random(seed)
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        op = rng.choice(("sub", "del", "ins"))
        if op == "sub":
            words[i] = rng.choice(("apple", "river", "seven", "quickly", "blue"))
        elif op == "del":
            del words[i]
        else:
            words.insert(i, rng.choice(("indeed", "also", "then")))
    return " ".join(words)


def jaccard(a: str, b: str, k: int = 5) -> float:
    sa = set(shingle_hashes(normalize(a), k).tolist())
    sb = set(shingle_hashes(normalize(b), k).tolist())
    return len(sa & sb) / len(sa | sb)


def test_shingles_and_signatures_match_datasketch(real_texts):
    texts = [normalize(t) for t in real_texts[:20]] + ["", "two words", "word " * 70_000]
    hashes = [shingle_hashes(t, 5) for t in texts]
    # One hash per distinct 5-word shingle (no collisions on real text).
    words = texts[0].split()
    assert len(set(hashes[0].tolist())) == len({tuple(words[i:i + 5]) for i in range(len(words) - 4)})
    assert len(hashes[-3]) == 0 and len(hashes[-2]) == 1
    sigs = dd.signatures(hashes, dd.permutations(128, seed=3))
    for h, sig in zip(hashes, sigs):
        m = MinHash(num_perm=128, seed=3, hashfunc=lambda x: x)
        m.update_batch(h.tolist())
        np.testing.assert_array_equal(m.hashvalues, sig)


def test_exact_and_near_duplicates_keep_first(real_texts, write_docs, tmp_path):
    base = [real_texts[i] + "\n" + real_texts[i + 1] for i in range(0, 40, 2)]  # 20 documents
    near = edit(base[3], 2, seed=1)
    assert 0.8 < jaccard(base[3], near) < 1.0
    far = edit(base[5], 40, seed=2)  # heavily edited: no longer a duplicate
    assert jaccard(base[5], far) < 0.5
    docs = base + [
        base[0].upper().replace(".", " . "),  # same normalized text
        near,
        base[7],                              # verbatim copy
        far,
        edit(base[9], 1, seed=3),
    ]
    src = write_docs("d", docs)
    out, removed = tmp_path / "o.parquet", tmp_path / "r.parquet"
    stats = dedup_documents(src, out, removed, DedupConfig())

    kept_ids = [r["id"] for r in rows(out)]
    assert kept_ids == [f"d-{i}" for i in range(20)] + ["d-23"]  # input order, `far` kept
    gone = {r["id"]: (r["reason"], r["duplicate_of"]) for r in rows(removed)}
    assert gone == {"d-20": ("exact_duplicate", "d-0"), "d-21": ("near_duplicate", "d-3"),
                    "d-22": ("exact_duplicate", "d-7"), "d-24": ("near_duplicate", "d-9")}
    assert all(r["text"] for r in rows(removed)) and "url" in rows(removed)[0]

    m = stats.to_metadata()
    assert (m["input_documents"], m["kept_documents"]) == (25, 21)
    assert (m["exact_duplicates_removed"], m["near_duplicates_removed"]) == (2, 2)
    first = m["sample_clusters"][0]
    assert first["reason"] == "near_duplicate" and first["kept_id"] == "d-3"
    assert 0.7 < first["similarity"] < 1.0 and first["removed_text"]


def test_distinct_documents_are_all_kept(real_texts, write_docs, tmp_path):
    src = write_docs("distinct", real_texts[:150] + ["", "   "])
    stats = dedup_documents(src, tmp_path / "o.parquet", tmp_path / "r.parquet", DedupConfig())
    # The two blank documents are exact duplicates of each other; nothing else is removed.
    assert stats.kept_documents == 151
    assert [(r["id"], r["duplicate_of"]) for r in rows(tmp_path / "r.parquet")] == [
        ("distinct-151", "distinct-150")]


def test_persistent_index_across_calls(real_texts, write_docs, tmp_path):
    index = tmp_path / "idx" / "minhash.index"
    cfg = DedupConfig(index_path=str(index))
    first = write_docs("day1", real_texts[:30])
    s1 = dedup_documents(first, tmp_path / "o1.parquet", tmp_path / "r1.parquet", cfg)
    assert s1.kept_documents == 30 and index.exists()

    second = write_docs("day2", [edit(real_texts[4], 1, seed=5), real_texts[10]] + real_texts[30:40])
    s2 = dedup_documents(second, tmp_path / "o2.parquet", tmp_path / "r2.parquet", cfg)
    gone = {r["id"]: (r["reason"], r["duplicate_of"]) for r in rows(tmp_path / "r2.parquet")}
    assert gone == {"day2-0": ("near_duplicate", "day1-4"), "day2-1": ("exact_duplicate", "day1-10")}
    m = s2.to_metadata()
    assert (m["index_documents_before"], m["index_documents_after"]) == (30, 40)
    assert m["sample_clusters"][0]["kept_text"] == "(kept in an earlier batch)"

    # Without the index the same batch has nothing to match against.
    s3 = dedup_documents(second, tmp_path / "o3.parquet", tmp_path / "r3.parquet", DedupConfig())
    assert s3.kept_documents == 12
    # An index is only valid for the settings that built it.
    with pytest.raises(ValueError, match="built with"):
        dedup_documents(second, tmp_path / "o4.parquet", tmp_path / "r4.parquet",
                        DedupConfig(index_path=str(index), shingle=3))


def test_cli(real_texts, write_docs, tmp_path, capsys):
    src = write_docs("cli", [real_texts[0], real_texts[0], real_texts[1]])
    out = tmp_path / "out" / "deduped.parquet"
    assert dd.main([src, str(out), "--threshold", "0.7", "--num-perm", "64", "--shingle", "3"]) == 0
    assert len(rows(out)) == 2
    assert rows(tmp_path / "out" / "deduped.removed.parquet")[0]["duplicate_of"] == "cli-0"
    assert dd.main([src, str(out), "--threshold", "1.5"]) == 2
    assert "threshold" in capsys.readouterr().err
