"""Shard-parallel curation: the same kept and removed ids in this process, on a process pool and
on a real Ray cluster (a head and two worker nodes, started here); a killed worker's shard is
redone; a run again after a kill keeps the finished parts; a day without its manifest is never
read."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli_checks import lmforge
from lmforge.curate.filter import filter_documents
from lmforge.curate.filter_config import FilterConfig
from lmforge.curate.parallel import ParallelConfig, run_tasks
from lmforge.curate.stages import run_sharded
from lmforge.errors import InputError, LmforgeError, MissingInputError
from lmforge.io import (MANIFEST_FILE, count_rows, parquet_files, read_manifest,
                        read_parquet_rows, removed_files, write_parquet)

LOCAL1, LOCAL2 = ParallelConfig(), ParallelConfig(workers=2)


# ------------------------------------------------------------------------------------------------
# Helpers: top-level, so that pool workers can import them.


def negate(x: int) -> int:
    return -x


def worker_pid(_: int) -> int:
    time.sleep(0.05)  # long enough that both workers take tasks
    return os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise InputError("three is not allowed")
    return x


def die_once(task: tuple[str, int]) -> int:
    """Kill the worker running it the first time (a marker file remembers), like the OOM killer."""
    marker, x = task
    if x == 2 and not os.path.exists(marker):
        Path(marker).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def ids(path) -> tuple[list[str], list[tuple[str, str]]]:
    """(kept ids, (removed id, reason)) of a stage's output, in order."""
    kept = [r["id"] for r in read_parquet_rows(path, columns=["id"])]
    removed = [(r["id"], r["reason"]) for f in removed_files(path)
               for r in read_parquet_rows(f, columns=["id", "reason"])]
    return kept, removed


