"""Sharded dedup gives what the one-document-at-a-time algorithm gives: datasketch's
``MinHashLSH`` over the kept documents, visited in (day, order) - computed here independently,
with datasketch's own ``MinHash`` objects - on a corpus with exact copies, near duplicates and
chains of them across shards and days; whatever the shards, hash ranges, workers or backend.
The index: one append-only segment per day, read in place; a day materialized again replaces
only its own segment; planted or garbled segments are one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH

from lmforge.curate.dedup import DedupConfig, dedup_documents
from lmforge.curate.dedup_lsh import banding
from lmforge.curate.parallel import ParallelConfig
from lmforge.curate.text import normalize, shingle_hashes
from lmforge.errors import LmforgeError
from tests.curate.test_dedup import edit
from lmforge.io import read_parquet_rows, write_parquet

REPO = Path(__file__).resolve().parents[2]


def corpus(texts: list[str]) -> list[list[str]]:
    """Three days: distinct documents; near and exact copies of earlier days and of the same day,
    chains (each link one or a few edits from the one before), copies of near duplicates, blank
    documents; spread so that duplicates land in other shards than their originals."""
    rng = random.Random(7)
    day1 = texts[:60] + [edit(texts[3], 1, 1), texts[7].upper(), "", "  ", edit(texts[10], 3, 2)]
    chain = [texts[20]]
    for i in range(5):
        chain.append(edit(chain[-1], rng.randint(2, 5), 100 + i))
    day2 = (texts[60:100] + [edit(texts[i], rng.randint(0, 6), i) for i in range(0, 60, 3)]
            + chain[1:] + [day1[60], day1[60]] + [texts[65], edit(texts[70], 2, 9)])
    rng.shuffle(day2)
    day3 = (texts[100:130] + [edit(texts[i], rng.randint(0, 8), 500 + i) for i in range(60, 100, 2)]
            + [edit(chain[-1], 2, 77), day2[5], day2[5].lower(), ""] + texts[100:103])
    return [day1, day2, day3]


def write_day(root: Path, name: str, texts: list[str], rows_per_group: int = 16) -> Path:
    path = root / f"{name}.parquet"
    write_parquet(path, [{"id": f"{name}-{i}", "url": f"http://x/{name}/{i}", "text": t}
                         for i, t in enumerate(texts)], batch_rows=rows_per_group)
    return path


def reference(days: list[list[str]], names: list[str], cfg: DedupConfig) -> list[dict]:
    """Each day's {removed id: (reason, duplicate_of)}: documents visited one at a time against a
    datasketch MinHashLSH of the kept ones, candidates verified as the config says."""
    bands, rows = banding(cfg)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(bands, rows))
    exact: dict[bytes, str] = {}
    kept: list[tuple[str, np.ndarray, set[int]]] = []  # LSH key -> (id, signature, shingles)
    out = []
    for name, texts in zip(names, days):
        removed = {}
        for i, raw in enumerate(texts):
            doc_id, text = f"{name}-{i}", normalize(raw)
            digest = hashlib.blake2b((text or raw.strip()).encode(), digest_size=16).digest()
            if cfg.exact and digest in exact:
                removed[doc_id] = ("exact_duplicate", exact[digest])
                continue
            m = None
            if text:
                h = shingle_hashes(text, cfg.shingle)
                m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=lambda x: x)
                m.update_batch(h.tolist())
                shingles = set(h.tolist())
                best, best_sim = None, -1.0
                for key in lsh.query(m):
                    other_id, sig, other = kept[key]
                    sim = (len(shingles & other) / len(shingles | other) if cfg.verify == "exact"
                           else float(np.mean(sig == m.hashvalues)))
                    if sim > best_sim or (sim == best_sim and key < best):
                        best, best_sim = key, sim
                if best is not None and (cfg.verify == "none" or best_sim >= cfg.threshold):
                    removed[doc_id] = ("near_duplicate", kept[best][0])
                    continue
                lsh.insert(len(kept), m)
                kept.append((doc_id, m.hashvalues, shingles))
            if cfg.exact:
                exact.setdefault(digest, doc_id)
        out.append(removed)
    return out


def removed_of(path) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["reason"], r["duplicate_of"]) for r in read_parquet_rows(path)}


@pytest.fixture(scope="module")
def days(real_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("days")
    texts = corpus(real_texts)
    names = ["2026-03-01", "2026-03-02", "2026-03-03"]
    return root, names, texts, [write_day(root, n, t) for n, t in zip(names, texts)]


def run_days(days, out: Path, cfg: DedupConfig, parallel: ParallelConfig | None = None):
    root, names, _, paths = days
    cfg = cfg.model_copy(update={"index_path": str(out / "index")})
    results = []
    for name, path in zip(names, paths):
        dedup_documents(path, out / f"{name}.parquet", out / f"{name}.removed.parquet", cfg,
                        parallel=parallel, segment=name)
        results.append(removed_of(out / f"{name}.removed.parquet"))
    return results


@pytest.mark.parametrize("settings", [
    {}, {"verify": "estimate"}, {"verify": "none", "threshold": 0.7}, {"exact": False},
    {"threshold": 0.6, "shard_rows": 1, "partitions": 7}])
def test_same_ids_as_one_at_a_time_datasketch(days, tmp_path, settings):
    cfg = DedupConfig(**{"shard_rows": 32, **settings})
    root, names, texts, paths = days
    expected = reference(texts, names, cfg)
    got = run_days(days, tmp_path, cfg)
    assert got == expected
    reasons = [r for day in expected for r, _ in day.values()]
    # The corpus exercises what it is meant to: both kinds, across days, and a chain whose
    # links are not all removed (keep-first is not transitive clustering).
    assert "near_duplicate" in reasons
    assert ("exact_duplicate" in reasons) == cfg.exact
    assert any(dup.startswith("2026-03-01") for _, dup in expected[1].values())
    kept = [pq.read_table(tmp_path / f"{n}.parquet").column("id").to_pylist() for n in names]
    for name, ids, removed in zip(names, kept, got):
        n = len(texts[names.index(name)])
        assert ids == [f"{name}-{i}" for i in range(n) if f"{name}-{i}" not in removed]


def test_chain_keeps_links_not_similar_to_a_kept_one(tmp_path, real_texts):
    """A ~ B ~ C with A !~ C: B goes (a copy of A), C stays (its only near one, B, is gone)."""
    a = real_texts[0] + " " + real_texts[1]
    for seed in range(200):
        b, c = edit(a, 4, seed), edit(edit(a, 4, seed), 4, seed + 1000)
        if jac(a, b) >= 0.8 and jac(b, c) >= 0.8 and jac(a, c) < 0.75:
            break
    else:
        pytest.skip("no such chain in 200 tries")
    src = write_day(tmp_path, "c", [a, b, c])
    dedup_documents(src, tmp_path / "o.parquet", tmp_path / "r.parquet", DedupConfig())
    assert removed_of(tmp_path / "r.parquet") == {"c-1": ("near_duplicate", "c-0")}


def jac(a: str, b: str) -> float:
    sa, sb = (set(shingle_hashes(normalize(x), 5).tolist()) for x in (a, b))
    return len(sa & sb) / len(sa | sb)


def outputs(out: Path, names: list[str]) -> dict[str, list[dict]]:
    return {f"{n}{s}": pq.read_table(out / f"{n}{s}.parquet").to_pylist()
            for n in names for s in ("", ".removed")}


def segment_bytes(index: Path) -> dict[str, bytes]:
    return {str(p.relative_to(index)): p.read_bytes() for p in sorted(index.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_workers_and_hash_ranges_do_not_change_the_result(days, tmp_path):
    _, names, _, _ = days
    cfg = DedupConfig(shard_rows=16)
    run_days(days, tmp_path / "one", cfg)
    run_days(days, tmp_path / "two", cfg.model_copy(update={"partitions": 5}),
             ParallelConfig(backend="local", workers=2))
    assert outputs(tmp_path / "one", names) == outputs(tmp_path / "two", names)
    one, two = segment_bytes(tmp_path / "one" / "index"), segment_bytes(tmp_path / "two" / "index")
    # The manifests name their outputs (different directories); everything else is the same.
    assert {k: v for k, v in one.items() if not k.endswith("manifest.json")} == {
        k: v for k, v in two.items() if not k.endswith("manifest.json")}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_worker_killed_mid_task_changes_nothing(days, tmp_path, backend):
    """A signature task's worker is killed (SIGKILL, half-way through its files); the pool or
    Ray runs the task again, and the days come out as they do with one worker and no kill. (The
    CLI in its own process: pool workers fork from a server that keeps the environment it
    started with.)"""
    if backend == "ray":
        pytest.importorskip("ray")
    _, names, _, paths = days
    cfg = DedupConfig(shard_rows=16)
    run_days(days, tmp_path / "one", cfg)
    once = tmp_path / "killed-once"
    out = tmp_path / backend
    env = {**os.environ, "PYTHONPATH": str(REPO), "LMFORGE_DEDUP_SIGNAL_AT": "sign_shard",
           "LMFORGE_DEDUP_SIGNAL_ONCE": str(once)}
    for name, path in zip(names, paths):
        proc = subprocess.run(
            [sys.executable, "-m", "lmforge.curate.dedup", str(path), str(out / f"{name}.parquet"),
             "--index", str(out / "index"), "--segment", name, "--shard-rows", "16",
             "--backend", backend, "--workers", "2"],
            capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert once.exists()  # a worker did die
    assert outputs(tmp_path / "one", names) == outputs(out, names)


@pytest.mark.slow
def test_ray_gives_the_same_ids_as_local(days, tmp_path):
    pytest.importorskip("ray")
    _, names, _, _ = days
    cfg = DedupConfig(shard_rows=16)
    run_days(days, tmp_path / "local", cfg)
    run_days(days, tmp_path / "ray", cfg, ParallelConfig(backend="ray", workers=2))
    assert outputs(tmp_path / "local", names) == outputs(tmp_path / "ray", names)


def test_segments_are_append_only_and_a_day_is_redone_alone(days, tmp_path):
    _, names, texts, paths = days
    index = tmp_path / "index"
    cfg = DedupConfig(shard_rows=16, index_path=str(index))
    sizes, seen = [], {}
    for name, path in zip(names, paths):
        dedup_documents(path, tmp_path / f"{name}.parquet", tmp_path / f"{name}.removed.parquet",
                        cfg, segment=name)
        now = segment_bytes(index)
        # Earlier days' segments are untouched: same files, same bytes.
        assert {k: now[k] for k in seen} == seen
        seen = now
        sizes.append(sum(len(v) for k, v in now.items() if k.startswith(name)))
    assert sorted(p.name for p in index.iterdir() if not p.name.startswith(".")) == names
    # Bytes grow with the documents kept, not with days x index: per kept document, each day's
    # segment costs about the same.
    kept = [pq.read_metadata(tmp_path / f"{n}.parquet").num_rows for n in names]
    per_doc = [s / k for s, k in zip(sizes, kept)]
    assert max(per_doc) < 1.5 * min(per_doc), per_doc
    total = sum(len(v) for v in segment_bytes(index).values())
    assert total == sum(sizes) + len((index / ".lmforge-output").read_bytes())

    # Day 2 again, after day 3: the same output, its own segment rewritten the same, day 3's
    # untouched (it was deduplicated against day 2 as it was).
    before, out_before = segment_bytes(index), outputs(tmp_path, names)
    s = dedup_documents(paths[1], tmp_path / f"{names[1]}.parquet",
                        tmp_path / f"{names[1]}.removed.parquet", cfg, segment=names[1])
    assert s.replayed and s.index_documents_before == kept[0]
    assert segment_bytes(index) == before and outputs(tmp_path, names) == out_before
    # Day 2 with other documents replaces day 2's segment only.
    other = write_day(tmp_path, "other", texts[1][:10])
    dedup_documents(other, tmp_path / "o2.parquet", tmp_path / "o2.removed.parquet", cfg,
                    segment=names[1])
    after = segment_bytes(index)
    assert {k: v for k, v in after.items() if not k.startswith(names[1])} == {
        k: v for k, v in before.items() if not k.startswith(names[1])}
    assert after[f"{names[1]}/ids.parquet"] != before[f"{names[1]}/ids.parquet"]


def _plant(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    path.write_bytes(pickle.dumps(Payload()))


@pytest.mark.parametrize("damage", ["pickle_npy", "truncated", "manifest", "shape", "row",
                                    "old_format", "stray_file"])
def test_planted_or_garbled_segment_is_one_line(days, tmp_path, damage):
    _, names, _, paths = days
    index = tmp_path / "index"
    cfg = DedupConfig(index_path=str(index))
    dedup_documents(paths[0], tmp_path / "a.parquet", tmp_path / "a.removed.parquet", cfg,
                    segment=names[0])
    seg = index / names[0]
    marker = tmp_path / "pwned"
    manifest = json.loads((seg / "manifest.json").read_text())
    if damage == "pickle_npy":
        with open(seg / "signatures.npy", "wb") as f:
            np.lib.format.write_array(f, np.array([Holder(marker)], dtype=object),
                                      allow_pickle=True)
    elif damage == "truncated":
        data = (seg / "bands.npy").read_bytes()
        (seg / "bands.npy").write_bytes(data[: len(data) // 2])
    elif damage == "manifest":
        (seg / "manifest.json").write_text(json.dumps(manifest)[:40])
    elif damage == "shape":
        manifest["documents"] += 1
        (seg / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "row":
        bands = np.load(seg / "bands.npy")
        bands[:, 1] = 10**9
        np.save(seg / "bands.npy", bands)
    elif damage == "old_format":
        (seg / "manifest.json").write_text(json.dumps({"format": "lmforge-dedup-index"}))
    else:
        _plant(index / "2026-02-28.pkl", marker)
    with pytest.raises(LmforgeError) as e:
        dedup_documents(paths[1], tmp_path / "b.parquet", tmp_path / "b.removed.parquet", cfg,
                        segment=names[1])
    msg = str(e.value)
    assert "\n" not in msg and str(index) in msg
    assert any(w in msg for w in ("damaged", "older lmforge", "pickle")), msg
    assert not marker.exists() and not (tmp_path / "b.parquet").exists()
    assert not (index / names[1]).exists()


class Holder:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_day_directory_in_and_out(days, tmp_path):
    """Parts with a manifest in (the other stages' day directories), parts with a manifest out."""
    from lmforge.io import read_manifest

    _, names, texts, paths = days
    day = tmp_path / "in"
    dedup_documents(paths[1], day, None, DedupConfig(shard_rows=16))  # writes a day directory
    assert read_manifest(day)["rows"] == pq.read_metadata(paths[1]).num_rows - len(
        removed_of_dir(day))
    out = tmp_path / "out"
    dedup_documents(day, out, None, DedupConfig(shard_rows=8))
    assert read_manifest(out) is not None
    assert removed_of_dir(out) == {}  # already deduplicated


def removed_of_dir(day: Path) -> dict:
    from lmforge.io import removed_files

    return {k: v for f in removed_files(day) for k, v in removed_of(f).items()}
