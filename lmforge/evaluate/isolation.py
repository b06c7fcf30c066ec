"""Run model-generated code (HumanEval completions) in a sandbox: isolation and limits.

Generated code never runs in the evaluating process. Each sample gets its own process tree, built
with bubblewrap (``bwrap``) where it exists and works, and with our own launcher otherwise:

    evaluator ──spawn──> bwrap (own session)                            [bwrap mechanism]
                           │ new PID, network, IPC, UTS and cgroup namespaces; a mount
                           │ namespace with: / read-only; a private, size-capped /tmp and
                           │ /dev/shm; its own /proc and /dev; every top-level directory but the
                           │ system ones (/usr, /etc, /bin, /lib...) hidden under an empty
                           │ read-only tmpfs (/work, /root, /home, /var, /run, /opt, /mnt, /srv,
                           │ /sys ...), and so are the evaluator's cwd, the repository, $HOME and
                           │ the artifact paths; only the interpreter's prefix is shown again
                           └──> launcher (python -I -c _LAUNCHER): rlimits, no_new_privs,
                                root drops to `nobody` → exec python -I run.py program.py

    evaluator ──spawn──> launcher (own session)                          [fallback mechanism]
                           │ rlimits; unshare: network + PID namespaces when the kernel lets us
                           └─fork──> program (PID 1 of its namespace), as `nobody` when root

Why each piece:
- rlimits bound what one sample can burn: RLIMIT_CPU kills a busy loop, RLIMIT_AS turns a memory
  bomb into a MemoryError, RLIMIT_FSIZE stops a disk filler, RLIMIT_NPROC caps a fork bomb; the
  tmpfs size caps bound what all files in /tmp and /dev/shm together may hold (in RAM), and they
  vanish with the sandbox's mount namespace, so nothing is left on the host.
- The wall-clock timeout catches what rlimits cannot (sleep, blocking reads): the evaluator kills
  the process group it started; bwrap's --die-with-parent (fallback: PR_SET_PDEATHSIG + PID 1 of
  its own PID namespace) takes every process of the sample with it, setsid() or not.
- Dropping to `nobody` (as root) makes the files that stay visible unreadable where Unix
  permissions say so, and gives RLIMIT_NPROC teeth. bwrap is run without a user namespace when
  the evaluator is root: inside one, the sandbox's uid would map to root and own root's files.
  no_new_privs stops a setuid binary from giving the privileges back.
- A sample passes only when its program ran to its end: run.py reads a random per-sample token
  from stdin before any of the program's code runs, closes stdin, runs the program, and prints
  the token only after the last statement (HumanEval's ``check(entry_point)``) returned. Exit
  status 0 without the token (``SystemExit(0)``, ``os._exit(0)``, a closed stdout) is a failure.
  The token is in the program's own memory while it runs: a completion written to hunt for it
  (frame or memory introspection) is beyond what any in-process harness can stop.

The fallback (no usable bwrap) does not hide files: the program sees the host read-only as far as
Unix permissions go, so world-writable directories (/tmp, /dev/shm) stay writable; without root and
without unprivileged user namespaces, there is no network or PID isolation and the program runs as
the evaluator's own user. ``sandbox_report()`` says what this machine gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, Field

from lmforge.errors import LmforgeError

NOBODY_UID = 65534
NOBODY_GID = 65534
# Where the (read-only) program directory appears inside a bwrap sandbox.
_INNER_DIR = "/run/lmforge-sample"
# Top-level directories a Python program needs; everything else under / is hidden under bwrap.
_SYSTEM_DIRS = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"}
# Mounted by bwrap itself (own /proc, /dev, private /tmp) or hidden and reused (/run).
_SPECIAL_DIRS = {"proc", "dev", "tmp", "run"}


def _default_mechanism() -> str:
    return os.environ.get("LMFORGE_SANDBOX", "auto")


def _default_hidden() -> list[str]:
    """Paths the harness asks to hide besides the defaults (the artifact paths of an evaluation)."""
    extra = [p for p in os.environ.get("LMFORGE_SANDBOX_HIDE", "").split(os.pathsep) if p]
    if os.environ.get("LMFORGE_ARTIFACTS"):
        extra.append(os.environ["LMFORGE_ARTIFACTS"])
    return extra


class SandboxConfig(BaseModel):
    """Resource limits for one sample. Defaults suit HumanEval (a few ms of CPU per problem)."""

    timeout: float = Field(3.0, gt=0, description="wall-clock seconds per sample")
    cpu_seconds: int = Field(0, ge=0, description="RLIMIT_CPU; 0 = ceil(timeout) + 1")
    memory_mb: int = Field(1024, gt=0, description="RLIMIT_AS (address space)")
    file_size_mb: int = Field(16, ge=0, description="RLIMIT_FSIZE: largest file it may write")
    max_processes: int = Field(64, gt=0, description="RLIMIT_NPROC for the sandbox user")
    tmpfs_mb: int = Field(64, gt=0, description="size of the private /tmp and of /dev/shm (bwrap)")
    isolate_network: bool = Field(True, description="no network for the program (a network "
                                  "namespace of its own, loopback only)")
    drop_privileges: bool = Field(True, description="as root: run the program as `nobody`, so "
                                  "Unix permissions and RLIMIT_NPROC bind it")
    mechanism: Literal["auto", "bwrap", "fallback"] = Field(
        default_factory=_default_mechanism,
        description="bwrap where it works (auto), bwrap or nothing, or the fallback launcher; "
                    "default $LMFORGE_SANDBOX or auto")
    hide: list[str] = Field(
        default_factory=_default_hidden,
        description="more paths the program must not see (bwrap); default $LMFORGE_SANDBOX_HIDE "
                    "and $LMFORGE_ARTIFACTS. The cwd, the repository, $HOME are always hidden")
    python: list[str] = Field(
        default_factory=lambda: [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"],
        description="interpreters to run the program with, first usable one wins")


# The launcher runs in a fresh interpreter (`python -I -c`), gets its settings as JSON in argv[1],
# and ends by exec'ing the runner. It must only use the standard library.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

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
isolated = False
if cfg["unshare"]:
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
    # No setuid binary (su, sudo) may give back what was dropped.
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    # The first interpreter that the (possibly unprivileged) user can run: the evaluator's own may
    # live under a directory that `nobody` cannot enter (e.g. /root/.pyenv).
    for python in cfg["pythons"]:
        if os.access(python, os.X_OK) and os.access(os.path.dirname(os.path.realpath(python)), os.R_OK | os.X_OK):
            os.execve(python, [python, "-I", cfg["runner"], cfg["program"]], dict(os.environ))
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

# The runner: takes the per-sample token from stdin before any of the program's code runs, then
# runs the program as __main__, and prints the token only if the program's last statement
# returned. Leaving early in any way (SystemExit, os._exit, a signal, an exception) prints nothing.
_RUNNER = r"""
import os, sys