@pytest.fixture
def day_input(tmp_path, real_texts):
    """A day of four parts (a stage's day directory), with documents every filter rule sees:
    English prose, other languages, empty and symbol soup."""
    def make(copies: int = 1, name: str = "in") -> Path:
        other = ["Der schnelle braune Fuchs springt über den faulen Hund, und alle Leute lachen "
                 "darüber, weil es so lustig ist, wenn Tiere spielen.",
                 "Le renard brun rapide saute par-dessus le chien paresseux et tout le monde rit.",
                 "", "}{ ][ ;; ## @@ !! $$ %% ^^ && ** (( )) __ ++ == ~~ `` || \\\\ // ??"]
        texts = (real_texts + other) * copies
        day = tmp_path / name
        rows = [{"id": f"d{i:06d}", "url": f"http://x/{i}", "text": t} for i, t in enumerate(texts)]
        quarter = -(-len(rows) // 4)
        parts = [rows[i:i + quarter] for i in range(0, len(rows), quarter)]
        src = tmp_path / f"{name}.src"
        for i, part in enumerate(parts):
            write_parquet(src / f"part-{i:05d}.parquet", part)
        # Committed the way a stage commits a day: parts, then the manifest, through run_sharded.
        run_sharded("lmforge.curate.stages", "copy_part", src, day, None, "input", LOCAL1,
                    name="copy")
        assert len(parquet_files(day)) == 4
        return day
    return make


# ------------------------------------------------------------------------------------------------
# run_tasks


def test_run_tasks_inline_and_pool_agree_and_skip_what_is_done(capsys):
    tasks = [1, 2, 3, 4, 5]
    assert run_tasks(negate, tasks, LOCAL1, desc="neg") == [-1, -2, -3, -4, -5]
    assert run_tasks(negate, tasks, LOCAL2, desc="neg") == [-1, -2, -3, -4, -5]
    done = {2: "earlier", 4: "earlier"}
    assert run_tasks(negate, tasks, LOCAL2, done=done.get, desc="neg") == \
        [-1, "earlier", -3, "earlier", -5]
    err = capsys.readouterr().err
    assert "[neg] 5/5 shards" in err and "(2 already done)" in err


def test_a_session_starts_the_pool_once_and_replaces_it_when_a_worker_dies(tmp_path):
    from lmforge.curate.parallel import parallel_session

    with parallel_session(LOCAL2):
        first = set(run_tasks(worker_pid, range(6), LOCAL2))
        second = set(run_tasks(worker_pid, range(6), LOCAL2))
        assert first == second and os.getpid() not in first  # the same worker processes
        marker = str(tmp_path / "killed-once")
        assert run_tasks(die_once, [(marker, x) for x in range(4)], LOCAL2) == [0, 10, 20, 30]
        assert set(run_tasks(worker_pid, range(6), LOCAL2)).isdisjoint(first)  # a new pool


@pytest.mark.parametrize("parallel", [LOCAL1, LOCAL2], ids=["inline", "pool"])
def test_a_failing_shard_is_one_line_naming_it(parallel):
    with pytest.raises(InputError, match=r"^neg: shard 3: three is not allowed$"):
        run_tasks(fail_on_three, [1, 2, 3, 4], parallel, desc="neg")


def test_a_killed_pool_worker_has_its_shard_redone(tmp_path, capsys):
    marker = str(tmp_path / "killed-once")
    got = run_tasks(die_once, [(marker, x) for x in range(5)], LOCAL2, desc="die",
                    label=lambda t: str(t[1]))
    assert got == [0, 10, 20, 30, 40]
    assert Path(marker).exists()  # the worker really was killed
    assert "a worker died" in capsys.readouterr().err


def test_bad_parallel_settings_are_refused_in_one_line(day_input, tmp_path):
    day = day_input()
    bad = lmforge("filter", day, tmp_path / "out", "--workers", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--workers" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = lmforge("filter", day, tmp_path / "out", "--backend", "spark")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    before = sorted(p.name for p in day.iterdir())
    bad = lmforge("filter", day, day, "--workers", "2")
    assert bad.returncode == 2 and "holds the input" in bad.stderr
    assert sorted(p.name for p in day.iterdir()) == before


# ------------------------------------------------------------------------------------------------
# Stages: identical ids, whatever runs the shards


def test_filter_in_one_process_and_on_a_pool_gives_the_same_ids(day_input, tmp_path):
    day = day_input()
    cfg = FilterConfig()
    single = tmp_path / "single.parquet"  # today's path: one process, one file
    filter_documents(day, single, tmp_path / "single.removed.parquet", cfg)
    expected = ids(single)
    assert expected[0] and {r for _, r in expected[1]} >= {"language", "empty"}

    outs = {}
    for name, parallel in (("w1", LOCAL1), ("w2", LOCAL2)):
        out = tmp_path / name
        stats = run_sharded("lmforge.curate.filter", "filter_documents", day, out, None, cfg,
                            parallel, name="filter", merge="merge_part_stats")
        outs[name] = out
        kept, removed = ids(out)
        assert sorted(kept) == sorted(expected[0]) and sorted(removed) == sorted(expected[1])
        meta = stats.to_metadata()
        assert meta["kept_documents"] == len(kept) and meta["input_documents"] == count_rows(day)
        manifest = read_manifest(out)
        assert [p["file"][:10] for p in manifest["parts"]] == [f"part-{i:05d}" for i in range(4)]
        assert manifest["rows"] == len(kept) and manifest["removed_rows"] == len(removed)
    # Part i comes from input part i, whichever process wrote it: the same bytes' rows in order.
    assert ids(outs["w1"]) == ids(outs["w2"])


def test_decontaminate_parts_match_one_file(tmp_path, real_texts):
    from lmforge.curate.decontaminate import DecontamConfig, decontaminate, decontaminate_sharded

    bench = tmp_path / "bench"
    (bench / "gsm8k").mkdir(parents=True)
    question = ("Natalia sold clips to forty eight of her friends in April and then she sold half "
                "as many clips in May how many clips did Natalia sell altogether")
    (bench / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": question,
                                                            "answer": "72\n#### 72"}) + "\n")
    cfg = DecontamConfig(benchmarks=["gsm8k"], benchmarks_dir=str(bench))
    docs = [{"id": f"c{i}", "url": "u", "text": t} for i, t in enumerate(real_texts[:60])]
    docs[7]["text"] += " As the web page said: " + question + "."
    docs[45]["text"] = question.upper() + "!"
    src = tmp_path / "src"
    for i in range(3):
        write_parquet(src / f"p{i}.parquet", docs[20 * i:20 * (i + 1)])
    decontaminate(src, tmp_path / "one.parquet", tmp_path / "one.removed.parquet", cfg)
    stats = decontaminate_sharded(src, tmp_path / "parts", None, cfg, LOCAL1)
    assert ids(tmp_path / "parts") == ids(tmp_path / "one.parquet")
    assert ids(tmp_path / "parts")[1] == [("c7", "contaminated"), ("c45", "contaminated")]
    assert stats.to_metadata()["benchmarks"]["gsm8k"]["documents_removed"] == 2


