"""deploy/dagster.yaml, run for real: PostgreSQL storage, the queued run coordinator, the `gpu`
pool's limit, run retries that resume a killed training from its checkpoint, run monitoring.

Each test starts a PostgreSQL server and `dagster-daemon run` on a workspace holding
tests/pipelines/prod_location.py, and submits runs to the queue the daemon serves, as the UI, a
schedule or a sensor would. Only the daemon's polling intervals differ from the deployment's
(services.FAST_POLLING).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from services import (DEPLOY_INSTANCE_YAML, DaemonProcess, dagster_daemon, dagster_instance_dir,
                      describe_run, kill_run_worker, postgres_server, render_instance_yaml,
                      step_intervals, submit_runs, wait_for_retry, wait_for_run, workspace_file)

import prod_location
import prod_training

_ = postgres_server  # a fixture, used by name below

LOCATION = Path(prod_location.__file__)
POOL_STEP = "pooled_work"
TRAINING_STEP = "resumable_training"


@dataclass
class Deployment:
    instance: dg.DagsterInstance
    workspace: Path
    daemon: DaemonProcess
    work: Path  # $LMFORGE_PROD_TEST_DIR of the location's assets


def test_the_deployment_instance_config_is_valid_and_says_what_the_docs_say(tmp_path, monkeypatch):
    """Fast: Dagster's own schema check of deploy/dagster.yaml, and the settings the tests
    below rely on, without a server."""
    from dagster._core.instance.config import dagster_instance_config

    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    (tmp_path / "dagster.yaml").write_text(DEPLOY_INSTANCE_YAML.read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] > 0
    assert config["run_retries"]["retry_on_asset_or_op_failure"]
    assert config["run_monitoring"]["enabled"]
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    # The tests retune only polling intervals (and only keys the file has).
    assert render_instance_yaml()["storage"] == yaml.safe_load(DEPLOY_INSTANCE_YAML.read_text())["storage"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, postgres_server):
    """DAGSTER_HOME with deploy/dagster.yaml on the module's PostgreSQL, the daemon running on
    the test location, and this process's instance on the same storage. Shared by the tests of
    this module (each uses its own job), as starting it is most of their time."""
    tmp = tmp_path_factory.mktemp("deployment")
    (tmp / "work").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**postgres_server.env(), prod_location.ROOT_ENV: str(tmp / "work")}.items():
            mp.setenv(name, value)
        home = dagster_instance_dir(tmp)
        mp.setenv("DAGSTER_HOME", str(home))
        workspace = workspace_file(tmp, LOCATION, "prod_test")
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            with dagster_daemon(home, workspace, ready=("QUEUED_RUN_COORDINATOR", "MONITORING",
                                                        "EVENT_LOG_CONSUMER")) as daemon:
                yield Deployment(instance, workspace, daemon, tmp / "work")


@pytest.mark.slow
def test_the_gpu_pool_runs_one_step_at_a_time_across_runs(deployment):
    instance, workspace, daemon = deployment.instance, deployment.workspace, deployment.daemon
    t0 = time.time()
    runs = submit_runs(instance, workspace, "pooled", count=2)

    # The step that got the slot holds it until the other run has had its chance: its step
    # blocked on the pool, or the run held in the queue for it. Without the limit, the other
    # step starts meanwhile and the two overlap.
    deadline, held_since = time.monotonic() + 90, None
    while True:
        started = [r for r in runs if step_intervals(instance, r, finished=False)]
        if len(started) == 2:
            break
        if started:
            other, = set(runs) - set(started)
            held_since = held_since or time.monotonic()
            if _blocked_on_pool(instance, other) or (
                    instance.get_run_by_id(other).status == dg.DagsterRunStatus.QUEUED
                    and time.monotonic() - held_since > 3):
                break
        daemon.check_alive()
        assert time.monotonic() < deadline, "\n".join(describe_run(instance, r) for r in runs)
        time.sleep(0.2)
    (deployment.work / "release").touch()

    finished = [wait_for_run(instance, r, timeout=90, daemon=daemon) for r in runs]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in finished), \
        "\n".join(describe_run(instance, r) for r in runs)
    (a_start, a_end), (b_start, b_end) = sorted(
        step_intervals(instance, r)[POOL_STEP] for r in runs)
    assert a_end <= b_start, f"steps overlapped: {a_start:.2f}-{a_end:.2f} and {b_start:.2f}-{b_end:.2f}"
    # The limit came from dagster.yaml's `concurrency.pools.default_limit`, stored with the pool.
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    print(f"pool test: {time.time() - t0:.1f}s after the daemon was up")


def _blocked_on_pool(instance, run_id: str) -> bool:
    return any((e.message or "").startswith("Step blocked by limit for pool gpu")
               for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT))


# What a SIGKILL hits (the OOM killer, a preemption, a lost node), and how the run fails:
# - "training process": the training the step launched through Pipes; the step fails, so the
#   run fails with a step failure (retried because of retry_on_asset_or_op_failure: true);
# - "run worker": the run's worker and everything under it; its code server finds it gone and
#   fails the run, and the `gpu` slot it held is freed by run monitoring
#   (free_slots_after_run_end_seconds; without it the retry waits in the queue for ever).
# ("step", the step's process and its training, also works: the run fails as a crash. Left out
# of the suite for time; it adds nothing the two above do not cover.)
VICTIMS = {"training process": {"step_key": TRAINING_STEP, "command_contains": "prod_training.py"},
           "run worker": {"step_key": None}}


@pytest.mark.slow
@pytest.mark.parametrize("victim", VICTIMS)
def test_a_killed_training_is_retried_and_resumes_from_its_checkpoint(deployment, tmp_path, victim):
    instance, workspace, daemon = deployment.instance, deployment.workspace, deployment.daemon
    t0 = time.time()
    name = victim.replace(" ", "_")
    out = deployment.work / name
    checkpoint = out / "checkpoint.npz"
    run_id, = submit_runs(instance, workspace, "training",
                          run_config={"ops": {TRAINING_STEP: {"config": {"name": name}}}})

    deadline = time.monotonic() + 120
    while (state := prod_training.read_checkpoint(checkpoint)) is None or state["step"] < 3:
        daemon.check_alive()
        assert time.monotonic() < deadline and not instance.get_run_by_id(run_id).is_finished, \
            describe_run(instance, run_id) + "\ndaemon log:\n" + daemon.log_tail()
        time.sleep(0.1)
    killed = kill_run_worker(instance, run_id, **VICTIMS[victim], daemon=daemon)
    at_kill = prod_training.read_checkpoint(checkpoint)["step"]
    assert at_kill < prod_training.TRAINING_STEPS, "the training finished before it was killed"

    failed = wait_for_run(instance, run_id, timeout=120, daemon=daemon)
    assert failed.status == dg.DagsterRunStatus.FAILURE, describe_run(instance, run_id)

    retry = wait_for_retry(instance, run_id, timeout=120, daemon=daemon)
    assert retry.tags["dagster/parent_run_id"] == run_id and retry.tags["dagster/retry_number"] == "1"
    retry = wait_for_run(instance, retry.run_id, timeout=180, daemon=daemon)
    assert retry.status == dg.DagsterRunStatus.SUCCESS, describe_run(instance, retry.run_id)

    materialization = instance.get_latest_materialization_event(dg.AssetKey(TRAINING_STEP))
    assert materialization.run_id == retry.run_id
    resumed_from = materialization.asset_materialization.metadata["resumed_from_step"].value
    assert at_kill <= resumed_from < prod_training.TRAINING_STEPS

    # The same weights as a training nobody interrupted.
    result = json.loads((out / "result.json").read_text())
    reference = prod_training.train(tmp_path / "reference.npz")
    assert reference["resumed_from_step"] == 0
    np.testing.assert_array_equal(result["weights"], reference["weights"])
    print(f"retry test ({victim}): killed pids {killed} at step {at_kill}; retry resumed from "
          f"{resumed_from}; {time.time() - t0:.1f}s after the daemon was up")
