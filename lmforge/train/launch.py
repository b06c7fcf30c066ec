"""The command lines that start a training process: one process, torchrun, or the DeepSpeed launcher.

The Dagster launcher (``resources/launcher.py``) starts these argvs on this machine
(:class:`LocalJob`), through DeepSpeed's runner over ssh, or on every node of a Slurm or
Kubernetes job; the CLI's ``--nproc N`` runs one itself. Every training module accepts
``--config PATH`` (a JSON dump of its config class), so the launched processes read exactly the
configuration the caller wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

LAUNCHERS = ("python", "torchrun", "deepspeed")
# The ports used when only the host is known: torchrun's c10d rendezvous default, and the master
# port DeepSpeed's runner defaults to.
RDZV_PORT = 29400
DEEPSPEED_PORT = 29500


def free_port() -> int:
    """A TCP port free on this machine's loopback now (for a rendezvous on this machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (a rendezvous or master address) as ``(host, port)``; anything else is one line."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rendezvous endpoint {endpoint!r} is not host:port")
    return host, int(port)


def command(module: str, config_path: str | os.PathLike, nproc: int = 1,
            launcher: str = "torchrun", hostfile: str | None = None, *, nnodes: int = 1,
            rdzv_endpoint: str | None = None, rdzv_id: str | None = None) -> list[str]:
    """argv that runs ``python -m module --config config_path`` on ``nproc`` processes per node.

    ``python`` is a single process (``nproc`` must be 1). ``torchrun`` is one agent: alone
    (``--standalone``) for one node without an endpoint, else one of ``nnodes`` agents that meet
    at the c10d rendezvous ``rdzv_endpoint`` (``host:port``) under ``rdzv_id`` and get their node
    ranks from it. ``deepspeed`` is DeepSpeed's runner, which reads ``hostfile`` for several nodes
    and starts them over pdsh/ssh; ``rdzv_endpoint`` is then its master address.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; choose one of {LAUNCHERS}")
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc and nnodes must be >= 1, got {nproc} and {nnodes}")
    if hostfile and launcher != "deepspeed":
        raise ValueError("a hostfile (several nodes) needs the deepspeed launcher")
    if rdzv_endpoint:
        host, port = parse_endpoint(rdzv_endpoint)
    script = ["-m", module, "--config", str(config_path)]
    if launcher == "python":
        if nproc != 1 or nnodes != 1:
            raise ValueError("the python launcher runs one process; use torchrun or deepspeed for more")
        return [sys.executable, *script]
    if launcher == "torchrun":
        run = [sys.executable, "-m", "torch.distributed.run"]
        if nnodes == 1 and not rdzv_endpoint:
            return [*run, "--standalone", f"--nproc-per-node={nproc}", *script]
        if not rdzv_endpoint:
            raise ValueError("torchrun on several nodes needs a rendezvous endpoint (host:port)")
        # No restarts: a failed rank fails the run (the asset's retry resumes from a checkpoint).
        return [*run, f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id or 'lmforge'}",
                "--max-restarts=0", *script]
    if nnodes > 1 and not hostfile:
        raise ValueError("deepspeed on several nodes needs a hostfile")
    argv = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile:
        argv.append(f"--hostfile={hostfile}")
        if nnodes > 1:
            argv.append(f"--num_nodes={nnodes}")
    if rdzv_endpoint:
        # A named master needs no ssh probe (DeepSpeed's own probe ignores pdsh's ssh options).
        argv += [f"--master_addr={host}", f"--master_port={port}"]
        if hostfile:
            argv.append("--no_ssh_check")
    # The DeepSpeed launcher would append --local_rank to our argv; the env var is enough.
    return [*argv, f"--num_gpus={nproc}", "--no_local_rank", "--module", module,
            "--config", str(config_path)]


def hostfile_hosts(hostfile: str | os.PathLike) -> list[str]:
    """The hosts of a DeepSpeed hostfile (``host slots=N`` lines; ``#`` comments)."""
    try:
        lines = Path(hostfile).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read hostfile {hostfile}: {e.strerror}") from None
    hosts = [line.split("#", 1)[0].split()[0] for line in lines if line.split("#", 1)[0].strip()]
    if not hosts:
        raise ValueError(f"hostfile {hostfile} names no host")
    return hosts


# What a value in ``.deepspeed_env`` may hold: DeepSpeed writes ``export KEY=VALUE`` (in double
# quotes when needed) into the shell command pdsh runs on every node, one variable per line.
_DS_ENV_UNSAFE = re.compile(r'[\r\n"$`\\]')
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def deepspeed_env_text(env: Mapping[str, str]) -> str:
    """``env`` as a ``.deepspeed_env`` file: what DeepSpeed's runner exports to the ranks of every
    node over pdsh (it exports only a few variables of its own). A value the file or the remote
    shell could not carry as it is (a newline, a quote, ``$``, a backtick, a backslash) is refused."""
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"environment variable name {key!r} is not a shell name")
        if _DS_ENV_UNSAFE.search(value):
            raise ValueError(f"environment variable {key} cannot travel through DeepSpeed's "
                             "runner: its value holds a newline, a quote, $, ` or \\")
    return "".join(f"{k}={v}\n" for k, v in env.items())


