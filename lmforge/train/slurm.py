"""Training on a Slurm cluster: one batch job whose ``srun`` step starts one launcher agent per node.

The Dagster step (or a user) submits with :func:`submit` from a login node and then watches the
job: :meth:`SlurmJob.poll` asks the controller for its state, :meth:`SlurmJob.read_new_log_lines`
tails the job's output file (on the shared file system), :meth:`SlurmJob.cancel` ends it when the
step is interrupted. The argv is normally a torchrun agent with a c10d rendezvous: the batch
script exports ``MASTER_ADDR`` (the address of the job's first node) and each agent gets
``NODE_RANK`` (its node's index), which argv items may reference as ``$MASTER_ADDR`` /
``$NODE_RANK`` / ``$SLURM_...``; nothing else in an argv item or an environment value is ever
expanded by a shell.

Works without accounting (``slurmdbd``): the controller keeps an ended job for ``MinJobAge``
seconds (300 by default), far longer than one poll interval; ``sacct`` is asked only after that.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Sequence

from lmforge.errors import LmforgeError
from lmforge.io import atomic_path

# Job states after which no process of the job runs any more (COMPLETING is not one: the
# processes are still being killed).
ENDED_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT",
})
# The variables an argv item may reference; they are set on each node by Slurm or the script.
_ARG_VAR_RE = re.compile(r"\$(?:\{(MASTER_ADDR|NODE_RANK|SLURM_[A-Z0-9_]+)\}"
                         r"|(MASTER_ADDR|NODE_RANK|SLURM_[A-Z0-9_]+)(?![A-Za-z0-9_]))")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# How long poll() tolerates an unreachable controller (a slurmctld restart) before it gives up.
UNREACHABLE_GRACE_S = 300.0
_CALL_TIMEOUT_S = 60


def _slurm(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run a Slurm client command; a missing command or a hung controller is one line."""
    exe = shutil.which(tool)
    if exe is None:
        raise LmforgeError(f"{tool} not found on PATH: the slurm launcher needs Slurm's client "
                           "commands (run from a login node, or install slurm-client)")
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True,
                              timeout=_CALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LmforgeError(f"{tool} {' '.join(args)} did not answer in {_CALL_TIMEOUT_S} s "
                           "(is slurmctld reachable?)") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


def shell_word(arg: str) -> str:
    """``arg`` as one shell word in which only the references to ``$MASTER_ADDR``,
    ``$NODE_RANK`` and ``$SLURM_*`` (also ``${...}``) expand; everything else is literal."""
    parts, pos = [], 0
    for m in _ARG_VAR_RE.finditer(arg):
        if m.start() > pos:
            parts.append(shlex.quote(arg[pos:m.start()]))
        parts.append(f'"${{{m.group(1) or m.group(2)}}}"')
        pos = m.end()
    if pos < len(arg) or not parts:
        parts.append(shlex.quote(arg[pos:]))
    return "".join(parts)


