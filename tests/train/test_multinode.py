"""Training across nodes from Dagster, on this machine: two torchrun agents meeting at a c10d
rendezvous on loopback, and DeepSpeed's runner reaching two "nodes" (``localhost`` and
``127.0.0.1``) over real SSH. Both are started by an asset through the TrainingLauncher and report
through Pipes from rank 0, wherever it runs; the ZeRO-3 run exports the model gathered onto rank 0
one parameter at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch

from lmforge.errors import LmforgeError
from resources import TrainingLauncher
from tests.train.run_worker import TrainingRun, alive, processes_with
from tests.train.test_distributed import STEPS, TOLERANCE, _config, _losses, single_process_run  # noqa: F401


def _materialize(launcher: TrainingLauncher, module: str, config: dict, where: Path):
    """Materialize a one-asset graph that runs ``module`` through ``launcher``; the result and the
    run's log lines."""

    @dg.asset
    def trained(context, launcher: TrainingLauncher):
        return launcher.run(context, module, config, where / "config.json")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([trained], resources={"launcher": launcher}, instance=instance,
                            raise_on_error=False)
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, logs


def _metadata(result) -> dict:
    (mat,) = result.asset_materializations_for_node("trained")
    return {k: v.value for k, v in mat.metadata.items()}


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# the argv and the environment of every backend


