"""A real single-host Slurm cluster for the tests (Debian's ``slurm-wlm`` and ``munge``).

`running_slurm()` / the `slurm_cluster` fixture (one per module): a munge key made for the test,
``munged`` on a private socket, ``slurmctld -D`` and one ``slurmd -D -N <node>`` per node from a
generated slurm.conf: this host is the controller and two nodes (``node1``, ``node2``, each with
half of its CPUs, both at 127.0.0.1 on ports of their own), partition ``debug``, no cgroups, no
accounting. Everything is in a private temporary directory on free loopback ports, the daemons
are children of the test process and die with it. ``SLURM_CONF`` points the client commands
(sbatch, scontrol, ...) at it while the fixture is in use. Where a daemon cannot start, the
fixture skips with that daemon's own error.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from services import _die_with_parent, _free_loopback_port, _tail

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
SLURM_PREFIX = "lmforge-slurm-"


class SlurmUnavailable(Exception):
    """The machine cannot run the cluster (a daemon missing or refusing to start)."""


def slurm_skip_reason() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"Slurm/munge not installed ({', '.join(missing)} missing: "
                "apt-get install slurm-wlm munge)")
    return None


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    nodes: list[str]
    cpus_per_node: int
    node_addr: str = "127.0.0.1"

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                              env={**os.environ, **self.env()})

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields of a job the controller still knows."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        assert out.returncode == 0, out.stderr
        return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)

    def queue(self) -> list[str]:
        """Ids of the jobs that are pending, running or still completing."""
        out = self.run("squeue", "-h", "-o", "%i")
        assert out.returncode == 0, out.stderr
        return out.stdout.split()


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent(signal.SIGTERM))


def _last_error(log: Path) -> str:
    """What a daemon said last that explains a failure: its fatal line, else its last error."""
    lines = _tail(log, 4000).splitlines()
    fatal = [ln for ln in lines if "fatal" in ln.lower()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (fatal or errors or lines or ["(no output)"])[-1].strip()


def _sweep_dead_clusters(older_than: float = 600) -> None:
    """Delete what a killed test process left: cluster directories whose daemons are gone."""
    for root in Path(tempfile.gettempdir()).glob(SLURM_PREFIX + "*"):
        try:
            if time.time() - root.stat().st_mtime < older_than:
                continue
            pids = [int(p.read_text().split()[0]) for p in root.glob("*.pid")]
        except (OSError, ValueError, IndexError):
            continue
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_slurm(timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd for one host; raise SlurmUnavailable with the daemon's
    own error when one cannot start; cancel every job and stop everything afterwards."""
    reason = slurm_skip_reason()
    if reason:
        raise SlurmUnavailable(reason)
    _sweep_dead_clusters()
    root = Path(tempfile.mkdtemp(prefix=SLURM_PREFIX))
    root.chmod(0o755)  # job steps (slurmstepd) look up the munge socket below it
    host = socket.gethostname().split(".")[0]
    nodes = ["node1", "node2"]
    cpus = max(1, (os.cpu_count() or 1) // len(nodes))
    user = getpass.getuser()
    keydir, sockdir = root / "munge-key", root / "munge"
    keydir.mkdir(mode=0o700)
    sockdir.mkdir(mode=0o755)
    (root / "state").mkdir()
    for node in nodes:
        (root / f"spool-{node}").mkdir()
    key = keydir / "munge.key"
    with open(key, "wb") as f:  # what mungekey --create writes: random bytes, private
        os.fchmod(f.fileno(), 0o600)
        f.write(os.urandom(1024))
    munge_socket = sockdir / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=lmforgetest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_loopback_port()}",
        f"SlurmUser={user}", f"SlurmdUser={user}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge_socket}",
        "MpiDefault=none", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none", "SchedulerType=sched/builtin", "ReturnToService=2",
        "KillWait=5", "MinJobAge=300", "MailProg=/bin/true",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool-%n'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd-%n.log'}",
        # Two nodes on this host: slurmd -N <name> each, on a port of its own.
        *(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 "
          f"Port={_free_loopback_port()} CPUs={cpus} RealMemory=500 State=UNKNOWN"
          for node in nodes),
        f"PartitionName=debug Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root=root, conf=conf, nodes=nodes, cpus_per_node=cpus)
    procs: list[tuple[str, subprocess.Popen]] = []
    saved_conf = os.environ.get("SLURM_CONF")
    try:
        daemons = [
            ("munged", [shutil.which("munged"), "--foreground", "--force",
                        f"--socket={munge_socket}", f"--key-file={key}",
                        f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
                        f"--seed-file={keydir / 'munged.seed'}"]),
            ("slurmctld", [shutil.which("slurmctld"), "-D", "-f", str(conf)]),
            *((f"slurmd-{node}", [shutil.which("slurmd"), "-D", "-N", node, "-f", str(conf)])
              for node in nodes),
        ]
        for name, argv in daemons:
            log = root / f"{name}.out"
            procs.append((name, _start(argv, log, env)))
            if name == "munged":
                _wait(lambda: munge_socket.exists(), procs, root, timeout, "munged socket")
        _wait(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%T").stdout.split() == ["idle"] * 2,
              procs, root, timeout, "both nodes idle in sinfo")
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        if saved_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved_conf
        if any(name.startswith("slurmd") and p.poll() is None for name, p in procs):
            _cancel_all(cluster)
        for _name, p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _wait(ready, procs: list[tuple[str, subprocess.Popen]], root: Path, timeout: float,
          what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with code {p.returncode}: "
                                       f"{_last_error(root / f'{name}.out')}")
        if ready():
            return
        time.sleep(0.2)
    said = "; ".join(f"{name} says {_last_error(root / f'{name}.out')!r}" for name, _ in procs)
    raise SlurmUnavailable(f"no {what} after {timeout:.0f} s: {said}")


def _cancel_all(cluster: SlurmCluster, timeout: float = 60) -> None:
    """Cancel this cluster's jobs and wait until their processes are gone: slurmstepd outlives
    slurmd, so stopping the daemons alone would leave a test's job running."""
    cluster.run("scancel", "--user", getpass.getuser())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run("squeue", "-h", "-o", "%i")
        if out.returncode != 0 or not out.stdout.split():
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One cluster per test module (it starts in a few seconds)."""
    try:
        with running_slurm() as cluster:
            yield cluster
    except SlurmUnavailable as e:
        pytest.skip(f"cannot start a single-host Slurm here: {e}")
