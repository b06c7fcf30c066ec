"""A failing asset leaves the previous materialization's files in place, and a retry succeeds."""

from __future__ import annotations

import shutil
import subprocess
import sys

import dagster as dg
import pytest

DAY = "2026-04-01"


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(root):
    return [p for p in root.rglob("*") if ".lmforge-" in p.name and p.name.endswith(".tmp")]


def _materialize(selection, overrides=None):
    from pipelines.definitions import JOB_ASSETS, defs
    from pipelines.presets import run_config

    return defs.resolve_job_def("curation").execute_in_process(
        run_config=run_config("tiny", overrides, assets=set(selection) & JOB_ASSETS["curation"]),
        instance=dg.DagsterInstance.get(), raise_on_error=False, partition_key=DAY,
        asset_selection=[dg.AssetKey(["tiny", a]) for a in selection])


@pytest.mark.slow
def test_a_failed_asset_keeps_the_last_good_output_and_its_retry_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "dagster").mkdir()
    art = tmp_path / "artifacts" / "tiny"

    first = _materialize(["crawled_pages", "extracted_documents", "filtered_documents"],
                         {"crawled_pages": {"max_pages": 12, "max_depth": 1}})
    assert first.success
    # What `make demo` runs again: nothing, until an input is newer than its output.
    from pipelines.definitions import defs
    from pipelines.demo import pending_assets

    keys = [dg.AssetKey(["tiny", a]) for a in ("crawled_pages", "extracted_documents",
                                                "filtered_documents")]
    assert pending_assets(defs, dg.DagsterInstance.get(), keys, DAY) == []
    assert _materialize(["extracted_documents"]).success
    assert [k.path[-1] for k in pending_assets(defs, dg.DagsterInstance.get(), keys, DAY)] == \
        ["filtered_documents"]
    assert _materialize(["filtered_documents"]).success
    filtered = art / "filtered_documents"
    good_filtered = _tree(filtered)
    assert any(name.endswith(".parquet") for name in good_filtered)

    # The upstream output is damaged: the engine call fails, and nothing of the last good
    # materialization is lost or mixed with a half-written one.
    from lmforge.io import parquet_files

    upstream = parquet_files(art / "extracted_documents" / "documents" / DAY)[0]
    saved = tmp_path / "saved.parquet"
    shutil.copyfile(upstream, saved)
    upstream.write_bytes(b"PAR1 not parquet any more")
    failed = _materialize(["filtered_documents"])
    assert not failed.success
    assert _tree(filtered) == good_filtered
    assert not _leftovers(art)

    # What a run killed in the middle of writing a part would have left beside the day's parts.
    stale = art / "filtered_documents" / "documents" / DAY / \
        f".part-00000.parquet.lmforge-{_dead_host()}.tmp"
    stale.mkdir()
    (stale / "half").write_bytes(b"x" * 1000)

    # The retry after the cause is fixed succeeds, gives the same documents, and sweeps what a
    # killed run would have left.
    shutil.copyfile(saved, upstream)
    retry = _materialize(["filtered_documents"])
    assert retry.success
    assert _tree(filtered) == good_filtered
    assert not stale.exists()


def _dead_host() -> str:
    """The host and pid part of a temporary name whose process is gone."""
    from lmforge.io import temp_name_prefix

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = proc.stdout.strip()
    host = temp_name_prefix("x").split(".lmforge-")[1].split("-")[0]
    return f"{host}-{dead_pid}-abc"