def test_commands_of_every_backend(tmp_path):
    cfg = tmp_path / "c.json"
    script = ["-m", "lmforge.train.pretrain", "--config", str(cfg)]

    def commands(**settings):
        return TrainingLauncher(**settings).commands("lmforge.train.pretrain", cfg, "run-1")

    assert commands() == [[sys.executable, *script]]
    (one,) = commands(launcher="torchrun", nproc=4)
    assert one == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                   *script]
    # Two agents here (one machine split in two nodes): the same argv twice, a loopback rendezvous.
    first, second = commands(launcher="torchrun", nnodes=2, nproc=3)
    assert first == second and first[-4:] == script
    endpoint = next(a for a in first if a.startswith("--rdzv-endpoint=")).split("=", 1)[1]
    assert endpoint.startswith("127.0.0.1:") and int(endpoint.rsplit(":", 1)[1]) > 0
    assert {"--nnodes=2", "--nproc-per-node=3", "--rdzv-backend=c10d", "--rdzv-id=run-1",
            "--max-restarts=0"} <= set(first) and "--standalone" not in first
    (given,) = commands(launcher="torchrun", rdzv_endpoint="head:1234", rdzv_id="fixed")
    assert "--rdzv-endpoint=head:1234" in given and "--rdzv-id=fixed" in given and "--nnodes=1" in given

    (ds,) = commands(launcher="deepspeed", nproc=8)
    assert ds[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"] and "--num_gpus=8" in ds
    assert not any(a.startswith(("--hostfile", "--master_addr")) for a in ds)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=8\nnode-b slots=8  # the second\n")
    (ds,) = commands(launcher="deepspeed", nproc=8, hostfile=str(hostfile))
    assert {f"--hostfile={hostfile}", "--master_addr=node-a", "--master_port=29500", "--no_ssh_check",
            "--no_local_rank", "--module"} <= set(ds) and ds[-3:] == script[1:]
    (ds,) = commands(launcher="deepspeed", hostfile=str(hostfile), nnodes=2, rdzv_endpoint="10.0.0.1:7000")
    assert {"--num_nodes=2", "--master_addr=10.0.0.1", "--master_port=7000"} <= set(ds)

    # Slurm and Kubernetes: the one argv every node runs, meeting at the job's first node.
    (node,) = commands(launcher="slurm", nnodes=4, nproc=8)
    assert {"--nnodes=4", "--nproc-per-node=8", "--rdzv-endpoint=$MASTER_ADDR:29400"} <= set(node)
    (node,) = commands(launcher="k8s", nnodes=2, rdzv_endpoint="ignored:5555")
    assert "--rdzv-endpoint=$MASTER_ADDR:5555" in node
    from lmforge.train import k8s, slurm

    # On a Slurm node the batch script's shell expands $MASTER_ADDR, and nothing else.
    words = " ".join(slurm.shell_word(a) for a in node)
    shell = subprocess.run(["bash", "-c", f'MASTER_ADDR=node-7; printf "%s\\n" {words}'],
                           capture_output=True, text=True, check=True)
    assert shell.stdout.splitlines() == [a.replace("$MASTER_ADDR", "node-7") for a in node]
    (_, job) = k8s.render_job(node, {"HF_HUB_OFFLINE": "1"}, name="lmforge-run1", image="img:1",
                              nnodes=2, nproc_per_node=1)
    assert "--rdzv-endpoint=$(MASTER_ADDR):5555" in job["spec"]["template"]["spec"]["containers"][0]["command"]

    for bad, said in [(dict(nnodes=2), "the python launcher runs one process"),
                      (dict(launcher="torchrun", nnodes=2, rdzv_endpoint="no-port"), "not host:port"),
                      (dict(launcher="deepspeed", nnodes=2), "needs a hostfile"),
                      (dict(launcher="torchrun", hostfile=str(hostfile)), "needs the deepspeed launcher"),
                      (dict(launcher="deepspeed", hostfile=str(tmp_path / "none")), "cannot read hostfile")]:
        with pytest.raises(LmforgeError, match=said) as e:
            commands(**bad)
        assert "\n" not in str(e.value)


def test_the_environment_of_the_ranks(tmp_path):
    ranks = {"HF_HUB_OFFLINE": "1", "DAGSTER_PIPES_CONTEXT": "eJyrVkrLz1eyUlDKSs3JUSoA",
             "LMFORGE_ERROR_FILE": str(tmp_path / "my run.errors"), "MARK": "a b,c=d"}
    # On this machine: everything, and the pid whose end ends the training.
    env = TrainingLauncher(launcher="torchrun", nnodes=2).local_env(ranks, tmp_path / "ds_env")
    assert env["LMFORGE_LAUNCHER_PID"] == str(os.getpid()) and env["PATH"] == os.environ["PATH"]
    assert ranks.items() <= env.items() and "DS_ENV_FILE" not in env and not (tmp_path / "ds_env").exists()
    # Over ssh, DeepSpeed's runner exports the file DS_ENV_FILE names (absolute: found from any
    # working directory) to every node, in the form its runner parses.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=1\nb slots=1\n")
    launcher = TrainingLauncher(launcher="deepspeed", hostfile=str(hostfile), ssh_args=["-p", "2222"])
    env = launcher.local_env(ranks, tmp_path / "ds_env")
    assert env["DS_ENV_FILE"] == str((tmp_path / "ds_env").resolve()) and env["PDSH_SSH_ARGS_APPEND"] == "-p 2222"
    assert "LMFORGE_LAUNCHER_PID" not in env
    assert (tmp_path / "ds_env").stat().st_mode & 0o077 == 0
    lines = (tmp_path / "ds_env").read_text().splitlines()
    assert dict(line.split("=", 1) for line in lines) == ranks
    for value in ("two\nlines", 'a "quote"', "$HOME", "`id`", "back\\slash"):
        with pytest.raises(LmforgeError, match="cannot travel through DeepSpeed"):
            launcher.local_env({**ranks, "BAD": value}, tmp_path / "ds_env2")
    assert not (tmp_path / "ds_env2").exists()
    with pytest.raises(LmforgeError, match="holds a space"):
        TrainingLauncher(launcher="deepspeed", hostfile=str(hostfile),
                         ssh_args=["-i", "/my keys/id"]).local_env(ranks, tmp_path / "ds_env3")
    assert not (tmp_path / "ds_env3").exists()


# A launcher agent: starts a "rank" in a session of its own (as torchrun does), prints both pids.
AGENT = """
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(rank.pid, flush=True)
time.sleep(120)
"""


def test_a_local_job_ends_every_process_it_started(tmp_path):
    """Cancelled (the step interrupted), a job ends its agents and the ranks they started in
    sessions of their own; one failing agent ends the others (they would wait for it)."""
    from lmforge.train.launch import LocalJob

    pid_files = [tmp_path / f"agent{i}" for i in range(2)]
    job = LocalJob([[sys.executable, "-c", AGENT.replace("print(rank.pid, flush=True)",
                                                         f"open({str(p)!r}, 'w').write(str(rank.pid))")]
                    for p in pid_files], os.environ)
    deadline = time.time() + 30
    while not all(p.exists() and p.read_text() for p in pid_files) and time.time() < deadline:
        time.sleep(0.1)
    ranks = [int(p.read_text()) for p in pid_files]
    agents = [p.pid for p in job.procs]
    assert job.poll() is None and all(map(alive, ranks + agents))
    job.cancel(grace=2)  # the agents do not pass SIGTERM on: their ranks get SIGKILL after 2 s
    assert not any(map(alive, ranks + agents))

    job = LocalJob([[sys.executable, "-c", "import time; time.sleep(120)"],
                    [sys.executable, "-c", "import sys; sys.exit(3)"]], os.environ)
    deadline = time.time() + 30
    while (code := job.poll()) is None and time.time() < deadline:
        time.sleep(0.1)
    assert code == 3 and not alive(job.procs[0].pid)


@pytest.mark.slow
def test_two_torchrun_agents_through_the_asset_follow_the_single_process_run(
        single_process_run, shards_dir, tokenizer_dir, tmp_path):
    ref_dir, ref = single_process_run
    out = tmp_path / "run"
    cfg = _config(shards_dir, tokenizer_dir, out, grad_accum=1, zero_stage=3)
    launcher = TrainingLauncher(launcher="torchrun", nnodes=2, nproc=1,
                                env={"DS_ACCELERATOR": "cpu", "LMFORGE_TEST_MARK": "two-agents"})
    result, logs = _materialize(launcher, "lmforge.train.pretrain", cfg.model_dump(mode="json"), tmp_path)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert sum("launched (torchrun" in line and "--nnodes=2" in line and "--rdzv-backend=c10d" in line
               for line in logs) == 2, logs
    # Rank 0's progress lines arrive in the run's logs, its figures in the materialization.
    assert any(line.startswith(f"step {STEPS}/{STEPS} loss") for line in logs), logs
    meta = _metadata(result)
    assert meta["world_size"] == 2 and meta["zero_stage"] == 3 and meta["engine"] == "deepspeed"
    ours, theirs = _losses(out), _losses(ref_dir)
    assert len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < TOLERANCE, (ours, theirs)
    assert meta["final_loss"] == ours[-1] and abs(meta["val_loss"] - ref["val_loss"]) < TOLERANCE
    # The export (gathered onto rank 0 parameter by parameter) is exactly the weights ZeRO-3 holds
    # in its partitions, as DeepSpeed's own consolidation reads them from the checkpoint...
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    exported = _state(out / "model")
    tag = (out / "checkpoints" / "latest").read_text().strip()
    partitions = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag=tag)
    assert set(exported) <= set(partitions)
    assert all(torch.equal(exported[k], partitions[k]) for k in exported)
    # ... and the single-process model's weights, to the same tolerance as the losses.
    single = _state(ref_dir / "model")
    assert set(exported) == set(single)
    assert max((exported[k] - single[k]).abs().max().item() for k in single) < TOLERANCE
    # Nothing of the run's own files is left beside its config.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---------------------------------------------------------------------------------------------
