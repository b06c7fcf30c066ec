"""The Dagster layer of the scaling sweep: one partition per run of each sweep file, a run whose
result exists is not trained again, the fit materializes with the fitted law and its pictures
once every run has a result, and the presets' budget then reads that fit."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from lmforge.scaling import sweep as sw
from lmforge.scaling.fit import HOFFMANN

SWEEP = """
budgets: [1e9, 3e9, 1e10]
sizes:
  d8x1: {d_model: 8, n_layers: 1, n_heads: 2}
  d16x1: {d_model: 16, n_layers: 1, n_heads: 2}
  d24x1: {d_model: 24, n_layers: 1, n_heads: 2}
  d32x1: {d_model: 32, n_layers: 1, n_heads: 2}
seq_len: 64
device: cpu
"""


def test_the_repositorys_sweeps_give_partitions_and_jobs():
    import assets.scaling as sc
    from resources import ArtifactStore, TrainingLauncher

    files = sc.sweep_files()
    assert {"tiny", "gpu"} <= set(files)
    assets = dg.load_assets_from_modules([sc])
    checks = dg.load_asset_checks_from_modules([sc])
    by_name = {a.key.to_user_string(): a for a in assets}
    for name, path in files.items():
        runs = by_name[f"scaling_runs_{name}"]
        assert runs.partitions_def.get_partition_keys() == sw.run_ids(sw.load_sweep(path))
        assert by_name[f"scaling_fit_{name}"].partitions_def is None
    defs = dg.Definitions(assets=assets, asset_checks=checks, jobs=sc.scaling_jobs(),
                          resources={"store": ArtifactStore(), "launcher": TrainingLauncher()})
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("scaling")
    assert job.partitions_def.get_partition_keys() == sw.run_ids(sw.load_sweep(files["tiny"]))
    assert defs.resolve_job_def("scaling_gpu")
    checked = {k.asset_key.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    assert {"scaling_fit_tiny", "scaling_fit_gpu"} <= checked


@pytest.mark.parametrize("own_vocabulary", [False, True])
def test_done_runs_are_skipped_and_the_fit_materializes(tmp_path, monkeypatch, sweep_inputs,
                                                         own_vocabulary):
    """With the pipeline's tokenizer and shards, or (``vocab_size`` in the sweep file) with the
    sweep's own, trained on the curated corpus."""
    import assets.scaling as sc
    from assets.data import CURATED
    from lmforge.scaling.budget import latest_fit
    from resources import ArtifactStore, TrainingLauncher

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    tokenizer_dir, shards_dir = sweep_inputs
    path = tmp_path / "t.yaml"
    out_root = store.asset_dir("scaling_runs_t")
    if own_vocabulary:
        docs = tokenizer_dir.parent.parent.parent / "documents.parquet"
        store.fixed_path(CURATED, "documents").mkdir(parents=True)
        shutil.copy(docs, store.fixed_path(CURATED, "documents") / "2026-01-01.parquet")
        path.write_text(SWEEP + "vocab_size: 512\n")
        data, tok = out_root / "data" / "v512" / "shards", out_root / "data" / "v512" / "tokenizer"
    else:
        # The pipeline's tokenizer and shards: versions that materializations name (`path`).
        for name, src, sub in (("tokenizer", tokenizer_dir, "tokenizer"),
                               ("token_shards", shards_dir, "shards")):
            version = store.fixed_path(name, "v1")
            shutil.copytree(src, version / sub)
            dg.DagsterInstance.get().report_runless_asset_event(dg.AssetMaterialization(
                asset_key=name, metadata={"path": str(version), "version": "v1"}))
        path.write_text(SWEEP)
        data, tok = store.path("token_shards", "shards"), store.path("tokenizer", "tokenizer")
    sweep = sw.load_sweep(path)
    defs = sc._sweep_assets("t", path)
    # Every run "finished" with the loss Chinchilla's law gives it: the fit must find that law.
    ids = sw.run_ids(sweep)
    for run_id in ids:
        plan = sw.plan_run(sweep, run_id, 512)
        cfg = sw.pretrain_config(sweep, run_id, 512, data, tok, sw.run_dir(out_root, run_id))
        result = {**plan, "loss": float(HOFFMANN.loss(plan["params"], plan["tokens"])),
                  "settings": sw._settings(cfg)}
        sw.result_path(out_root, run_id).parent.mkdir(parents=True)
        sw.result_path(out_root, run_id).write_text(json.dumps(result))
    instance = dg.DagsterInstance.get()
    result = dg.materialize(list(defs.values()), partition_key=ids[0], instance=instance,
                            resources={"store": store, "launcher": TrainingLauncher()},
                            run_config={"ops": {"scaling_fit_t": {"config": {"bootstrap": 0,
                                                                             "starts": 16}}}})
    assert result.success
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()
            and [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]}
    runs_meta = mats["scaling_runs_t"].metadata
    assert runs_meta["skipped"].value is True and not sw.run_dir(out_root, ids[0]).exists()
    fit_meta = mats["scaling_fit_t"].metadata
    for name in ("E", "A", "B", "alpha", "beta"):
        assert fit_meta[name].value == pytest.approx(getattr(HOFFMANN, name), rel=1e-3)
    assert fit_meta["isoflops"].value.startswith("![IsoFLOP curves](data:image/png;base64,")
    assert fit_meta["tokens_per_param"].value == pytest.approx(
        HOFFMANN.tokens_per_param(fit_meta["budget"].value), rel=1e-3)
    for check in result.get_asset_check_evaluations():
        assert check.passed, check.asset_check_key
    report = latest_fit(store.base())
    assert report["sweep"] == "t" and report["alpha"] == pytest.approx(0.34, rel=1e-3)
    assert (store.base() / "scaling_fit_t").joinpath(*report["plots"]["frontier"].split("/")[-2:]).is_file()
    assert (tok / "tokenizer.json").is_file()
    assert (out_root / "data" / "v512").is_dir() == own_vocabulary


def test_the_fit_waits_for_every_run(tmp_path, monkeypatch):
    import assets.scaling as sc
    from resources import ArtifactStore

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    path = tmp_path / "t.yaml"
    path.write_text(SWEEP)
    defs = sc._sweep_assets("t", path)
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    result = dg.materialize([defs["scaling_fit_t"]], instance=dg.DagsterInstance.get(),
                            resources={"store": store},
                            selection=["scaling_fit_t"])
    assert result.success and not result.get_asset_materialization_events()
    assert not (store.base() / "scaling_fit").exists()


def test_loads_beside_the_whole_graph():
    """The scaling assets and jobs with every other asset (the daily curated corpus upstream of
    the tiny sweep's own tokenizer), as pipelines/definitions.py loads them."""
    import pipelines.definitions as d

    dg.Definitions.validate_loadable(d.defs)
    job = d.defs.resolve_job_def("scaling")
    assert job.partitions_def.get_partition_keys()[0] == "d8x1@3e9"
    assert {k.path[0] for k in job.asset_layer.executable_asset_keys} == {"tiny"}
    assert d.defs.resolve_job_def("scaling_gpu_gpt2_124m")
