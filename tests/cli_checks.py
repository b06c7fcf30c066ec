"""Helpers for the per-command bad-input tests: run a command the way a user does, and check the
promise for a bad input (exit status 2, one line on stderr, no traceback, nothing left behind,
earlier outputs unchanged)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from lmforge.io import OUTPUT_MARKER


def lmforge(*args: str | os.PathLike, cwd: str | os.PathLike | None = None
            ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_DEBUG"}
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` with its bytes (directories as names only)."""
    out: dict[str, bytes] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = root.read_bytes()
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                out[str(p)] = p.read_bytes() if p.is_file() else b"<dir>"
    return out


def temporaries(*dirs: Path) -> list[str]:
    """lmforge temporaries (``.<name>.lmforge-...``) left in ``dirs``."""
    return [p.name for d in dirs if d.is_dir() for p in d.iterdir()
            if ".lmforge-" in p.name and p.name != OUTPUT_MARKER]


def assert_refused(proc: subprocess.CompletedProcess, *, parents: list[Path],
                   before: dict[str, bytes], roots: list[Path], says: str = "") -> str:
    """Exit 2, exactly one non-empty line on stderr, no traceback, no temporaries in ``parents``,
    and every file under ``roots`` as it was (``before``). Returns the line."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].strip(), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert says.lower() in lines[0].lower(), lines[0]
    assert temporaries(*parents) == []
    assert snapshot(*roots) == before
    return lines[0]


def mount_tmpfs(path: Path, options: str) -> None:
    """Mount a tmpfs at ``path`` (root ignores chmod, so read-only and full places are made with
    real mounts); skips the test, with the reason, where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    mount_tmpfs(path, options)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A read-only directory (a read-only tmpfs): writing there fails even for root."""
    with tmpfs(path, "ro,size=64k") as p:
        yield p


def foreign_dir(path: Path) -> Path:
    """A non-empty directory lmforge did not make, with a file and a sub-directory."""
    (path / "sub").mkdir(parents=True)
    (path / "keep.txt").write_text("x\n")
    return path


# --------------------------------------------------------------------------- document stages

# The bad inputs every documents -> documents stage (IN.parquet OUT.parquet) refuses.
DOCUMENT_STAGE_CASES = ["missing_input", "empty_input", "input_dir_without_parquet",
                        "input_not_parquet", "no_text_column", "output_is_dir",
                        "output_parent_is_file", "removed_is_dir", "output_is_input",
                        "read_only_destination"]


def document_stage_refuses(cmd: list[str], case: str, tmp_path: Path, good_docs: str | Path,
                           says: str = "") -> str:
    """Run ``lmforge CMD... IN OUT`` with the bad input ``case`` and check the promise. An
    earlier output (OUT and OUT.removed) is in place and must stay byte for byte."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    src.mkdir(parents=True)
    inp = src / "docs.parquet"
    inp.write_bytes(Path(good_docs).read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.parquet"
    removed = work / "out.removed.parquet"
    out.write_bytes(b"earlier output")
    removed.write_bytes(b"earlier removed")
    if case == "missing_input":
        inp = src / "nope.parquet"
    elif case == "empty_input":
        inp.write_bytes(b"")
    elif case == "input_dir_without_parquet":
        inp = src / "empty_dir"
        inp.mkdir()
    elif case == "input_not_parquet":
        inp.write_text("id,text\n1,hello\n")
    elif case == "no_text_column":
        pq.write_table(pa.table({"id": ["a"], "body": ["hello world"]}), inp)
    elif case == "output_is_dir":
        out.unlink()
        out.mkdir()
        (out / "keep.txt").write_text("x\n")
    elif case == "output_parent_is_file":
        out = out / "nested.parquet"
    elif case == "removed_is_dir":
        removed.unlink()
        foreign_dir(removed)
    elif case == "output_is_input":
        out = inp
    roots = [src, work]
    if case == "read_only_destination":
        with read_only_dir(tmp_path / "ro") as ro:
            before = snapshot(*roots, ro)
            proc = lmforge(*cmd, inp, ro / "out.parquet")
            return assert_refused(proc, parents=[ro], before=before, roots=[*roots, ro],
                                  says=says or "read-only")
    before = snapshot(*roots)
    proc = lmforge(*cmd, inp, out)
    return assert_refused(proc, parents=[work, src, out.parent], before=before, roots=roots,
                          says=says)