# DeepSpeed's runner over real SSH on loopback


@pytest.fixture
def loopback_sshd(tmp_path_factory):
    """An sshd on a free loopback port (its own host key, a temporary authorized key for this
    user), and the ssh options that reach it; skips where sshd, ssh or pdsh are not installed."""
    tools = {t: shutil.which(t) or (f"/usr/sbin/{t}" if os.path.exists(f"/usr/sbin/{t}") else None)
             for t in ("sshd", "ssh", "ssh-keygen", "pdsh")}
    missing = [t for t, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"needs Debian's openssh-server and pdsh ({', '.join(missing)} not installed)")
    if os.geteuid() != 0:
        pytest.skip("sshd's privilege separation needs root here")
    from lmforge.train.launch import free_port

    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "id"):
        subprocess.run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen([tools["sshd"], "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=open(d / "sshd.log", "w"))
    args = ["-p", str(port), "-i", str(d / "id"), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    deadline = time.time() + 15
    while subprocess.run([tools["ssh"], *args, "127.0.0.1", "true"], capture_output=True).returncode:
        if sshd.poll() is not None or time.time() > deadline:
            sshd.kill()
            pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
        time.sleep(0.2)
    try:
        yield args
    finally:
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(timeout=10)


@pytest.mark.slow
def test_deepspeed_ranks_over_ssh_see_the_pipes_environment(loopback_sshd, tmp_path):
    """Two nodes of a DeepSpeed hostfile, ``localhost`` and ``127.0.0.1``, reached through pdsh
    and ssh (whose login shells have none of this process's environment): every rank sees the
    Pipes variables, HF_HUB_OFFLINE, the error file and the launcher's env; rank 0 alone reports
    into the materialization."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    from lmforge.train.launch import free_port

    launcher = TrainingLauncher(launcher="deepspeed", hostfile=str(hostfile), ssh_args=loopback_sshd,
                                rdzv_endpoint=f"127.0.0.1:{free_port()}",
                                env={"DS_ACCELERATOR": "cpu", "LMFORGE_TEST_MARK": "over ssh"})
    names = ["DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", "HF_HUB_OFFLINE", "LMFORGE_ERROR_FILE",
             "LMFORGE_TEST_MARK", "LMFORGE_LAUNCHER_PID", "SSH_CONNECTION"]
    probe = tmp_path / "probe"
    probe.mkdir()
    result, logs = _materialize(launcher, "tests.train.multinode_probe",
                                {"names": names, "out_dir": str(probe)}, probe)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    seen = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for env in seen:
        assert env["SSH_CONNECTION"], "the rank was not started over ssh"
        assert env["DAGSTER_PIPES_CONTEXT"] and env["DAGSTER_PIPES_MESSAGES"]
        assert env["HF_HUB_OFFLINE"] == os.environ.get("HF_HUB_OFFLINE", "1")
        assert env["LMFORGE_TEST_MARK"] == "over ssh" and env["LMFORGE_ERROR_FILE"].endswith(".errors")
        assert env["LMFORGE_LAUNCHER_PID"] is None  # another machine's pid means nothing there
    assert _metadata(result) == {"world_size": 2, "reporting_rank": 0}
    assert any(line.startswith("rank 0 of 2") for line in logs), logs
    # The run's context file for DeepSpeed, its messages and its config are gone.
    assert sorted(p.name for p in probe.iterdir()) == ["rank0.json", "rank1.json"]
    # (A two-node pretraining over this path trains like the torchrun one above; it is left out
    # to keep the suite's time: each DeepSpeed launch over ssh costs ~50 s on two cores.)


# ---------------------------------------------------------------------------------------------
# an interrupted step ends what it started

@pytest.mark.slow
def test_interrupting_the_step_ends_both_agents_and_their_ranks(shards_dir, tokenizer_dir, tmp_path):
    """The run worker gets SIGINT, as Dagster's run termination sends it: the launcher ends the
    two torchrun agents' process groups and the ranks, which torchrun starts in sessions of their
    own."""
    cfg = _config(shards_dir, tokenizer_dir, tmp_path / "run", max_steps=100_000, warmup_steps=1)
    settings = {"launcher": "torchrun", "nnodes": 2, "env": {"DS_ACCELERATOR": "cpu"},
                "terminate_timeout_s": 10}
    run = TrainingRun(cfg.model_dump_json(), tmp_path, settings)
    try:
        run.wait_training()
        started = processes_with(str(tmp_path / "config."))
        assert len(started) >= 4, "expected two agents and two ranks"  # + their helper processes
        result = run.interrupt()
    finally:
        run.close()
    assert result["success"] is False, result["stderr"][-3000:]
    assert any(line.startswith("ending the training processes") for line in run.logs())
    deadline = time.monotonic() + 30
    while processes_with(str(tmp_path / "config.")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_with(str(tmp_path / "config.")), "a training process outlived the step"
