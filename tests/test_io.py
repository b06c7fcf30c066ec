"""Safe outputs (lmforge.io): nothing lmforge did not make is ever replaced, temporaries never
outlive their process, and a kill at any point of a commit loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmforge.errors import OutputError
from lmforge.io import (OUTPUT_MARKER, atomic_path, check_output, claim_output_dir, sweep_stale,
                        temp_name_prefix, write_json, write_parquet)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_file_is_never_written_where_a_directory_stands(tmp_path):
    victim = tmp_path / "v"
    (victim / "sub").mkdir(parents=True)
    (victim / "keep.txt").write_text("x")
    before = _tree(tmp_path)
    with pytest.raises(OutputError, match="is a directory"):
        write_parquet(victim, [{"id": "1", "url": "u", "text": "t"}])
    with pytest.raises(OutputError, match="is a directory"):
        write_json(victim, {"a": 1})
    assert _tree(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no temporary left beside it


def test_a_directory_output_replaces_only_what_lmforge_made(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not make"):
        with atomic_path(foreign, "dir") as tmp:
            tmp.mkdir()
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "out"
    for version in ("1", "2"):  # an empty or missing directory, then lmforge's own: replaced
        with atomic_path(out, "dir") as tmp:
            tmp.mkdir()
            (tmp / "v.txt").write_text(version)
        assert (out / "v.txt").read_text() == version
        assert (out / OUTPUT_MARKER).is_file()
    file_out = tmp_path / "f.json"
    file_out.write_text("{}")
    with pytest.raises(OutputError, match="is a file"):
        check_output(file_out, "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "foreign", "out"]


def test_a_failed_write_leaves_the_previous_output_and_no_temporary(tmp_path):
    out = tmp_path / "docs.parquet"
    write_parquet(out, [{"id": "1", "url": "u", "text": "old"}])
    before = out.read_bytes()

    def rows():
        yield {"id": "2", "url": "u", "text": "new"}
        raise RuntimeError("the stage broke half-way")

    with pytest.raises(RuntimeError):
        write_parquet(out, rows())
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["docs.parquet"]


def test_claim_output_dir_marks_and_refuses_foreign_directories(tmp_path):
    run = claim_output_dir(tmp_path / "run")
    assert (run / OUTPUT_MARKER).is_file()
    (run / "checkpoint").write_text("x")
    assert claim_output_dir(run) == run  # a marked directory is taken again (resume)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("x")
    with pytest.raises(OutputError):
        claim_output_dir(home)
    assert not (home / OUTPUT_MARKER).exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="a parent of it is a file"):
        check_output(tmp_path / "afile" / "out.parquet")


def _killed_writer(tmp_path: Path, script: str) -> None:
    """Run ``script`` in a child that SIGKILLs itself at the point the script chooses."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from lmforge.io import atomic_path
        root = Path({str(tmp_path)!r})
        def die():
            os.kill(os.getpid(), signal.SIGKILL)
    """) + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


def test_temporaries_of_a_killed_process_are_swept_by_the_next_write(tmp_path):
    _killed_writer(tmp_path, """
        with atomic_path(root / "docs.parquet") as tmp:
            tmp.write_bytes(b"x" * 100_000)
            die()
    """)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".docs.parquet.lmforge-")]
    assert leftovers, "the kill should have left a temporary to sweep"
    write_json(tmp_path / "other.json", {"ok": True})  # any write beside it sweeps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_a_kill_between_the_two_renames_of_a_commit_loses_nothing(tmp_path):
    out = tmp_path / "tok"
    with atomic_path(out, "dir") as tmp:
        tmp.mkdir()
        (tmp / "tokenizer.json").write_text("v1")
    # The old version is moved aside, then the process dies before the new one is renamed in.
    _killed_writer(tmp_path, """
        import os
        with atomic_path(root / "tok", "dir") as tmp:
            tmp.mkdir()
            (tmp / "tokenizer.json").write_text("v2")
            os.replace(root / "tok", tmp.parent / "old")
            die()
    """)
    assert not out.exists()
    sweep_stale(tmp_path)
    assert (out / "tokenizer.json").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_temporaries_of_live_processes_are_left_alone(tmp_path):
    mine = tmp_path / (temp_name_prefix("x") + "abc.tmp")
    mine.mkdir()
    sweep_stale(tmp_path)
    assert mine.exists()


def _mount(args: list[str], target: Path) -> None:
    target.mkdir()
    proc = subprocess.run(["mount", *args, target], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def test_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path):
    disk = tmp_path / "disk"
    _mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], disk)
    try:
        write_json(disk / "small.json", {"a": 1})
        before = _tree(disk)
        with pytest.raises(OutputError, match="no space left"):
            write_parquet(disk / "big.parquet",
                          ({"id": str(i), "url": "u", "text": os.urandom(2000).hex()}
                           for i in range(200)))
        assert _tree(disk) == before
    finally:
        subprocess.run(["umount", disk])


def test_read_only_destination_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    _mount(["-t", "tmpfs", "-o", "ro", "tmpfs"], ro)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            check_output(ro / "out.parquet")
        with pytest.raises(OutputError, match="cannot write"):
            claim_output_dir(ro / "run")
    finally:
        subprocess.run(["umount", ro])