def test_extract_one_part_per_warc_matches_one_file(tmp_path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from lmforge.curate.extract import ExtractConfig, extract, extract_sharded

    def page(i: int) -> bytes:
        return (f"<html><head><title>Page {i}</title></head><body><p>Page number {i} says "
                f"something about topic {i * 7}.</p></body></html>").encode()

    warcs = tmp_path / "warcs"
    warcs.mkdir()
    # Page 3 is in both files: one pass over both keeps its first copy; so must the parts.
    for n, pages in enumerate([[1, 2, 3], [3, 4, 5], [6]]):
        with open(warcs / f"c-{n}.warc.gz", "wb") as fh:
            w = WARCWriter(fh, gzip=True)
            for i in pages:
                body = page(i) if i != 5 else b""
                w.write_record(w.create_warc_record(
                    f"http://site/{i}", "response", payload=io.BytesIO(body),
                    http_headers=StatusAndHeaders("200 OK", [("Content-Type", "text/html")],
                                                  protocol="HTTP/1.1"),
                    warc_headers_dict={"WARC-Date": "2026-01-02T03:04:05Z"}))
    extract(warcs, tmp_path / "one.parquet", ExtractConfig())
    expected = ids(tmp_path / "one.parquet")
    for name, parallel in (("w1", LOCAL1), ("w2", LOCAL2)):
        stats = extract_sharded(warcs, tmp_path / name, ExtractConfig(), parallel)
        assert sorted(ids(tmp_path / name)[0]) == sorted(expected[0])
        assert sorted(ids(tmp_path / name)[1]) == sorted(expected[1])
        assert stats.documents == len(expected[0]) == 5
        assert stats.removed_by_reason == {"duplicate_url": 1, "empty": 1}
        assert len(read_manifest(tmp_path / name)["parts"]) == 3
    # A run again finds the parts done (duplicates already moved) and changes nothing.
    before = ids(tmp_path / "w1")
    extract_sharded(warcs, tmp_path / "w1", ExtractConfig(), LOCAL1)
    assert ids(tmp_path / "w1") == before


# ------------------------------------------------------------------------------------------------
# Killed runs, runs again, half-finished days


def part(day: Path, i: int) -> Path:
    return next(p for p in day.glob(f"part-{i:05d}*.parquet") if ".removed." not in p.name)


def _filter_parts(day, out, parallel=LOCAL1, cfg=None):
    return run_sharded("lmforge.curate.filter", "filter_documents", day, out, None,
                       cfg or FilterConfig(), parallel, name="filter", merge="merge_part_stats")


def test_a_run_again_keeps_finished_parts_and_redoes_the_rest(day_input, tmp_path, capsys):
    day = day_input()
    out = tmp_path / "out"
    _filter_parts(day, out)
    expected = ids(out)
    # As a kill leaves it: no manifest, part 2 never written, part 1 cut short (its record says
    # what a whole one holds), a temporary of a dead process.
    (out / MANIFEST_FILE).unlink()
    for p in out.glob("part-00002*"):
        p.unlink()
    p1 = part(out, 1)
    p1.write_bytes(p1.read_bytes()[:100])
    stamp = {p: p.stat().st_mtime_ns for p in (part(out, 0), part(out, 3))}
    with pytest.raises(MissingInputError, match="unfinished stage output"):
        parquet_files(out)
    capsys.readouterr()

    stats = _filter_parts(day, out)
    assert "(2 already done)" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # not rewritten
    assert ids(out) == expected
    assert stats.to_metadata()["input_documents"] == count_rows(day)


def test_another_config_redoes_every_part(day_input, tmp_path):
    day = day_input()
    out = tmp_path / "out"
    _filter_parts(day, out)
    fingerprint = read_manifest(out)["fingerprint"]
    before = ids(out)
    other = FilterConfig(languages=["de"], min_words=5)
    _filter_parts(day, out, cfg=other)
    assert read_manifest(out)["fingerprint"] != fingerprint
    _filter_parts(day, tmp_path / "fresh", cfg=other)
    assert ids(out) == ids(tmp_path / "fresh") != before
    assert [r["id"] for r in read_parquet_rows(out)] == ["d000200"]  # the German one
    # Only the committed version's parts stay.
    assert len(list(out.glob("part-*"))) == 4 * 3


def test_a_run_that_fails_keeps_the_last_committed_day_readable(day_input, tmp_path):
    day = day_input()
    out = tmp_path / "out"
    _filter_parts(day, out)
    good = ids(out)
    # The input changes and its third part is damaged: the new run fails on that shard, after
    # writing others; the day still reads as it was committed.
    p2 = part(day, 2)
    p2.write_bytes(b"PAR1 not parquet any more")
    with pytest.raises(LmforgeError, match=rf"filter: shard {p2.name}: .*not a readable Parquet"):
        _filter_parts(day, out, cfg=FilterConfig(min_words=5))
    assert ids(out) == good


def test_a_day_without_manifest_is_not_read_and_old_days_still_are(tmp_path):
    docs = tmp_path / "documents"
    write_parquet(docs / "2026-01-01.parquet", [{"id": "old", "url": "u", "text": "a"}])
    write_parquet(docs / "2026-01-01.removed.parquet", [{"id": "gone", "url": "u", "text": "b"}])
    src = tmp_path / "src.parquet"
    write_parquet(src, [{"id": "new", "url": "u", "text": "c"}])
    run_sharded("lmforge.curate.stages", "copy_part", src, docs / "2026-01-02", None, "x", LOCAL1)
    run_sharded("lmforge.curate.stages", "copy_part", src, docs / "2026-01-03", None, "x", LOCAL1)
    (docs / "2026-01-03" / MANIFEST_FILE).unlink()  # killed before its manifest
    assert [r["id"] for r in read_parquet_rows(docs)] == ["old", "new"]
    assert count_rows(docs) == 2
    with pytest.raises(MissingInputError, match="unfinished"):
        count_rows(docs / "2026-01-03")
    # A day rewritten as a directory hides the old single file of that day.
    run_sharded("lmforge.curate.stages", "copy_part", src, docs / "2026-01-01", None, "x", LOCAL1)
    assert [r["id"] for r in read_parquet_rows(docs)] == ["new", "new"]


def test_a_planted_manifest_cannot_point_outside_its_directory(tmp_path):
    day = tmp_path / "day"
    day.mkdir()
    (day / MANIFEST_FILE).write_text(json.dumps({
        "format": "lmforge-parts/1", "parts": [{"file": "../../etc/passwd",
                                                 "removed": "x.removed.parquet"}]}))
    with pytest.raises(LmforgeError, match="not named part-NNNNN"):
        parquet_files(day)


# ------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.slow
def test_filter_on_a_local_ray_started_for_the_stage_gives_the_same_ids(day_input, tmp_path):
    pytest.importorskip("ray")
    day = day_input()
    _filter_parts(day, tmp_path / "local")
    _filter_parts(day, tmp_path / "ray", ParallelConfig(backend="ray", workers=2))
    assert ids(tmp_path / "ray") == ids(tmp_path / "local")


def _ray_env() -> dict[str, str]:
    """Every node and the driver with Ray's token authentication (its token in ~/.ray, made by
    the first local cluster): a head enables it by default, a joining node only when told."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def _start_ray(args: list[str], log: Path) -> subprocess.Popen:
    ray = Path(sys.executable).with_name("ray")
    with open(log, "wb") as fh:
        return subprocess.Popen([str(ray), "start", "--block", "--disable-usage-stats", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env=_ray_env(),
                                start_new_session=True)


def _wait_for(log: Path, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Ray runtime started" in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"ray start exited {proc.returncode}: {text[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"ray start did not finish in {timeout} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine: a head with no CPU for tasks and two worker nodes of
    one CPU each, each a `ray start --block` process group of its own, ended at the end."""
    pytest.importorskip("ray")
    if not Path(sys.executable).with_name("ray").exists():
        pytest.skip("no `ray` command beside this Python")
    tmp = Path(tempfile.mkdtemp(prefix="lmray", dir="/tmp"))  # short: Ray's socket paths
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_ray(["--head", "--port=0", "--num-cpus=0", "--include-dashboard=false",
                                 f"--temp-dir={tmp}"], tmp / "head.log"))
        text = _wait_for(tmp / "head.log", procs[0])
        address = re.search(r"--address='([^']+)'", text).group(1)
        for i in range(2):  # one after the other: two nodes joining at once time out here
            procs.append(_start_ray([f"--address={address}", "--num-cpus=1"], tmp / f"w{i}.log"))
            _wait_for(tmp / f"w{i}.log", procs[-1])
        yield address
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for p in procs:
            try:
                p.wait(timeout=10)  # a node that has not stopped by then is killed
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _lmforge_filter(day: Path, out: Path, *flags: str) -> subprocess.Popen:
    env = {**_ray_env(), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmforge.cli", "filter", str(day), str(out),
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _task_workers() -> list[int]:
    """Pids of Ray workers running one of our shards (Ray titles them after the task)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::_call"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_filter_on_a_ray_cluster_matches_local_even_with_a_worker_killed(
        ray_cluster, day_input, tmp_path):
    day = day_input(copies=12)
    local = lmforge("filter", day, tmp_path / "local", "--workers", "2")
    assert local.returncode == 0, local.stderr
    expected = ids(tmp_path / "local")

    proc = _lmforge_filter(day, tmp_path / "ray", "--backend", "ray", "--workers", "2",
                           "--ray-address", ray_cluster)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert ids(tmp_path / "ray") == expected
    assert "[filter] 4/4 shards" in err

    # Again, killing the worker process of a shard while it runs: Ray redoes the shard.
    proc = _lmforge_filter(day, tmp_path / "killed", "--backend", "ray", "--workers", "2",
                           "--ray-address", ray_cluster)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        pids = _task_workers()
        if pids:
            time.sleep(0.3)  # into the shard's work
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed is not None, "no shard's worker was seen running"
    assert proc.returncode == 0, err[-3000:]
    assert ids(tmp_path / "killed") == expected