class LocalJob:
    """Processes started on this machine (launcher agents), each in a process group of its own,
    watched as one job with the interface of the cluster jobs (``poll``, ``cancel``,
    ``read_new_log_lines``). Their output goes where this process's goes."""

    def __init__(self, argvs: Sequence[Sequence[str]], env: Mapping[str, str]):
        self.procs: list[subprocess.Popen] = []
        try:
            for argv in argvs:
                self.procs.append(subprocess.Popen(list(argv), env=dict(env), start_new_session=True))
        except BaseException:
            self.cancel()
            raise
        self.id = ",".join(str(p.pid) for p in self.procs)

    def poll(self) -> int | None:
        """0 when every process ended well; the first failure's code (the others are ended: an
        agent left alone would wait for its peers until a timeout); None while they run."""
        codes = [p.poll() for p in self.procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            self.cancel()
            return failed[0]
        return 0 if all(c == 0 for c in codes) else None

    def cancel(self, grace: float = 20.0) -> None:
        """SIGTERM to each process group (torchrun and DeepSpeed's runner end their ranks on it),
        then, after ``grace`` seconds, SIGKILL to whatever of them and their descendants is left:
        torchrun starts its ranks in sessions of their own, which a group signal does not reach."""
        import time

        import psutil

        descendants = []
        for p in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(p.pid).children(recursive=True)
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(descendants, timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)

    def read_new_log_lines(self) -> list[str]:
        return []


def in_launched_process() -> bool:
    """True inside a rank started by torchrun / deepspeed (they set WORLD_SIZE and MASTER_ADDR)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def relaunch(module: str, config_json: str, out_dir: str | os.PathLike, nproc: int,
             launcher: str = "torchrun") -> int:
    """Write the config beside the run and start ``nproc`` processes on it; returns their exit code."""
    from lmforge.errors import LmforgeError
    from lmforge.io import atomic_path, claim_output_dir

    if not str(out_dir):
        raise LmforgeError("out_dir is required")
    out_dir = claim_output_dir(out_dir)
    path = out_dir / "launch_config.json"
    with atomic_path(path) as tmp:
        tmp.write_text(config_json)
    argv = command(module, path, nproc, launcher)
    print(f"[lmforge] launching: {' '.join(argv)}", file=sys.stderr, flush=True)
    return subprocess.call(argv)


def training_parser(prog: str, description: str | None, config_cls,
                    aliases: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of a training command: one flag per field of ``config_cls`` (help = its
    description and default), ``aliases`` (short flags for the paths: ``--data`` -> ``data``),
    ``--config FILE`` and the process flags ``--nproc`` / ``--launcher``."""
    from lmforge.config import add_config_arguments

    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, field in aliases.items():
        info = config_cls.model_fields[field]
        p.add_argument(flag, dest=field, default=None, help=info.description)
    add_config_arguments(p, config_cls, exclude=set(aliases.values()))
    p.add_argument("--nproc", type=int, default=1,
                   help="processes (ranks); > 1 re-launches under --launcher")
    p.add_argument("--launcher", choices=LAUNCHERS, default="torchrun", help="for --nproc > 1")
    return p


ERROR_FILE_ENV = "LMFORGE_ERROR_FILE"


def report_error(line: str) -> None:
    """Also write a process's one-line error to ``$LMFORGE_ERROR_FILE`` when its launcher set it
    (the Dagster launcher shows it as the step's failure, not only in the process's stderr)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            with open(path, "a") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError:
            pass


def run_cli(module: str, config_cls, fn, parser: argparse.ArgumentParser, argv) -> int:
    """Shared by pretrain / sft / lora: parse, validate, re-launch for --nproc > 1, or run here.
    A bad flag, config file or input is one line and exit status 2 (``lmforge.cli.run``)."""
    from lmforge.config import config_from_args
    from lmforge.errors import LmforgeError

    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(config_cls, args)
        if args.nproc > 1 and not in_launched_process():
            return relaunch(module, cfg.model_dump_json(), cfg.out_dir, args.nproc, args.launcher)
        fn(cfg)
    except (LmforgeError, FileNotFoundError, ValueError) as e:
        line = f"{parser.prog}: error: {' '.join(str(e).split())}"
        print(line, file=sys.stderr)
        report_error(line)
        return 2
    return 0