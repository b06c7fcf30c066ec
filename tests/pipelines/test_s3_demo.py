"""The demo's curation and training with the artifact root on S3 (moto's server mode on
loopback): every output committed remotely with its manifest, `path` metadata that names the
remote version, and a second machine (an empty cache) that resolves the latest model from S3."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")

DAY = "2026-05-01"
SMALL = {"crawled_pages": {"max_pages": 30, "max_depth": 1},
         "pretrained_model": {"max_steps": 12, "eval_every": 6}}
TRAINING = ["tokenizer", "token_shards", "pretrained_model"]


def _run(job, partition, selection=None):
    from pipelines.definitions import JOB_ASSETS, defs
    from pipelines.presets import run_config

    assets = set(selection or JOB_ASSETS[job])
    result = defs.resolve_job_def(job).execute_in_process(
        run_config=run_config("tiny", SMALL, assets=assets), instance=dg.DagsterInstance.get(),
        raise_on_error=False, partition_key=partition,
        asset_selection=[dg.AssetKey(["tiny", a]) for a in selection] if selection else None)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


@pytest.fixture
def s3_root(tmp_path, monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    bucket = f"lmforge-{uuid.uuid4().hex[:10]}"
    from lmforge.remote import filesystem

    filesystem(f"s3://{bucket}")[0].mkdir(bucket)
    root = f"s3://{bucket}/x"
    monkeypatch.setenv("LMFORGE_ARTIFACTS", root)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache-a"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    yield root
    server.stop()


@pytest.mark.slow
def test_curation_and_training_on_s3_and_a_second_machine_resolves_the_model(
        s3_root, tmp_path, monkeypatch):
    from lmforge.remote import Mirror, sha256_file
    from pipelines.definitions import JOB_ASSETS
    from resources import ArtifactStore

    _run("curation", DAY)
    _run("training", "smoke", TRAINING)

    instance = dg.DagsterInstance.get()
    mirror = Mirror(s3_root, tmp_path / "cache-a")
    units = mirror.units("tiny")
    for asset in sorted(JOB_ASSETS["curation"] - {"quality_classifier"}) + TRAINING:
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["tiny", asset])), limit=1).records[0]
        path = record.event_log_entry.asset_materialization.metadata["path"].value
        assert path.startswith(s3_root + "/tiny/" + asset), (asset, path)
        # Each output lies in a unit committed with its manifest (the version, the crawl day, the
        # documents).
        assert any(path == mirror.url(u) or path.startswith(mirror.url(u) + "/") for u in units), \
            (asset, path, units)
    manifest = mirror.manifest(mirror.rel(
        instance.fetch_materializations(dg.AssetKey(["tiny", "pretrained_model"]), limit=1)
        .records[0].event_log_entry.asset_materialization.metadata["path"].value))
    assert "run/model/config.json" in manifest["files"] and "version.json" in manifest["files"]

    # A second machine: the same instance and root, an empty cache.
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache-b"))
    store = ArtifactStore(deployment="tiny")
    model = store.latest("pretrained_model", instance=instance)
    assert model is not None and model.is_relative_to(tmp_path / "cache-b")
    first = tmp_path / "cache-a" / model.relative_to(tmp_path / "cache-b") / "run" / "model"
    for name in ("config.json", "model.safetensors"):
        assert sha256_file(model / "run" / "model" / name) == sha256_file(first / name)
    # A downstream stage on that machine reads the curated corpus from S3.
    from assets.data import curated_corpus

    assert any(curated_corpus(store).rglob("*.parquet"))
