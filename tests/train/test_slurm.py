"""The Slurm backend against a real cluster on this host (tests/slurm_cluster.py: a controller and
two nodes): a job's output streams while it runs, its exit code comes back, a cancelled job's
processes are gone, one agent runs per node and finds the first, and the argv and environment
reach the nodes exactly as given (only the rendezvous variables expand). Through Dagster: an
asset trains on both nodes and reports through Pipes; terminating its run cancels the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from lmforge.errors import LmforgeError
from lmforge.train import slurm
from lmforge.train.telemetry import WATCH_PID_ENV
from resources import TrainingLauncher
from tests.train.run_worker import TrainingRun, alive, processes_with
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

# Prints its argv and chosen variables, then counts: the lines a progress log would have.
COUNTER = textwrap.dedent("""
    import json, os, sys, time
    print(json.dumps({"argv": sys.argv[1:], "node_rank": os.environ.get("NODE_RANK"),
                      "master": os.environ.get("MASTER_ADDR"),
                      "odd": os.environ.get("LMFORGE_TEST_ODD")}), flush=True)
    steps, pause, code = int(os.environ["STEPS"]), float(os.environ["PAUSE"]), int(os.environ["CODE"])
    open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
    for i in range(steps):
        print(f"step {i}", flush=True)
        time.sleep(pause)
    sys.exit(code)
