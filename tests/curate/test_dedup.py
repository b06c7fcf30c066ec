"""Dedup stage: exact and near duplicates made by editing real text, keep-first, duplicate_of,
bit-exact agreement with datasketch (signatures and LSH buckets), an index that persists across
calls, CLI; the index in data formats only (planted pickles never run), kill -9 at every step of
a commit then retry, two writers on one index, garbled indexes, a full disk and a read-only one,
the graph's per-day segments. The sharded engine against one-at-a-time datasketch, workers, Ray
and the segments' layout: test_dedup_sharded.py."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from lmforge import cli as lmforge_cli
from lmforge.config import flag_name
from lmforge.curate import dedup as dd
from lmforge.curate import dedup_index, minhash
from lmforge.curate.dedup import DedupConfig, dedup_documents
from lmforge.curate.dedup_lsh import banding
from lmforge.curate.text import normalize, shingle_hashes
from lmforge.errors import LmforgeError
from lmforge.io import write_parquet


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
    sigs = minhash.signatures(hashes, minhash.permutations(128, seed=3))
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
    with pytest.raises(LmforgeError, match="built with"):
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


def test_cli_flags_are_the_config_fields(real_texts, write_docs, tmp_path, capsys):
    """`lmforge dedup --help` names every DedupConfig field; the generated flags, --config and the
    earlier flag name --index all reach the run; a bad value is one line and exit status 2."""
    with pytest.raises(SystemExit) as e:
        lmforge_cli.main(["dedup", "--help"])
    assert e.value.code == 0
    words = set(capsys.readouterr().out.replace(",", " ").replace("[", " ").replace("]", " ")
                .split())
    missing = {flag_name(f) for f in DedupConfig.model_fields} - words
    assert not missing, missing
    assert {"--index", "--removed", "--config", "--segment", "--backend", "--workers",
            "--ray-address"} <= words

    src = write_docs("flags", [real_texts[0], real_texts[0], real_texts[1]])

    def reasons(name: str) -> list[str]:
        return [r["reason"] for r in rows(tmp_path / f"{name}.removed.parquet")]

    assert dd.main([src, str(tmp_path / "a.parquet")]) == 0
    assert reasons("a") == ["exact_duplicate"]
    # Without the exact pass, the verbatim copy is found by MinHash instead.
    assert dd.main([src, str(tmp_path / "b.parquet"), "--no-exact"]) == 0
    assert reasons("b") == ["near_duplicate"]
    # A file of fields; a flag given on the command line wins over it.
    conf = tmp_path / "dedup.yaml"
    conf.write_text("exact: false\nshingle: 3\n")
    assert dd.main([src, str(tmp_path / "c.parquet"), "--config", str(conf)]) == 0
    assert reasons("c") == ["near_duplicate"]
    assert dd.main([src, str(tmp_path / "d.parquet"), "--config", str(conf), "--exact"]) == 0
    assert reasons("d") == ["exact_duplicate"]
    # --index (the README's name) and --index-path are one field; --lsh-params reaches the LSH.
    for flag in ("--index", "--index-path"):
        index = tmp_path / flag.strip("-")
        assert dd.main([src, str(tmp_path / f"{index.name}.parquet"), flag, str(index),
                        "--lsh-params", "16,8"]) == 0
        params = json.loads((index / "000000" / "manifest.json").read_text())["params"]
        assert params["lsh_bands_rows"] == [16, 8] and params["shingle"] == 5
    capsys.readouterr()

    for bad, says in ((["--shard-rows", "0"], "shard_rows"),
                      (["--lsh-params", "1,2,3"], "--lsh-params"),
                      (["--workers", "0"], "workers"),
                      (["--segment", "2026-03-01"], "--segment"),
                      (["--num-perm", "many"], "--num-perm"),
                      (["--config", str(tmp_path / "nowhere.yaml")], "nowhere.yaml")):
        assert dd.main([src, str(tmp_path / "bad.parquet"), *bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lmforge dedup: error: ") and says in err[0]
        assert not (tmp_path / "bad.parquet").exists() and not leftovers(tmp_path)


def test_importing_the_config_loads_no_heavy_library():
    """The CLI's help and the graph's definitions import this module for DedupConfig: datasketch
    (which pulls in scipy), numpy and pyarrow load only when documents are deduplicated."""
    code = ("import sys, lmforge.curate.dedup; print(sorted(m for m in ('datasketch', 'scipy', "
            "'numpy', 'pyarrow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# The persistent index: data formats only, transactional, locked

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`lmforge dedup ARGS` in its own process, as a user (or a scheduler) runs it."""
    return subprocess.run([sys.executable, "-m", "lmforge.curate.dedup", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kw)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("dedup: ")]
    assert len(lines) == 1 and lines[0].startswith("lmforge dedup: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".lmforge-" in p.name and p.name.endswith(".tmp")]


def table(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def index_state(index: Path) -> dict:
    """What an index holds, independent of where it lives: each segment's manifest (output
    paths reduced to their names) and the bytes of every segment file."""
    state = {}
    for seg in sorted(p for p in index.iterdir() if p.is_dir()):
        manifest = json.loads((seg / "manifest.json").read_text())
        manifest["output"] = Path(manifest["output"]).name
        state[seg.name] = {"manifest": manifest, "files": {
            p.name: p.read_bytes() for p in sorted(seg.iterdir()) if p.name != "manifest.json"}}
    return state


def _days(texts: list[str]) -> tuple[list[str], list[str]]:
    """Day A (distinct documents) and day B (near and exact duplicates of A, duplicates within
    B, and new documents)."""
    a = texts[:40]
    b = ([edit(texts[i], 1, seed=i) for i in range(0, 10)] + [texts[12], texts[13]]
         + texts[40:70] + [edit(texts[41], 1, seed=99), texts[45]])
    return a, b


def test_index_is_data_only_and_lsh_matches_datasketch(real_texts, write_docs, tmp_path):
    index = tmp_path / "idx"
    cfg = DedupConfig(index_path=str(index))
    a, b = _days(real_texts)
    src_a, src_b = write_docs("a", a), write_docs("b", b)
    dedup_documents(src_a, tmp_path / "a.out.parquet", tmp_path / "a.r.parquet", cfg)
    dedup_documents(src_b, tmp_path / "b.out.parquet", tmp_path / "b.r.parquet", cfg)
    names = sorted(str(p.relative_to(index)) for p in index.rglob("*") if p.is_file())
    assert names == [".lmforge-output", ".lock"] + [
        f"{s}/{f}" for s in ("000000", "000001")
        for f in (".lmforge-output", "bands.npy", "exact.npy", "ids.parquet", "manifest.json",
                  "shingle_offsets.npy", "shingles.npy", "signatures.npy")]
    for p in index.rglob("*"):
        if p.is_file() and p.stat().st_size:
            assert p.read_bytes()[:1] != b"\x80", f"{p} looks like a pickle"
    manifests = [json.loads((index / s / "manifest.json").read_text())
                 for s in ("000000", "000001")]
    # Each committed run is named by its input's content hash and its output.
    assert [m["input"] for m in manifests] == [dedup_index.input_digest(src_a),
                                               dedup_index.input_digest(src_b)]
    assert manifests[1]["output"] == str((tmp_path / "b.out.parquet").resolve())
    assert manifests[1]["documents"] == len(table(tmp_path / "b.out.parquet"))

    # The segments' band buckets are datasketch's: the same documents share a bucket.
    bands, rows = banding(cfg)
    reference = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(bands, rows))
    ours: list[frozenset] = []
    base = 0
    for seg, m in zip(("000000", "000001"), manifests):
        sigs = np.load(index / seg / "signatures.npy", allow_pickle=False)
        for row, sig in enumerate(sigs):
            reference.insert(base + row, LeanMinHash(seed=cfg.seed, hashvalues=sig,
                                                     scheme="affine32"), check_duplication=False)
        table_ = np.load(index / seg / "bands.npy", allow_pickle=False)
        assert np.all(table_[1:, 0] >= table_[:-1, 0])  # sorted: a hash range is a slice
        for key in np.unique(table_[:, 0]):
            ours.append((int(key), frozenset(base + int(r) for r in table_[table_[:, 0] == key, 1])))
        base += m["documents"]
    merged: dict[int, set] = {}
    for key, members in ours:
        merged.setdefault(key, set()).update(members)
    theirs = sorted(sorted(t.get(h)) for t in reference.hashtables for h in t.keys())
    assert sorted(sorted(v) for v in merged.values()) == theirs


def test_retry_of_a_committed_run_gives_the_same_output(real_texts, write_docs, tmp_path):
    index = tmp_path / "idx"
    cfg = DedupConfig(index_path=str(index))
    a, b = _days(real_texts)
    src_a, src_b = write_docs("a", a), write_docs("b", b)
    dedup_documents(src_a, tmp_path / "a.out.parquet", tmp_path / "a.r.parquet", cfg)
    first = dedup_documents(src_b, tmp_path / "b.out.parquet", tmp_path / "b.r.parquet", cfg)
    kept, gone, state = table(tmp_path / "b.out.parquet"), table(tmp_path / "b.r.parquet"), \
        index_state(index)
    assert 0 < first.kept_documents < len(b) and not first.replayed
    # The same input to the same output again: a retry, not new data duplicating itself.
    again = dedup_documents(src_b, tmp_path / "b.out.parquet", tmp_path / "b.r.parquet", cfg)
    assert again.replayed and again.kept_documents == first.kept_documents
    assert (table(tmp_path / "b.out.parquet"), table(tmp_path / "b.r.parquet")) == (kept, gone)
    assert index_state(index) == state
    meta = {k: v for k, v in again.to_metadata().items() if k not in ("seconds",
                                                                     "documents_per_second")}
    assert meta == {**{k: v for k, v in first.to_metadata().items()
                       if k not in ("seconds", "documents_per_second")},
                    "index_replayed_run": True}
    # The first day re-run after the second: derived from the index as it was before it.
    dedup_documents(src_a, tmp_path / "a2.parquet", tmp_path / "a2.r.parquet", cfg)
    assert table(tmp_path / "a2.parquet") == []  # to another output: new data, all duplicates
    assert dedup_documents(src_a, tmp_path / "a.out.parquet", tmp_path / "a.r.parquet",
                           cfg).kept_documents == len(a)


def _plant(path: Path, marker: Path) -> None:
    class Payload:  # what an attacker plants: unpickling it creates `marker`
        def __reduce__(self):
            return (open, (str(marker), "w"))
    path.write_bytes(pickle.dumps(Payload()))


def test_pickle_index_is_refused_never_loaded(real_texts, write_docs, tmp_path):
    src = write_docs("a", real_texts[:5])
    marker = tmp_path / "pwned"
    _plant(tmp_path / "old.pkl", marker)
    msg = one_line_error(cli(src, tmp_path / "o.parquet", "--index", tmp_path / "old.pkl"))
    assert "old pickle format" in msg and "rebuild" in msg
    assert not marker.exists() and not (tmp_path / "o.parquet").exists()
    assert not leftovers(tmp_path)

    # Planted inside an index directory, as a segment's manifest or as a signature array.
    index = tmp_path / "idx"
    assert cli(src, tmp_path / "o.parquet", "--index", index).returncode == 0
    good = (index / "000000" / "manifest.json").read_bytes()
    _plant(index / "000000" / "manifest.json", marker)
    assert "pickle" in one_line_error(cli(src, tmp_path / "o2.parquet", "--index", index))
    (index / "000000" / "manifest.json").write_bytes(good)
    npy = index / "000000" / "signatures.npy"
    with open(npy, "wb") as f:  # an object array whose pickle runs the payload
        np.lib.format.write_array(f, np.array([Payload_holder(marker)], dtype=object),
                                  allow_pickle=True)
    msg = one_line_error(cli(src, tmp_path / "o2.parquet", "--index", index))
    assert "damaged" in msg
    assert not marker.exists() and not (tmp_path / "o2.parquet").exists()


class Payload_holder:  # noqa: N801 - picklable at module level, for the .npy case
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_garbled_index_is_one_line(real_texts, write_docs, tmp_path):
    src = write_docs("a", real_texts[:5])
    index = tmp_path / "idx"
    assert cli(src, tmp_path / "o.parquet", "--index", index).returncode == 0
    before = table(tmp_path / "o.parquet")
    manifest = index / "000000" / "manifest.json"
    good = manifest.read_text()
    assert '"num_perm": 128' in good
    for garble, says in ((good[: len(good) // 2], "damaged"), ("[1, 2]", "damaged"),
                         (good.replace('"000000"', '"../../x1"'), "damaged"),
                         (good.replace('"num_perm": 128', '"num_perm": "many"'), "built with")):
        manifest.write_text(garble)
        assert says in one_line_error(cli(src, tmp_path / "o.parquet", "--index", index))
    manifest.write_text(good)
    ids = index / "000000" / "ids.parquet"
    data = bytearray(ids.read_bytes())
    ids.write_bytes(bytes(data[: len(data) // 2]))
    # (to a new output: a retry of the run that wrote o.parquet would not read that segment)
    assert "damaged" in one_line_error(cli(src, tmp_path / "o2.parquet", "--index", index))
    # A file that is no index at all.
    (tmp_path / "notes.txt").write_text("hello")
    assert "notes.txt" in one_line_error(cli(src, tmp_path / "o.parquet", "--index",
                                             tmp_path / "notes.txt"))
    assert table(tmp_path / "o.parquet") == before and not leftovers(tmp_path)


def test_concurrent_writers_are_refused(real_texts, write_docs, tmp_path):
    a, b = _days(real_texts)
    src_a, src_b = write_docs("a", a), write_docs("b", b)
    index = tmp_path / "idx"
    # Run 1 stops itself (SIGSTOP) once it holds the index's lock; run 2 starts meanwhile.
    first = subprocess.Popen(
        [sys.executable, "-m", "lmforge.curate.dedup", src_a, tmp_path / "a.out.parquet",
         "--index", index], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "LMFORGE_DEDUP_SIGNAL_AT": "locked:SIGSTOP"})
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "run 1 did not reach its lock"
        msg = one_line_error(cli(src_b, tmp_path / "b.out.parquet", "--index", index))
        assert "in use by another run" in msg and str(index) in msg
        assert not (tmp_path / "b.out.parquet").exists()
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # Run 1's ids are all in the index, and run 2 (retried after run 1) is added after them.
    assert cli(src_b, tmp_path / "b.out.parquet", "--index", index).returncode == 0
    loaded = [pq.read_table(p, columns=["id"]).column("id").to_pylist()
              for p in sorted(index.glob("*/ids.parquet"))]
    assert loaded == [[f"a-{i}" for i in range(len(a))],
                      [r["id"] for r in table(tmp_path / "b.out.parquet")]]


# Kill -9 at every step of a run that adds to the index, then retry: the same output and
# index as a run that was never interrupted.
KILL_POINTS = ("locked", "signatures", "prepared", "outputs_committed", "index_committed")


@pytest.fixture(scope="module")
def kill_setup(real_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    a, b = _days(real_texts)
    for name, texts in (("a", a), ("b", b)):
        write_parquet(root / f"{name}.in.parquet", [
            {"id": f"{name}-{i}", "url": f"http://x/{i}", "text": t} for i, t in enumerate(texts)])
    template = root / "template"
    assert cli(root / "a.in.parquet", template / "a.parquet", "--index", template / "idx",
               "--shard-rows", "16").returncode == 0
    reference = root / "reference"
    shutil.copytree(template, reference)
    assert cli(root / "b.in.parquet", reference / "b.parquet", "--index", reference / "idx",
               "--shard-rows", "16").returncode == 0
    return root, template, reference


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_any_point_then_retry(kill_setup, point, tmp_path):
    root, template, reference = kill_setup
    work = tmp_path / "w"
    shutil.copytree(template, work)
    args = (root / "b.in.parquet", work / "b.parquet", "--index", work / "idx",
            "--shard-rows", "16")
    killed = cli(*args, env={"LMFORGE_DEDUP_SIGNAL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = point in ("outputs_committed", "index_committed")
    assert (work / "b.parquet").exists() == committed
    retry = cli(*args)
    assert retry.returncode == 0, retry.stderr
    assert ("replayed" in retry.stderr) == (point == "index_committed")
    for name in ("b.parquet", "b.removed.parquet"):
        assert table(work / name) == table(reference / name)
    assert 0 < len(table(work / "b.parquet")) < 44
    assert index_state(work / "idx") == index_state(reference / "idx")
    assert not leftovers(work)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_full_disk_and_read_only_index(real_texts, write_docs, small_disk):
    src = write_docs("small", real_texts[:20])
    out, index = small_disk / "o.parquet", small_disk / "idx"
    assert cli(src, out, "--index", index).returncode == 0
    before = snapshot(small_disk)
    # Distinct documents (pairs of real texts): their output and index need several MB.
    big = write_docs("big", [real_texts[i] + " " + real_texts[j] for i in range(60)
                             for j in range(i + 1, 60)])
    msg = one_line_error(cli(big, out, "--index", index))
    # (the run's working files, its outputs or its segment: whichever the disk ran out on)
    assert "no space left on the device writing" in msg and str(small_disk) in msg
    assert snapshot(small_disk) == before  # earlier output and index unchanged, no temporaries

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    msg = one_line_error(cli(src, small_disk / "o2.parquet", "--index", index))
    assert str(small_disk) in msg
    msg = one_line_error(cli(src, small_disk.parent / "o3.parquet", "--index", index))
    assert "idx" in msg
    assert not (small_disk.parent / "o3.parquet").exists()
    assert snapshot(small_disk) == before


def test_graph_stage_writes_one_segment_per_day(real_texts, write_docs, tmp_path):
    """What the per-day asset does (``stages._run_dedup``): day D is deduplicated against the
    segments of the days before it, and writes only ``<index>/<D>/``; a day run again after a
    later one gives the same result and leaves the later day's segment as it was."""
    from lmforge.curate.parallel import ParallelConfig
    from lmforge.curate.stages import CURATION_STAGES, StageRun

    stage = next(s for s in CURATION_STAGES if s.command == "dedup")
    assert stage.depends_on_previous_day
    index = tmp_path / "index"
    days = {"2026-03-01": real_texts[:20], "2026-03-02": real_texts[10:30],
            "2026-03-03": real_texts[25:40]}

    def run(day: str):
        src = write_docs(day, [{"id": f"{day}-{i}", "url": "", "text": t}
                               for i, t in enumerate(days[day])])
        out = tmp_path / "docs" / f"{day}.parquet"
        return stage(StageRun(input=Path(src), output=out, removed=tmp_path / "docs" /
                              f"{day}.removed.parquet", config=DedupConfig(), day=day,
                              state_dir=index, parallel=ParallelConfig()))

    kept = [run(day).kept_documents for day in days]
    assert kept == [20, 10, 10]  # day 3: 25-29 were kept on day 2
    assert sorted(p.name for p in index.iterdir() if not p.name.startswith(".")) == list(days)
    state = index_state(index)
    again = run("2026-03-02")
    assert again.kept_documents == 10 and again.index_documents_before == 20
    assert again.extra_metadata["deduplicated_against"] == "20 documents kept on earlier days"
    assert index_state(index) == state and not leftovers(tmp_path)
    marker = tmp_path / "pwned"
    _plant(index / "2026-02-28.pkl", marker)
    with pytest.raises(LmforgeError, match="old pickle format"):
        run("2026-03-02")
    assert not marker.exists()
