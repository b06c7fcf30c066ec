"""Versions in the artifact store: listing and the pruning rules (lmforge.versions)."""

from __future__ import annotations

import json

import pytest

from lmforge.versions import (RELEASE_FILE, VERSION_FILE, list_versions, partition_dir_name,
                              plan_prune, remove_version)


def _version(root, asset, version, created, partition=None, release_of=None, size=10):
    where = root / asset.split("/")[0] / asset.split("/")[1]
    if partition:
        where = where / partition_dir_name(partition)
    vdir = where / version
    (vdir / "model").mkdir(parents=True)
    (vdir / "model" / "weights.bin").write_bytes(b"x" * size)
    (vdir / VERSION_FILE).write_text(json.dumps({"asset": asset, "partition": partition,
                                                 "version": version, "created": created,
                                                 "run_id": "r" + version}))
    if release_of:
        (vdir / RELEASE_FILE).write_text(json.dumps({"source": str(release_of)}))
    return vdir


def test_prune_keeps_the_newest_the_releases_their_sources_and_what_is_protected(tmp_path):
    sft = [_version(tmp_path, "tiny/sft_model", f"v{i}", f"2026-01-0{i}T00:00:00Z") for i in range(1, 6)]
    release = _version(tmp_path, "tiny/released_model", "r1", "2026-01-02T00:00:00Z", release_of=sft[0])
    older_release = _version(tmp_path, "tiny/released_model", "r0", "2026-01-01T00:00:00Z",
                             release_of=sft[1])
    adapters = [_version(tmp_path, "tiny/lora_adapter", f"a{i}", f"2026-01-0{i}T00:00:00Z",
                         partition="math|smoke") for i in range(1, 4)]
    versions = list_versions(tmp_path, sizes=True)
    assert len(versions) == 10 and all(v.size_bytes >= 10 for v in versions)
    assert adapters[0].parent.name == "math__smoke"
    plan = plan_prune(versions, keep_last=2, protected={str(sft[2]): "the latest materialization"})
    removed = {v.path for v in plan.remove}
    # v1 and v2 are release sources, v3 is protected, v4 and v5 are the newest two.
    assert removed == {adapters[0]}
    assert plan.why_kept[str(sft[0])] == "a release was made from it"
    assert plan.why_kept[str(release)] == plan.why_kept[str(older_release)] == "a release"
    plan = plan_prune(versions, keep_last=1, protected={})
    assert {v.path for v in plan.remove} == {sft[2], sft[3], adapters[0], adapters[1]}
    for v in plan.remove:
        remove_version(v)
    assert not sft[2].exists() and sft[4].exists() and release.exists()
    assert len(list_versions(tmp_path)) == 6
    with pytest.raises(ValueError, match="at least 1"):
        plan_prune(versions, keep_last=0, protected={})


def test_partition_keys_become_one_safe_directory_name():
    assert partition_dir_name("2026-03-01") == "2026-03-01"
    assert partition_dir_name("math|smoke") == "math__smoke"
    assert "/" not in partition_dir_name("../../etc")
    with pytest.raises(ValueError):
        partition_dir_name("..")