def batch_script(argv: Sequence[str], env: dict[str, str], *, nodes: int) -> str:
    """The batch script: export ``env``, find the rendezvous host, start one agent per node."""
    if not argv:
        raise LmforgeError("slurm: the command to run is empty")
    bad = [k for k in env if not _ENV_NAME_RE.match(k)]
    if bad:
        raise LmforgeError(f"slurm: environment variable name {bad[0]!r} is not a shell name")
    lines = ["#!/bin/bash", "# Written by lmforge.train.slurm; Slurm keeps its own copy.",
             "set -euo pipefail"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
    # The first node hosts the rendezvous; the agents reach it at its NodeAddr, the address
    # Slurm itself uses (the node's name when none is configured). No pipes into head or grep:
    # with pipefail, a long host list would fail the script on SIGPIPE.
    lines += ['_lmforge_first="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"',
              "_lmforge_first=\"${_lmforge_first%%$'\\n'*}\"",
              '_lmforge_node="$(scontrol show node -o "$_lmforge_first")"',
              'MASTER_ADDR="$_lmforge_first"',
              'case "$_lmforge_node" in *" NodeAddr="*) MASTER_ADDR="${_lmforge_node#* NodeAddr=}"; '
              'MASTER_ADDR="${MASTER_ADDR%% *}";; esac',
              "export MASTER_ADDR"]
    agent = 'export NODE_RANK="$SLURM_NODEID"; exec ' + " ".join(shell_word(a) for a in argv)
    # One agent per node with all of the node's allocation (--whole); one failing agent ends
    # the others (--kill-on-bad-exit), so a broken rank never leaves the rest waiting.
    lines.append(f"exec srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --whole "
                 f"--kill-on-bad-exit=1 --export=ALL bash -c {shlex.quote(agent)}")
    return "\n".join(lines) + "\n"


class SlurmJob:
    """A submitted batch job: its state from the controller, its output from the log file."""

    def __init__(self, job_id: str, log_path: Path, log_offset: int = 0):
        self.id = job_id
        self.log_path = Path(log_path)
        self.state: str | None = None  # the last state the controller reported
        self._offset = log_offset
        self._partial = b""
        self._code: int | None = None
        self._reachable_at = time.monotonic()

    def __repr__(self) -> str:
        return f"SlurmJob(id={self.id}, state={self.state})"

    def poll(self) -> int | None:
        """The job's exit code once it has ended (its processes are gone), else None.

        A signal ``s`` gives ``128 + s`` (a cancelled job: 143); a job that ended badly without a
        code (NODE_FAIL, a time limit) gives 1, so only COMPLETED is 0.
        """
        if self._code is not None:
            return self._code
        proc = _slurm("scontrol", "show", "job", "-o", self.id)
        if proc.returncode == 0:
            fields = dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)
            state, exit_code = fields.get("JobState", ""), fields.get("ExitCode", "0:0")
        elif "invalid job id" in proc.stderr.lower():
            state, exit_code = self._from_accounting(proc.stderr)
        else:  # the controller is down or restarting: keep waiting, for a while
            if time.monotonic() - self._reachable_at > UNREACHABLE_GRACE_S:
                raise LmforgeError(f"slurm job {self.id}: the controller has not answered for "
                                   f"{UNREACHABLE_GRACE_S:.0f} s: {_last_line(proc.stderr)}")
            return None
        self._reachable_at = time.monotonic()
        self.state = state
        if state not in ENDED_STATES:
            return None
        rc, _, sig = exit_code.partition(":")
        rc_i, sig_i = int(rc or 0), int(sig or 0)
        self._code = 128 + sig_i if sig_i else rc_i if rc_i else (0 if state == "COMPLETED" else 1)
        return self._code

    def _from_accounting(self, scontrol_error: str) -> tuple[str, str]:
        """State and exit code from ``sacct`` once the controller forgot the job (MinJobAge)."""
        proc = _slurm("sacct", "-n", "-P", "-X", "-j", self.id, "-o", "State,ExitCode")
        rows = [r.split("|") for r in proc.stdout.splitlines() if r.count("|") == 1]
        if proc.returncode != 0 or not rows:
            why = _last_line(proc.stderr) if proc.returncode != 0 else "no record"
            raise LmforgeError(f"slurm job {self.id} is unknown to the controller "
                               f"({_last_line(scontrol_error)}) and to sacct ({why})")
        state, code = rows[-1]
        return state.split()[0], code  # "CANCELLED by 0" -> CANCELLED

    def cancel(self) -> None:
        """End the job (all its steps, on every node); nothing to do once it has ended."""
        if self._code is not None:
            return
        proc = _slurm("scancel", self.id)
        said = proc.stderr.lower()
        if proc.returncode != 0 and not ("already completing or completed" in said
                                         or "invalid job id" in said):
            raise LmforgeError(f"scancel {self.id} failed: {_last_line(proc.stderr)}")

    def read_new_log_lines(self) -> list[str]:
        """The complete lines the job wrote since the last call (a last line without its newline
        comes once the job has ended)."""
        try:
            with open(self.log_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # replaced by someone: read it from the start
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:  # not started yet
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        if self._code is not None and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return [ln.decode("utf-8", "replace") for ln in lines]


def submit(argv: list[str], env: dict[str, str], *, nodes: int, ntasks_per_node: int,
           workdir: Path, log_path: Path, partition: str | None = None,
           time_limit: str | None = None, extra: Sequence[str] = ()) -> SlurmJob:
    """Submit ``argv`` as one batch job over ``nodes`` nodes with ``ntasks_per_node`` task slots
    on each (the processes the agent starts per node); returns the job to watch.

    ``env`` is exported by the script (on top of the submitter's environment, ``--export=ALL``);
    the job's output (stdout and stderr) is appended to ``log_path``. ``extra`` are further
    sbatch options (``--gres=gpu:8``, ``--account=...``, ``--job-name=...``: later ones win).
    """
    if nodes < 1 or ntasks_per_node < 1:
        raise LmforgeError(f"slurm: nodes and ntasks_per_node must be >= 1, got {nodes} and "
                           f"{ntasks_per_node}")
    script_text = batch_script(argv, env, nodes=nodes)
    workdir, log_path = Path(workdir), Path(log_path)
    if not workdir.is_dir():
        raise LmforgeError(f"slurm: working directory {workdir} does not exist")
    if "%" in str(log_path) or "\\" in str(log_path):  # sbatch would read them as a pattern
        raise LmforgeError(f"slurm: log path {log_path} holds % or \\, which sbatch replaces")
    script = workdir / f"slurm-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}.sh"
    with atomic_path(script) as tmp:
        tmp.write_text(script_text)
        tmp.chmod(0o700)  # it holds the environment, which may hold credentials
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    options = ["--job-name=lmforge", f"--nodes={nodes}",
               f"--ntasks-per-node={ntasks_per_node}", f"--chdir={workdir}",
               f"--output={log_path}", f"--error={log_path}", "--open-mode=append",
               "--export=ALL"]
    if partition:
        options.append(f"--partition={partition}")
    if time_limit:
        options.append(f"--time={time_limit}")
    try:
        proc = _slurm("sbatch", "--parsable", *options, *extra, str(script))
    finally:  # sbatch stored its own copy (``scontrol write batch_script <id>``); this one holds
        script.unlink(missing_ok=True)  # the environment, on a store others may read
    job_id = proc.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"
    if proc.returncode != 0 or not job_id.isdigit():
        raise LmforgeError(f"sbatch refused the job: {_last_line(proc.stderr or proc.stdout)}")
    return SlurmJob(job_id, log_path, log_offset)