""")
ODD = "it's \"quoted\" $(touch PWNED) `touch PWNED` $HOME\nsecond line; rm -rf /nonexistent"


def _wait(job: slurm.SlurmJob, timeout: float = 90) -> tuple[int, list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = job.poll()
        lines += job.read_new_log_lines()
        if code is not None:
            return code, lines
        time.sleep(0.2)
    job.cancel()
    raise AssertionError(f"job {job.id} did not end in {timeout} s; log: {lines}")


def _submit(tmp_path: Path, *, steps: int, pause: float, code: int, extra_argv=(),
            **kwargs) -> slurm.SlurmJob:
    env = {"STEPS": str(steps), "PAUSE": str(pause), "CODE": str(code),
           "PID_FILE": str(tmp_path / "pid"), "LMFORGE_TEST_ODD": ODD}
    return slurm.submit([sys.executable, "-c", COUNTER, *extra_argv], env, nodes=1,
                        ntasks_per_node=1, workdir=tmp_path, log_path=tmp_path / "job.log",
                        **kwargs)


# ------------------------------------------------------------------ without a cluster


def test_argv_items_expand_only_the_rendezvous_variables(tmp_path):
    """What bash makes of each word: $MASTER_ADDR, ${NODE_RANK} and $SLURM_* expand; command
    substitution, other variables and quotes stay literal."""
    argv = ["--rdzv-endpoint=$MASTER_ADDR:29500", "--node-rank=${NODE_RANK}", "$SLURM_NNODES",
            "$(touch PWNED)", "`touch PWNED`", "$HOME", "it's", 'a "b"', "", "$MASTER_ADDRESS",
            "$SLURM_nodeid", "*", "a\nb"]
    line = " ".join(slurm.shell_word(a) for a in argv)
    out = subprocess.run(["bash", "-c", f'printf "%s\\0" {line}'], capture_output=True, cwd=tmp_path,
                         env={"PATH": os.environ["PATH"], "MASTER_ADDR": "node-a", "NODE_RANK": "3",
                              "SLURM_NNODES": "2", "HOME": "/home/x", "MASTER_ADDRESS": "no"},
                         check=True)
    words = out.stdout.decode().split("\0")[:-1]
    assert words == ["--rdzv-endpoint=node-a:29500", "--node-rank=3", "2", *argv[3:]]
    assert not (tmp_path / "PWNED").exists()


def test_bad_input_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(LmforgeError, match="not a shell name"):
        slurm.submit(["true"], {"A-B": "1"}, nodes=1, ntasks_per_node=1, workdir=tmp_path,
                     log_path=tmp_path / "log")
    with pytest.raises(LmforgeError, match="must be >= 1"):
        slurm.submit(["true"], {}, nodes=0, ntasks_per_node=1, workdir=tmp_path,
                     log_path=tmp_path / "log")
    with pytest.raises(LmforgeError, match="command to run is empty"):
        slurm.submit([], {}, nodes=1, ntasks_per_node=1, workdir=tmp_path, log_path=tmp_path / "l")
    with pytest.raises(LmforgeError, match="does not exist"):
        slurm.submit(["true"], {}, nodes=1, ntasks_per_node=1, workdir=tmp_path / "no",
                     log_path=tmp_path / "log")
    with pytest.raises(LmforgeError, match="which sbatch replaces"):
        slurm.submit(["true"], {}, nodes=1, ntasks_per_node=1, workdir=tmp_path,
                     log_path=tmp_path / "log-%j")
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Slurm's commands
    with pytest.raises(LmforgeError, match="sbatch not found on PATH") as e:
        slurm.submit(["true"], {}, nodes=1, ntasks_per_node=1, workdir=tmp_path,
                     log_path=tmp_path / "log")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ on a single-host cluster


@pytest.mark.slow
def test_a_job_streams_its_lines_and_reports_success(slurm_cluster, tmp_path):
    job = _submit(tmp_path, steps=6, pause=0.5, code=0,
                  extra_argv=["--master=$MASTER_ADDR", "--rank=$NODE_RANK", "$HOME", "$(id)"])
    # Slurm keeps the script (with the environment): nothing of it is left in the run directory.
    assert not [p for p in tmp_path.iterdir() if p.name != "job.log"]
    script = slurm_cluster.run("scontrol", "write", "batch_script", job.id, "-")
    assert "export LMFORGE_TEST_ODD=" in script.stdout and "exec srun" in script.stdout
    seen_while_running: list[str] = []
    deadline = time.monotonic() + 60
    while job.poll() is None and time.monotonic() < deadline:
        seen_while_running += job.read_new_log_lines()
        time.sleep(0.2)
    code, rest = _wait(job)
    lines = seen_while_running + rest
    assert code == 0 and job.state == "COMPLETED"
    assert any(ln.startswith("step ") for ln in seen_while_running), "no line before the end"
    assert [ln for ln in lines if ln.startswith("step ")] == [f"step {i}" for i in range(6)]
    info = json.loads(next(ln for ln in lines if ln.startswith("{")))
    addr = slurm_cluster.node_addr
    assert info["argv"] == [f"--master={addr}", "--rank=0", "$HOME", "$(id)"]
    assert info["node_rank"] == "0" and info["master"] == addr
    assert info["odd"] == ODD  # exported exactly, not evaluated
    assert not (tmp_path / "PWNED").exists()
    assert job.read_new_log_lines() == []


NODE_REPORT = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
               "('NODE_RANK', 'MASTER_ADDR', 'SLURMD_NODENAME', 'SLURM_NNODES', 'ON_EVERY_NODE')}))")


@pytest.mark.slow
def test_one_agent_runs_on_each_node_and_all_find_the_first(slurm_cluster, tmp_path):
    job = slurm.submit([sys.executable, "-c", NODE_REPORT], {"ON_EVERY_NODE": "yes"},
                       nodes=2, ntasks_per_node=1, workdir=tmp_path, log_path=tmp_path / "log")
    code, lines = _wait(job)
    assert code == 0, lines
    seen = sorted((json.loads(ln) for ln in lines), key=lambda d: d["NODE_RANK"])
    assert [(d["NODE_RANK"], d["SLURMD_NODENAME"]) for d in seen] == [
        ("0", slurm_cluster.nodes[0]), ("1", slurm_cluster.nodes[1])]
    assert {(d["MASTER_ADDR"], d["SLURM_NNODES"], d["ON_EVERY_NODE"]) for d in seen} == {
        (slurm_cluster.node_addr, "2", "yes")}


@pytest.mark.slow
def test_a_failing_job_gives_its_code(slurm_cluster, tmp_path):
    job = _submit(tmp_path, steps=1, pause=0, code=3)
    code, lines = _wait(job)
    assert code == 3 and job.state == "FAILED"
    assert "step 0" in lines


@pytest.mark.slow
def test_cancel_ends_the_job_and_its_processes(slurm_cluster, tmp_path):
    job = _submit(tmp_path, steps=600, pause=0.5, code=0)
    deadline = time.monotonic() + 60
    lines: list[str] = []
    while "step 1" not in lines and time.monotonic() < deadline:
        assert job.poll() is None
        lines += job.read_new_log_lines()
        time.sleep(0.2)
    pid = int((tmp_path / "pid").read_text())
    assert alive(pid)
    job.cancel()
    code, _ = _wait(job)
    assert code == 128 + 15 and job.state == "CANCELLED"
    assert slurm_cluster.job_fields(job.id)["JobState"] == "CANCELLED"
    assert job.id not in slurm_cluster.queue()
    assert not alive(pid), "the job's process outlived its cancellation"
    job.cancel()  # again: nothing to do


@pytest.mark.slow
def test_a_rejected_or_forgotten_job_is_one_line(slurm_cluster, tmp_path):
    with pytest.raises(LmforgeError, match="sbatch refused the job: .*[Ii]nvalid partition") as e:
        _submit(tmp_path, steps=1, pause=0, code=0, partition="no-such-partition")
    assert "\n" not in str(e.value)
    # A job the controller no longer knows (ended over MinJobAge ago), without accounting.
    forgotten = slurm.SlurmJob("999999", tmp_path / "log")
    with pytest.raises(LmforgeError, match="unknown to the controller .* and to sacct") as e:
        forgotten.poll()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ through Dagster


def _pretrain_config(shards_dir, tokenizer_dir, out: Path, steps: int) -> dict:
    from lmforge.train.pretrain import PretrainConfig

    return PretrainConfig(data_dir=str(shards_dir), tokenizer_dir=str(tokenizer_dir),
                          out_dir=str(out), seq_len=32, micro_batch=4, max_steps=steps,
                          warmup_steps=1, eval_batches=1, log_every=1,
                          device="cpu").model_dump(mode="json")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The launcher resource's settings for this cluster: both nodes, one rank each, gloo on the CPU,
# a rendezvous port of its own (other tests may run torchrun at the same time). The training
# also ends if this test process dies: a killed test stops the controller, and no one would
# cancel the job.
def _launcher_settings() -> dict:
    return {"launcher": "slurm", "nnodes": 2, "nproc": 1, "rdzv_endpoint": f"x:{_free_port()}",
            "env": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
                    WATCH_PID_ENV: str(os.getpid())}}


@pytest.mark.slow
def test_the_asset_trains_on_two_slurm_nodes_and_its_progress_streams_into_the_run(
        slurm_cluster, shards_dir, tokenizer_dir, tmp_path):
    cfg = _pretrain_config(shards_dir, tokenizer_dir, tmp_path / "run", steps=3)

    @dg.asset
    def trained(context, launcher: TrainingLauncher):
        return launcher.run(context, "lmforge.train.pretrain", cfg, tmp_path / "config.json")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([trained], resources={"launcher": TrainingLauncher(**_launcher_settings())},
                            instance=instance, raise_on_error=False)
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success, [e.message for e in result.all_events if e.is_failure] + logs[-20:]
    (launched,) = [line for line in logs if line.startswith("launched (slurm ")]
    job_id = launched.split()[2].rstrip("):")
    assert slurm_cluster.job_fields(job_id)["JobState"] == "COMPLETED"
    # Rank 0's progress reaches the run (through Pipes, from the node), and so does every line of
    # the job's output file (the agent's and the ranks' stdout and stderr).
    assert [ln for ln in logs if ln.startswith("step ") and " loss " in ln][-1].startswith("step 3/3")
    (job_log,) = tmp_path.glob("config.*.log")
    out_lines = _pieces([job_log.read_text()])  # tqdm's \r-separated updates compared one by one
    assert out_lines and out_lines <= _pieces(logs), (out_lines, logs)
    (mat,) = result.asset_materializations_for_node("trained")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["steps"] == 3 and meta["world_size"] == 2  # a rank on each node
    assert meta["final_loss"] == json.loads((tmp_path / "run" / "summary.json").read_text())["final_loss"]


def _pieces(texts: list[str]) -> set[str]:
    return {p for t in texts for p in t.replace("\r", "\n").split("\n") if p.strip()}


@pytest.mark.slow
def test_terminating_the_dagster_run_cancels_the_slurm_job(slurm_cluster, shards_dir,
                                                            tokenizer_dir, tmp_path):
    """The run worker gets SIGINT, as Dagster's run termination sends it: the step is
    interrupted, the launcher cancels the job, and its processes end on the node."""
    cfg = _pretrain_config(shards_dir, tokenizer_dir, tmp_path / "run", steps=100_000)
    run = TrainingRun(json.dumps(cfg), tmp_path, _launcher_settings())
    try:
        logs = run.wait_training()
        (launched,) = [line for line in logs if line.startswith("launched (slurm ")]
        job_id = launched.split()[2].rstrip("):")
        assert slurm_cluster.job_fields(job_id)["JobState"] == "RUNNING"
        ranks = processes_with(str(tmp_path / "config."))
        # on each node: bash -c, the torchrun agent and its rank
        assert len(ranks) >= 6, "the training processes were not found"
        result = run.interrupt()
    finally:
        run.close()
    assert result["success"] is False, result["stderr"][-3000:]
    instance, run_id = run.instance, run.run_id
    run = instance.get_run_by_id(run_id)
    # In-process execution reports the interrupted step as failed (a deployment's run
    # termination marks the run CANCELED; either way the step was interrupted, not crashed).
    assert run.status == dg.DagsterRunStatus.FAILURE, run.status
    (failure,) = [e.dagster_event.step_failure_data.error for e in instance.all_logs(run_id)
                  if e.dagster_event and e.dagster_event.is_step_failure]
    assert failure.cls_name == "DagsterExecutionInterruptedError", failure.message
    logs = [e.user_message for e in instance.all_logs(run_id)]
    assert f"ending the training processes (job {job_id})" in logs
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job_id in slurm_cluster.queue():
        time.sleep(0.5)
    assert slurm_cluster.job_fields(job_id)["JobState"] == "CANCELLED"
    assert job_id not in slurm_cluster.queue()
    assert not [p for p in ranks if alive(p)], "a training process outlived the cancelled job"


