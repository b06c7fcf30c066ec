"""A remote artifact root on a real S3 server (moto's server mode on loopback): uploads, downloads,
the visibility rule (nothing without its manifest), and versions listed and pruned remotely."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from lmforge.errors import LmforgeError
from lmforge.remote import MANIFEST, Mirror, commit_path, filesystem, remove_unit
from resources import ArtifactStore
from resources.config import for_deployment

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; the standard AWS variables point at the local server for this test only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "LMFORGE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"lmforge-{uuid.uuid4().hex[:10]}"
    fs, _ = filesystem(f"s3://{name}")
    fs.mkdir(name)
    return name


def _unit(mirror: Mirror, rel: str, files: dict[str, bytes]):
    where = mirror.local(rel)
    for name, data in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    return where


def _keys(bucket: str) -> list[str]:
    fs, _ = filesystem(f"s3://{bucket}")
    fs.invalidate_cache()
    return sorted(k[len(bucket) + 1:] for k in fs.find(bucket))


def test_a_unit_goes_up_files_first_and_comes_down_checked_on_another_machine(bucket, tmp_path):
    root = f"s3://{bucket}/x"
    a = Mirror(root, tmp_path / "a")
    files = {"version.json": b'{"asset": "tiny/m"}', "run/model/weights.bin": bytes(range(256)) * 40,
             "run/summary.json": b"{}", ".lmforge.lock": b"", "lock": b""}
    _unit(a, "tiny/m/v1", files)
    assert a.push("tiny/m/v1")
    assert not a.push("tiny/m/v1")  # nothing changed: nothing uploaded, no new manifest
    keys = _keys(bucket)
    assert f"x/tiny/m/v1/{MANIFEST}" in keys
    assert not any(k.endswith("lock") for k in keys)  # locks never travel
    manifest = a.manifest("tiny/m/v1")
    assert manifest["files"]["run/model/weights.bin"]["size"] == 256 * 40
    assert a.url("tiny/m/v1") == f"{root}/tiny/m/v1"
    assert a.rel(a.local("tiny/m/v1")) == "tiny/m/v1" == a.rel(f"{root}/tiny/m/v1")

    b = Mirror(root, tmp_path / "b")  # a second machine: an empty cache
    assert b.units("tiny") == ["tiny/m/v1"]
    assert b.pull("tiny/m/v1/run", within="tiny/m") == ["tiny/m/v1"]
    got = {p.relative_to(b.local("tiny/m/v1")).as_posix(): p.read_bytes()
           for p in b.local("tiny/m/v1").rglob("*") if p.is_file()}
    assert got == {k: v for k, v in files.items() if "lock" not in k}

    # A new commit drops a file: its object goes (after the new manifest), and the other
    # machine's copy of it goes on its next pull.
    (a.local("tiny/m/v1") / "run" / "summary.json").unlink()
    (a.local("tiny/m/v1") / "run" / "more.json").write_text("[1]")
    assert a.push("tiny/m/v1")
    assert "x/tiny/m/v1/run/summary.json" not in _keys(bucket)
    assert b.pull_unit("tiny/m/v1")
    assert not (b.local("tiny/m/v1") / "run" / "summary.json").exists()
    assert (b.local("tiny/m/v1") / "run" / "more.json").read_text() == "[1]"


def test_a_failed_upload_leaves_nothing_visible_and_the_retry_commits(bucket, tmp_path, monkeypatch):
    root = f"s3://{bucket}/x"
    a = Mirror(root, tmp_path / "a")
    _unit(a, "tiny/docs/2026-01-01", {f"part-{i:03d}.parquet": b"p" * (i + 1) for i in range(4)})
    put_file = a.fs.put_file

    def fail_on_last(lpath, rpath, *args, **kwargs):
        if rpath.endswith("part-003.parquet"):
            raise ConnectionError("network gone")
        return put_file(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(a.fs, "put_file", fail_on_last)
    with pytest.raises(ConnectionError):
        a.push("tiny/docs/2026-01-01")
    keys = _keys(bucket)
    assert "x/tiny/docs/2026-01-01/part-002.parquet" in keys  # the first files went up ...
    assert not any(k.endswith(MANIFEST) for k in keys)  # ... but not the manifest
    b = Mirror(root, tmp_path / "b")
    assert b.units() == [] and b.pull("tiny/docs", within="tiny") == []
    assert not b.pull_unit("tiny/docs/2026-01-01")
    assert not b.local("tiny/docs/2026-01-01").exists()

    monkeypatch.setattr(a.fs, "put_file", put_file)
    assert a.push("tiny/docs/2026-01-01")
    assert b.pull("tiny/docs", within="tiny") == ["tiny/docs/2026-01-01"]
    assert len(list(b.local("tiny/docs/2026-01-01").glob("part-*.parquet"))) == 4


_UPLOAD = """
import sys
from lmforge.remote import Mirror
Mirror(sys.argv[1], sys.argv[2]).push("tiny/big/v1")
"""


def test_an_upload_killed_between_files_is_invisible(bucket, tmp_path):
    root = f"s3://{bucket}/x"
    a = Mirror(root, tmp_path / "a")
    _unit(a, "tiny/big/v1", {"version.json": b"{}",
                             **{f"shard-{i:04d}.bin": bytes([i % 256]) * 4096 for i in range(400)}})
    proc = subprocess.Popen([sys.executable, "-c", _UPLOAD, root, str(tmp_path / "a")])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_keys(bucket)) < 20:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    keys = _keys(bucket)
    assert 20 <= len(keys) < 401, len(keys)  # killed between files
    assert not any(k.endswith(MANIFEST) for k in keys)
    b = Mirror(root, tmp_path / "b")
    assert b.units() == [] and not b.pull_unit("tiny/big/v1")
    assert not b.local("tiny/big/v1").exists()


def test_planted_and_tampered_objects_are_never_taken(bucket, tmp_path):
    root = f"s3://{bucket}/x"
    fs, _ = filesystem(root)
    # An object without a manifest: never listed, never downloaded.
    fs.pipe_file(f"{bucket}/x/tiny/m/planted/weights.bin", b"evil")
    a = Mirror(root, tmp_path / "a")
    assert a.pull("tiny/m", within="tiny/m") == [] and not a.local("tiny/m/planted").exists()

    # A manifest that names a path outside its unit.
    fs.pipe_file(f"{bucket}/x/tiny/m/escape/{MANIFEST}", json.dumps(
        {"files": {"../../../../outside.txt": {"size": 1, "sha256": "0" * 64}}}).encode())
    with pytest.raises(LmforgeError, match="refusing file name") as e:
        a.pull_unit("tiny/m/escape")
    assert "\n" not in str(e.value) and not (tmp_path / "outside.txt").exists()

    # A committed file replaced afterwards: the download fails in one line, and nothing is left
    # where the file would have been.
    _unit(a, "tiny/m/v1", {"version.json": b"{}", "weights.bin": b"good" * 100})
    a.push("tiny/m/v1")
    fs.pipe_file(f"{bucket}/x/tiny/m/v1/weights.bin", b"evil" * 100)
    b = Mirror(root, tmp_path / "b")
    with pytest.raises(LmforgeError, match=r"weights.bin: sha256 \w+ does not match its manifest") as e:
        b.pull_unit("tiny/m/v1")
    assert "\n" not in str(e.value)
    assert not (b.local("tiny/m/v1") / "weights.bin").exists()


def test_a_cache_mirrors_one_root_and_missing_file_systems_are_named(bucket, tmp_path):
    Mirror(f"s3://{bucket}/x", tmp_path / "c")
    with pytest.raises(LmforgeError, match="mirrors .*LMFORGE_CACHE"):
        Mirror(f"s3://{bucket}/y", tmp_path / "c")
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed: the missing-package error cannot be shown")
    with pytest.raises(LmforgeError, match="pip install gcsfs") as e:
        filesystem("gs://bucket/x")
    assert "\n" not in str(e.value)


def test_versions_are_listed_and_pruned_on_the_remote_root(bucket, tmp_path, monkeypatch, capsys):
    from pipelines.versions import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    root = f"s3://{bucket}/art"
    a = Mirror(root, tmp_path / "cache")
    for i in range(1, 5):
        rel = f"tiny/sft_model/v{i}"
        _unit(a, rel, {"version.json": json.dumps({
            "asset": "tiny/sft_model", "partition": None, "version": f"v{i}",
            "created": f"2026-01-0{i}T00:00:00Z", "run_id": f"r{i}"}).encode(),
            "run/model/weights.bin": b"w" * 100})
        a.push(rel)
    # The release names its source by the local path it had on the machine that made it.
    _unit(a, "tiny/released_model/r1", {
        "version.json": json.dumps({"asset": "tiny/released_model", "version": "r1",
                                    "created": "2026-01-02T00:00:00Z"}).encode(),
        "release.json": json.dumps({"source": "/elsewhere/cache/tiny/sft_model/v1"}).encode()})
    a.push("tiny/released_model/r1")
    _unit(a, "tiny/sft_model/v5", {"version.json": b"{}"})  # being written: no manifest yet
    instance = dg.DagsterInstance.get()
    for asset, version in (("sft_model", "v4"), ("released_model", "r1")):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            dg.AssetKey(["tiny", asset]), metadata={"path": f"{root}/tiny/{asset}/{version}"}))
    assert main(["--artifacts", root, "list"]) == 0
    out = capsys.readouterr().out
    assert "5 versions" in out and "v5" not in out
    assert "a release was made from it" in out  # v1, named by a path of another machine's cache
    assert main(["--artifacts", root, "prune", "--keep", "1"]) == 0
    keys = _keys(bucket)
    gone = [f"art/tiny/sft_model/v{i}/" for i in (2, 3)]
    assert not any(k.startswith(tuple(gone)) for k in keys)
    assert f"art/tiny/sft_model/v1/{MANIFEST}" in keys and f"art/tiny/sft_model/v4/{MANIFEST}" in keys
    assert main(["--artifacts", root, "list"]) == 0
    assert "3 versions" in capsys.readouterr().out


def test_every_asset_is_committed_by_one_wrapper_and_a_failed_one_is_not(bucket, tmp_path):
    """The hook that ``for_deployment`` puts around every asset: after a plain or a generator
    compute, what it wrote is committed and ``path`` names it remotely; a failed asset commits
    nothing."""
    @dg.asset(key_prefix="t")
    def pages(store: ArtifactStore) -> dg.MaterializeResult:
        day = store.fixed_path("pages", "2026-01-01")
        day.mkdir(parents=True, exist_ok=True)
        (day / "a.warc.gz").write_bytes(b"warc")
        return dg.MaterializeResult(metadata={"path": str(day)})

    @dg.asset(key_prefix="t", deps=[pages], output_required=False)
    def model(store: ArtifactStore):
        assert (store.fixed_path("pages", "2026-01-01") / "a.warc.gz").read_bytes() == b"warc"
        store.path("model", "weights.bin").write_bytes(b"w" * 10)
        yield dg.MaterializeResult(metadata={"steps": 1})

    @dg.asset(key_prefix="t")
    def broken(store: ArtifactStore) -> None:
        store.path("broken", "half.bin").write_bytes(b"h")
        raise RuntimeError("killed half-way")

    root = f"s3://{bucket}/x"
    made = [for_deployment(a, "t") for a in (pages, model, broken)]
    instance = dg.DagsterInstance.ephemeral()
    store = ArtifactStore(root=root, cache=str(tmp_path / "cache"))
    result = dg.materialize(made, resources={"store": store}, instance=instance,
                            selection=["t/pages", "t/model"])
    assert result.success
    paths = {k.path[-1]: m.metadata["path"].value for k, m in
             ((e.asset_key, e.event_specific_data.materialization)
              for e in result.get_asset_materialization_events())}
    assert paths["pages"] == f"{root}/t/pages/2026-01-01"
    assert paths["model"].startswith(f"{root}/t/model/")
    b = Mirror(root, tmp_path / "other")
    assert b.units("t") == ["t/model/" + paths["model"].rsplit("/", 1)[-1], "t/pages/2026-01-01"]
    assert b.pull_unit(b.rel(paths["model"])) and (b.local(b.rel(paths["model"])) / "weights.bin").exists()

    failed = dg.materialize(made, resources={"store": store}, instance=instance,
                            selection=["t/broken"], raise_on_error=False)
    assert not failed.success
    assert not b.units("t/broken") and not any(k.startswith("x/t/broken/") and
                                               k.endswith(MANIFEST) for k in _keys(bucket))


def test_a_training_process_commits_a_checkpoint_that_a_retry_elsewhere_pulls(
        bucket, tmp_path, monkeypatch):
    """The hook for checkpoints (``commit_path``): committed on its own while the version is not,
    pulled with the version's directory on another machine, and removed with it, manifests
    first."""
    root = f"s3://{bucket}/x"
    monkeypatch.setenv("LMFORGE_ARTIFACTS", root)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "a"))
    a = Mirror(root)
    _unit(a, "tiny/pretrained_model/v1", {"version.json": b"{}",
                                          "run/checkpoints/step-10/model.pt": b"m" * 50,
                                          "run/checkpoints/latest": b"step-10"})
    assert commit_path(a.local("tiny/pretrained_model/v1/run/checkpoints")) == \
        f"{root}/tiny/pretrained_model/v1/run/checkpoints"
    assert commit_path(tmp_path / "elsewhere") is None
    b = Mirror(root, tmp_path / "b")
    assert b.pull("tiny/pretrained_model/v1", within="tiny/pretrained_model/v1") == \
        ["tiny/pretrained_model/v1/run/checkpoints"]
    assert (b.local("tiny/pretrained_model/v1/run/checkpoints") / "latest").read_bytes() == b"step-10"
    assert not (b.local("tiny/pretrained_model/v1") / "version.json").exists()  # not committed
    a.push("tiny/pretrained_model/v1")
    remove_unit(*filesystem(f"{root}/tiny/pretrained_model/v1"))
    assert not any(k.startswith("x/tiny/pretrained_model/") for k in _keys(bucket))
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tmp_path / "local"))
    assert commit_path(a.local("tiny/pretrained_model/v1/run/checkpoints")) is None