def _read_token():
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        chunk = os.read(0, 256)
        if not chunk:
            break
        data += chunk
    # stdin now reads as empty: the program cannot reach what the evaluator sent.
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    return data.strip()

def _run(path, token):
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    del sys.argv[0]
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\n" + token + b"\n")
    os._exit(0)

_run(sys.argv[1], _read_token())
"""


def _minimal_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class SandboxError(LmforgeError):
    """The sandbox itself cannot run programs here (not something a program did)."""


# ----------------------------------------------------------------------------------------------
# bwrap: the command line, and a probe (once per process and configuration) that it works here.

def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _interpreters(cfg: SandboxConfig) -> list[str]:
    """The candidate interpreters as real paths: a virtualenv's python is a link into a directory
    the sandbox hides, and its site-packages are not wanted anyway (``-I``)."""
    seen: list[str] = []
    for p in cfg.python:
        real = os.path.realpath(p)
        if os.path.isfile(real) and real not in seen:
            seen.append(real)
    return seen


def _prefixes(pythons: list[str]) -> list[str]:
    """The directories each interpreter needs: its installation prefix (binary, stdlib, libpython)."""
    out = []
    base_exe = os.path.realpath(sys.executable)
    for real in pythons:
        prefix = os.path.realpath(sys.base_prefix) if real == base_exe else os.path.dirname(os.path.dirname(real))
        if prefix != "/" and prefix not in out:
            out.append(prefix)
    return out


def _bwrap_args(cfg: SandboxConfig, scratch: Path) -> list[str]:
    is_root = os.geteuid() == 0
    size = str(cfg.tmpfs_mb << 20)
    args = ["bwrap", "--die-with-parent", "--new-session", "--clearenv"]
    for k, v in _minimal_env("/tmp").items():
        args += ["--setenv", k, v]
    if is_root:
        # No user namespace: in one, the sandbox's uid maps to root (see the module docstring).
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        args += ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--uid", str(NOBODY_UID), "--gid", str(NOBODY_GID),
                 "--disable-userns"]
    if cfg.isolate_network:
        args += ["--unshare-net"]
    args += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
             "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]

    hidden: list[str] = []  # directories under an empty tmpfs
    files: list[str] = []  # files under /dev/null
    for name in sorted(os.listdir("/")):
        if name in _SYSTEM_DIRS or name in _SPECIAL_DIRS:
            continue
        path = "/" + name
        real = os.path.realpath(path)
        if real.split("/")[1:2] and real.split("/")[1] in _SYSTEM_DIRS | {"proc", "dev", "tmp"}:
            continue  # a link into what is kept anyway
        (hidden if os.path.isdir(real) else files).append(real)
    hidden.insert(0, "/run")

    from lmforge.paths import REPO_ROOT

    extra = [os.getcwd(), str(REPO_ROOT), os.path.expanduser("~"), tempfile.gettempdir(), *cfg.hide]
    pythons = _interpreters(cfg)
    prefixes = _prefixes(pythons)
    late: list[str] = []  # extra paths inside a prefix shown again: hidden after it
    for p in extra:
        real = os.path.realpath(p)
        # Under /tmp, /dev, /proc: the sandbox has its own, where the host's paths do not exist.
        if real == "/" or any(_under(real, d) for d in ("/tmp", "/dev", "/proc")):
            continue
        if any(_under(real, h) for h in hidden) and not any(_under(real, pre) for pre in prefixes):
            continue
        if os.path.isdir(real):
            (late if any(_under(real, pre) for pre in prefixes) else hidden).append(real)
        elif os.path.exists(real):
            files.append(real)

    for h in hidden:
        args += ["--size", "65536", "--tmpfs", h]
    for f in files:
        args += ["--ro-bind", "/dev/null", f]
    for pre in prefixes:
        owner = next((h for h in hidden if _under(pre, h) and pre != h), None)
        if owner is None:
            continue
        # bwrap would make the missing directories 0700: `nobody` could not walk through them.
        parts = Path(pre).relative_to(owner).parts
        for i in range(1, len(parts)):
            args += ["--perms", "0755", "--dir", str(Path(owner, *parts[:i]))]
        args += ["--ro-bind", pre, pre]
    args += ["--perms", "0755", "--dir", _INNER_DIR, "--ro-bind", str(scratch), _INNER_DIR]
    for h in late:
        args += ["--size", "65536", "--tmpfs", h]
    for h in hidden + late:
        args += ["--remount-ro", h]
    args += ["--chdir", "/tmp", "--"]
    return args


def _settings(cfg: SandboxConfig, program: str, runner: str, unshare: bool) -> dict[str, Any]:
    return {"program": program, "runner": runner, "unshare": unshare,
            "cpu_seconds": cfg.cpu_seconds or int(cfg.timeout) + 1,
            "memory_mb": cfg.memory_mb, "file_size_mb": cfg.file_size_mb,
            "max_processes": cfg.max_processes, "isolate_network": cfg.isolate_network,
            "drop_privileges": cfg.drop_privileges, "pythons": _interpreters(cfg) or cfg.python,
            "uid": NOBODY_UID, "gid": NOBODY_GID}


_lock = threading.Lock()
_bwrap_works: dict[str, bool] = {}  # probe results by configuration
_working: set[str] = set()  # configurations already seen to run a trivial program


def _probe_key(cfg: SandboxConfig) -> str:
    return cfg.model_copy(update={"timeout": 3.0, "mechanism": "auto"}).model_dump_json()


def _use_bwrap(cfg: SandboxConfig) -> bool:
    """Whether samples run under bwrap: it is installed and runs a trivial program to its end
    here (a container may forbid the namespaces it needs). Probed once per configuration."""
    if cfg.mechanism == "fallback":
        return False
    key = _probe_key(cfg)
    with _lock:
        known = _bwrap_works.get(key)
    if known is None:
        known = False
        if shutil.which("bwrap"):
            probe = _run_in_sandbox("pass\n", cfg.model_copy(update={"timeout": max(cfg.timeout, 10.0)}),
                                    use_bwrap=True)
            known = probe["passed"]
            if not known and cfg.mechanism == "bwrap":
                raise SandboxError(f"bwrap cannot run a trivial program on this machine: {probe['result']}")
        with _lock:
            _bwrap_works[key] = known
    if not known and cfg.mechanism == "bwrap":
        raise SandboxError("the bwrap sandbox was asked for (mechanism=bwrap), but bwrap "
                           + ("does not work here" if shutil.which("bwrap") else "is not installed"))
    return known


def _ensure_working(cfg: SandboxConfig) -> bool:
    """Pick the mechanism, and run `pass` once per configuration: if even that fails, the sandbox
    is broken on this machine (e.g. no interpreter the `nobody` user may execute), and every
    sample would silently score 0. Returns whether bwrap is used."""
    use_bwrap = _use_bwrap(cfg)
    key = _probe_key(cfg)
    if key in _working:
        return use_bwrap
    probe = _run_in_sandbox("pass\n", cfg.model_copy(update={"timeout": max(cfg.timeout, 10.0)}),
                            use_bwrap=use_bwrap)
    if not probe["passed"]:
        raise SandboxError(f"the sandbox cannot run a trivial program on this machine: {probe['result']}")
    with _lock:
        _working.add(key)
    return use_bwrap


def mechanism(cfg: SandboxConfig | None = None) -> str:
    """The mechanism samples run under on this machine: ``"bwrap"`` or ``"fallback"``."""
    return "bwrap" if _ensure_working(cfg or active_config()) else "fallback"


# The config of check_program calls that pass none: lm-eval's metric hooks run inside
# lm-eval, which knows nothing of ours, so the harness installs its own with `configured`.
_active: SandboxConfig | None = None


@contextlib.contextmanager
def configured(cfg: SandboxConfig) -> Iterator[SandboxConfig]:
    """Within the block, ``check_program`` without a ``cfg`` uses ``cfg`` (this process only)."""
    global _active
    previous, _active = _active, cfg
    try:
        yield cfg
    finally:
        _active = previous


def active_config() -> SandboxConfig:
    """The config installed by :func:`configured`, or the defaults."""
    return _active if _active is not None else SandboxConfig()


def check_program(program: str, timeout: float | None = None,
                  cfg: SandboxConfig | None = None) -> dict[str, Any]:
    """Run one complete program (prompt + completion + tests) in the sandbox.

    ``cfg`` defaults to :func:`active_config`; ``timeout``, when given, replaces its timeout.
    Returns ``{"passed": bool, "result": "passed" | "timed out" | "failed: <reason>"}``; passed
    means the program ran to its last statement and exited 0 within the limits. Never raises for
    anything the program does (``SandboxError`` if the sandbox cannot work here).
    """
    cfg = cfg or active_config()
    if timeout is not None:
        cfg = cfg.model_copy(update={"timeout": timeout})
    use_bwrap = _ensure_working(cfg)
    return _run_in_sandbox(program, cfg, use_bwrap=use_bwrap)


def _run_in_sandbox(program: str, cfg: SandboxConfig, use_bwrap: bool) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="lmforge-sandbox-"))
    stack = contextlib.ExitStack()
    pass_fds: tuple[int, ...] = ()
    try:
        (scratch / "program.py").write_text(program, encoding="utf-8")
        (scratch / "run.py").write_text(_RUNNER, encoding="utf-8")
        if use_bwrap:
            # Read-only inside; `nobody` must be able to read it. The program's cwd is the
            # private /tmp.
            os.chmod(scratch, 0o755)
            for f in scratch.iterdir():
                os.chmod(f, 0o644)
            settings = _settings(cfg, f"{_INNER_DIR}/program.py", f"{_INNER_DIR}/run.py", unshare=False)
            # The mount table goes through a file descriptor (--args), not argv: bwrap stays PID 1
            # of the sandbox, and its command line would tell the program what is hidden where.
            argsf = stack.enter_context(tempfile.TemporaryFile())
            argsf.write(b"".join(a.encode() + b"\0" for a in _bwrap_args(cfg, scratch)[1:]))
            argsf.seek(0)
            pass_fds = (argsf.fileno(),)
            cmd = ["bwrap", "--args", str(argsf.fileno()),
                   _interpreters(cfg)[0] if _interpreters(cfg) else sys.executable,
                   "-I", "-c", _LAUNCHER, json.dumps(settings)]
            env = _minimal_env("/tmp")
        else:
            if os.geteuid() == 0 and cfg.drop_privileges:
                for p in (scratch, *scratch.iterdir()):
                    os.chown(p, NOBODY_UID, NOBODY_GID)
            settings = _settings(cfg, str(scratch / "program.py"), str(scratch / "run.py"), unshare=True)
            cmd = [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(settings)]
            env = _minimal_env(str(scratch))
        token = secrets.token_hex(16).encode()
        # stdout and stderr go to unlinked files outside the sandbox: a program that prints without
        # end fills at most RLIMIT_FSIZE of disk, never the evaluator's memory.
        with tempfile.TemporaryFile() as outf, tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=subprocess.PIPE,
                                    stdout=outf, stderr=errf, start_new_session=True, pass_fds=pass_fds)
            try:
                try:
                    proc.stdin.write(token + b"\n")
                    proc.stdin.close()
                except OSError:  # it died before reading: the exit status tells why
                    pass
                proc.wait(timeout=cfg.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return {"passed": False, "result": "timed out"}
            finally:
                _kill_group(proc)  # leftovers that stayed in the group
            out, err = _tail(outf), _tail(errf)
        finished = out.rstrip(b"\n").rsplit(b"\n", 1)[-1] == token
        if proc.returncode == 0 and finished:
            return {"passed": True, "result": "passed"}
        if proc.returncode < 0 or proc.returncode > 128:
            sig = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            if name == "SIGXCPU":
                return {"passed": False, "result": "timed out (cpu limit)"}
            return {"passed": False, "result": f"failed: killed by {name}"}
        if proc.returncode == 0:
            return {"passed": False, "result": "failed: exited before its tests ran to the end (exit code 0)"}
        message = _last_line(err.decode("utf-8", "replace")) or f"exit code {proc.returncode}"
        return {"passed": False, "result": f"failed: {message}"}
    finally:
        stack.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _tail(f, size: int = 4096) -> bytes:
    f.seek(max(0, f.seek(0, os.SEEK_END) - size))
    return f.read()


def sandbox_report() -> dict[str, Any]:
    """What isolation this machine actually gives, measured by running probes in the sandbox."""
    from lmforge.paths import REPO_ROOT

    net = check_program(
        "import socket\nassert not [n for _, n in socket.if_nameindex() if n != 'lo']\n", timeout=10)
    user = check_program("import os\nassert os.getuid() != 0\n", timeout=10)
    pidns = check_program("import os\nassert os.getpid() < 10\n", timeout=10)
    hidden = check_program(f"import os\nassert not os.path.exists({str(REPO_ROOT / 'lmforge')!r})\n",
                           timeout=10)
    private_tmp = check_program("import os\nassert not os.listdir('/tmp')\n", timeout=10)
    return {"mechanism": mechanism(), "network_isolated": net["passed"],
            "unprivileged_user": user["passed"] or os.geteuid() != 0,
            "pid_namespace": pidns["passed"], "host_files_hidden": hidden["passed"],
            "private_tmp": private_tmp["passed"]}
