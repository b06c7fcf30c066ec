"""Real services for the tests that run Dagster as a deployment does.

- `postgres_server` (fixture, one per module) / `running_postgres()`: a throwaway PostgreSQL
  cluster (Debian's postgresql package): initdb in a private temporary directory, the server
  listening on 127.0.0.1 only (plus a private unix socket for administration), a role with a
  password and a database for Dagster; stopped and deleted afterwards, and killed with the test
  process if that dies first. Run as the `postgres` user when the tests run as root (the server
  refuses root), as the current user otherwise.
- `dagster_instance_dir()`: a DAGSTER_HOME whose dagster.yaml is deploy/dagster.yaml with only
  the named keys changed (polling intervals, for speed).
- `dagster_daemon()`: `dagster-daemon run -w <workspace>` in its own process group, logging to a
  file, killed with everything it started on exit.
- `submit_runs()`, `wait_for_run()`, `wait_for_retry()`, `runs_for()`, `step_intervals()`,
  `kill_run_worker()`: launch runs through the instance's run coordinator (the queue the daemon
  serves), wait for them, and look at or kill their processes, with failure messages that carry
  the run's last events and the daemon's log.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE_YAML = REPO / "deploy" / "dagster.yaml"

# The keys of deploy/dagster.yaml a test may change: how often the daemon polls, never what it
# does. Anything else would make the tests run a different instance from the one documented.
FAST_POLLING = {
    "run_coordinator": {"config": {"dequeue_interval_seconds": 1}},
    "run_monitoring": {"poll_interval_seconds": 1, "free_slots_after_run_end_seconds": 1},
}
# The run-retry daemon (EventLogConsumerDaemon) keeps its 5 s interval (it reads it from the
# environment only). A run worker writes the failure event, then the run's FAILURE status; a
# retry daemon that reads the run in between skips it for good (dagster 1.13,
# auto_run_reexecution.should_retry), and a 1 s interval made that happen in about 1 of 10 runs.
FAST_POLLING_ENV: dict[str, str] = {}


# ---------------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """Where initdb and postgres are: Debian's /usr/lib/postgresql/<newest>/bin, else PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    candidates = [Path(v).parent for v in reversed(versions)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for bindir in candidates:
        if all((bindir / tool).exists() for tool in ("initdb", "postgres", "pg_isready", "psql")):
            return bindir
    return None


def postgres_skip_reason() -> str | None:
    if postgres_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, postgres) not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    if importlib.util.find_spec("psycopg2") is None:  # dagster-postgres's driver
        return "psycopg2 not installed (pip install dagster-postgres)"
    return None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db: str
    socket_dir: Path
    data_dir: Path
    log: Path

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USER": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_DB": self.db}

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.db}"

    def create_database(self, name: str) -> "PostgresServer":
        """Another database on this server, owned by the same role: the same server with
        `db` set to it."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=self.db)
        try:
            conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return replace(self, db=name)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(sig: int):
    """A preexec_fn: the child gets `sig` when the process that started it dies, so a test
    process killed outright (a CI timeout) leaves no server behind. Set after the switch to the
    postgres user, which would clear it."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def set_death_signal() -> None:
        if prctl(1, int(sig)) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return set_death_signal


PG_PREFIX = "lmforge-pg-"


def _sweep_dead_clusters(older_than: float = 600) -> None:
    """Delete what a killed test process left in the temporary directory: clusters of ours whose
    server is gone (and that are not being created right now)."""
    for root in Path(tempfile.gettempdir()).glob(PG_PREFIX + "*"):
        try:
            if time.time() - root.stat().st_mtime < older_than:
                continue
            pid_file = root / "data" / "postmaster.pid"
            pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        except (OSError, ValueError, IndexError):
            continue
        if pid is None or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_postgres(db: str = "dagster", user: str = "dagster") -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test: loopback TCP with a password, and a private socket.
    The server is this process's child and dies with it."""
    bindir = postgres_bin_dir()
    assert bindir is not None, postgres_skip_reason()
    _sweep_dead_clusters()
    as_root = os.geteuid() == 0
    run_as = {"user": "postgres", "group": "postgres", "extra_groups": []} if as_root else {}
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix=PG_PREFIX))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    superuser_password, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    (root / "pwfile").write_text(superuser_password + "\n")
    if as_root:
        for p in (root, sock, root / "pwfile"):
            shutil.chown(p, "postgres", "postgres")

    def pg(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(bindir / args[0]), *args[1:]], cwd=root, capture_output=True,
                              text=True, timeout=60, **run_as)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()} "
                               f"{_tail(log)}")
        return proc

    server = None
    try:
        # Local socket: trust (only postgres can open the directory); TCP: a password.
        pg("initdb", "-D", str(data), "-U", "postgres", "--pwfile", str(root / "pwfile"),
           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
           "--no-sync", "--no-instructions")
        for attempt in range(3):
            port = _free_loopback_port()
            with open(log, "ab") as out:
                # SIGQUIT: immediate shutdown, the data is thrown away anyway.
                server = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                     "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
                     "-c", "max_connections=200"],
                    cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent(signal.SIGQUIT), **run_as)
            if _wait_ready(bindir, sock, port, server):
                break
            server.wait(timeout=10)
            server = None
            if attempt == 2 or "could not bind" not in _tail(log):
                raise RuntimeError(f"postgres did not start: {_tail(log)}")
        pg("psql", "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres",
           "-v", "ON_ERROR_STOP=1", "-q",
           "-c", f"CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{password}'",
           "-c", f"CREATE DATABASE {db} OWNER {user}")
        yield PostgresServer(host="127.0.0.1", port=port, user=user, password=password, db=db,
                             socket_dir=sock, data_dir=data, log=log)
    finally:
        if server is not None:
            server.send_signal(signal.SIGQUIT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _wait_ready(bindir: Path, sock: Path, port: int, server: subprocess.Popen,
                timeout: float = 30) -> bool:
    """True once the server accepts connections; False if it exited (a port taken meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        ready = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", str(sock), "-p", str(port),
                                "-U", "postgres"], capture_output=True, timeout=30)
        if ready.returncode == 0:
            return True
        time.sleep(0.1)
    raise RuntimeError(f"postgres not ready in {timeout:.0f}s")


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per test module (a cluster starts in about two seconds); a test that needs a
    database of its own takes one with `postgres_server.create_database(name)`."""
    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    with running_postgres() as server:
        yield server


# ---------------------------------------------------------------------------------- instance


def _merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_instance_yaml(overrides: Mapping = FAST_POLLING) -> dict:
    """deploy/dagster.yaml with `overrides` merged in (only keys it already has)."""
    base = yaml.safe_load(DEPLOY_INSTANCE_YAML.read_text())

    def check(b: Mapping, o: Mapping, path: str) -> None:
        for k, v in o.items():
            assert k in b, f"{path}{k} is not in deploy/dagster.yaml; a test may only retune it"
            if isinstance(v, Mapping):
                check(b[k], v, f"{path}{k}.")

    check(base, overrides, "")
    return _merge(base, overrides)


def dagster_instance_dir(tmp: Path, overrides: Mapping = FAST_POLLING) -> Path:
    """A DAGSTER_HOME holding the deployment's dagster.yaml; PostgreSQL comes from the
    environment (`PostgresServer.env()`), as in a deployment."""
    home = Path(tmp) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(render_instance_yaml(overrides), sort_keys=False))
    return home


def workspace_file(tmp: Path, python_file: Path, location_name: str) -> Path:
    """A workspace.yaml with one code location loaded from a Python file."""
    path = Path(tmp) / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(Path(python_file).resolve()), "location_name": location_name,
        "working_directory": str(REPO)}}]}))
    return path


# ---------------------------------------------------------------------------------- the daemon


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, parents first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += parents.get(p, [])
    return out


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a pid reused by another process after ours ended does not match."""
    st = _stat(pid)
    return (pid, st[19]) if st is not None and st[0] != "Z" else None


def _kill_if_same(ident: tuple[int, str], sig: int) -> None:
    if _identity(ident[0]) == ident:
        try:
            os.kill(ident[0], sig)
        except ProcessLookupError:
            pass


_ROUTINE = ("Priority sorting and checking tag concurrency limits", "runs for monitoring",
            "Checking run ", "Not checking for any runs", "Checking for new runs for sensor",
            "No active schedules", "No active sensors", "Poll queued runs")


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    log: Path
    env: dict[str, str] = field(repr=False)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the daemon's log, without the lines every idle loop writes."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = [line for line in text.splitlines() if not any(n in line for n in _ROUTINE)]
        return "\n".join(lines)[-chars:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"dagster-daemon exited with {self.proc.returncode}; its log:\n"
                                 f"{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the daemon's process group; once the daemon has exited (or after `grace`),
        SIGKILL to whatever of its process tree is left (one that left the group included)."""
        tree = [i for p in process_tree(self.proc.pid) if (i := _identity(p)) is not None]
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:  # the daemon stops its threads; its code servers would wait a minute for calls
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # the group outlives its leader: this reaches what a dead daemon left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for ident in tree:
            _kill_if_same(ident, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _daemon_executable() -> list[str]:
    script = Path(sys.executable).with_name("dagster-daemon")
    if script.exists():
        return [str(script)]
    found = shutil.which("dagster-daemon")
    assert found, "dagster-daemon not found beside the interpreter or on PATH"
    return [found]


# What an earlier test in this process may have left in os.environ (an in-process training sets
# LOCAL_RANK; Accelerate, inside an evaluation, then takes the run worker for one rank of a
# distributed launch): never handed to the daemon, its runs or the UI.
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in DISTRIBUTED_ENV and not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))}


@contextmanager
def dagster_daemon(dagster_home: Path, workspace: Path, env: Mapping[str, str] | None = None,
                   log: Path | None = None, ready: Sequence[str] = ("QUEUED_RUN_COORDINATOR",),
                   timeout: float = 60) -> Iterator[DaemonProcess]:
    """`dagster-daemon run` with DAGSTER_HOME set, until every daemon named in `ready` has
    reported a heartbeat; stopped with all its processes (code servers, run workers) on exit."""
    import dagster as dg

    full_env = {**clean_environ(), **FAST_POLLING_ENV, **(env or {}), "DAGSTER_HOME": str(dagster_home)}
    log = log or Path(dagster_home) / "daemon.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*_daemon_executable(), "run", "-w", str(workspace)], cwd=REPO,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                # its code servers follow it once their heartbeats stop
                                preexec_fn=_die_with_parent(signal.SIGTERM))
    daemon = DaemonProcess(proc, log, full_env)
    try:
        with _env(full_env), dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + timeout
            while True:
                daemon.check_alive()
                beating = set(instance.get_daemon_heartbeats())
                if set(ready) <= beating:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"daemons {sorted(set(ready) - beating)} sent no heartbeat "
                                         f"in {timeout:.0f}s; daemon log:\n{daemon.log_tail()}")
                time.sleep(0.5)
        yield daemon
    finally:
        daemon.stop()


@contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------------------------- runs


def submit_runs(instance, workspace: Path, job_name: str, count: int = 1,
                tags: Mapping[str, str] | None = None, run_config: Mapping | None = None,
                asset_selection: Sequence | None = None) -> list[str]:
    """Create `count` runs of `job_name` and submit them to the instance's run coordinator (the
    queue the daemon serves), all from one load of the workspace, so they arrive together.
    Returns their run ids."""
    from dagster import AssetKey, __version__
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    assets = frozenset(AssetKey.from_coercible(a) for a in asset_selection) if asset_selection else None
    run_ids = []
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace)]),
                                 version=__version__) as process_context:
        context = process_context.create_request_context()
        errors = {name: e.load_error for name, e in context.get_code_location_entries().items()
                  if e.load_error}
        assert not errors, f"code location failed to load: {errors}"
        for location_name in context.code_location_names:
            location = context.get_code_location(location_name)
            for repo in location.get_repositories().values():
                if not repo.has_job(job_name):
                    continue
                selector = JobSubsetSelector(location_name=location_name, repository_name=repo.name,
                                             job_name=job_name, op_selection=None,
                                             asset_selection=assets)
                job = location.get_job(selector)
                plan = location.get_execution_plan(job, dict(run_config or {}), step_keys_to_execute=None,
                                                   known_state=None, instance=instance)
                for _ in range(count):
                    run = instance.create_run(
                        job_name=job_name, run_id=None, run_config=dict(run_config or {}),
                        resolved_op_selection=job.resolved_op_selection,
                        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
                        op_selection=None, status=None, root_run_id=None, parent_run_id=None,
                        tags={**job.tags, **(tags or {})}, job_snapshot=job.job_snapshot,
                        execution_plan_snapshot=plan.execution_plan_snapshot,
                        parent_job_snapshot=job.parent_job_snapshot,
                        remote_job_origin=job.get_remote_origin(),
                        job_code_origin=job.get_python_origin(), asset_selection=assets,
                        asset_check_selection=None, asset_graph=repo.asset_graph)
                    run_ids.append(run.run_id)
                for run_id in run_ids:
                    instance.submit_run(run_id, context)
                return run_ids
    raise AssertionError(f"no job {job_name!r} in {workspace}")


def run_events(instance, run_id: str, limit: int | None = None) -> list:
    events = instance.all_logs(run_id)
    return events[-limit:] if limit else events


def describe_run(instance, run_id: str, events: int = 15) -> str:
    run = instance.get_run_by_id(run_id)
    lines = [f"run {run_id}: {run.status.value if run else 'missing'} {dict(run.tags) if run else ''}"]
    for e in run_events(instance, run_id, events):
        kind = e.dagster_event.event_type_value if e.dagster_event else "LOG"
        msg = (e.message or (e.dagster_event.message if e.dagster_event else "") or "").splitlines()
        lines.append(f"  {kind} {e.step_key or ''} {msg[0][:200] if msg else ''}")
    return "\n".join(lines)


def wait_for_run(instance, run_id: str, timeout: float = 60, daemon: DaemonProcess | None = None,
                 statuses: Sequence | None = None):
    """Wait until the run reaches one of `statuses` (default: any finished status); returns it.
    On timeout, fails with the run's last events and the daemon's log tail."""
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    wanted = set(statuses or FINISHED_STATUSES)
    deadline = time.monotonic() + timeout
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in wanted:
            return run
        if daemon is not None:
            daemon.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run not {sorted(s.value for s in wanted)} after {timeout:.0f}s\n"
                f"{describe_run(instance, run_id)}\n"
                + (f"daemon log:\n{daemon.log_tail()}" if daemon else ""))
        time.sleep(0.3 if run is None or run.status != DagsterRunStatus.QUEUED else 0.5)


def runs_for(instance, job_name: str | None = None, tags: Mapping[str, str] | None = None) -> list:
    """Runs of a job and/or with tags, oldest first."""
    from dagster import RunsFilter

    runs = instance.get_runs(filters=RunsFilter(job_name=job_name, tags=dict(tags or {})))
    return sorted(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)


def wait_for_retry(instance, run_id: str, timeout: float = 60, daemon: DaemonProcess | None = None):
    """The run the daemon's run retries started for `run_id` (tag dagster/parent_run_id). Fails
    at once when the failed run says it will not be retried (tag dagster/will_retry false)."""
    deadline = time.monotonic() + timeout
    while True:
        children = runs_for(instance, tags={"dagster/parent_run_id": run_id})
        if children:
            return children[0]
        will_retry = instance.get_run_by_id(run_id).tags.get("dagster/will_retry")
        if daemon is not None:
            daemon.check_alive()
        if will_retry == "false" or time.monotonic() > deadline:
            why = ("the run is tagged dagster/will_retry=false" if will_retry == "false" else
                   f"none after {timeout:.0f}s (dagster/will_retry={will_retry})")
            raise AssertionError(f"no retry of {run_id}: {why}\n{describe_run(instance, run_id)}\n"
                                 + (f"daemon log:\n{daemon.log_tail()}" if daemon else ""))
        time.sleep(0.5)


def step_intervals(instance, run_id: str, finished: bool = True) -> dict[str, tuple]:
    """{step key: (STEP_START time, STEP_SUCCESS or STEP_FAILURE time)} from the event log; with
    `finished` False, steps still running too (end None)."""
    from dagster import DagsterEventType

    starts, ends = {}, {}
    for e in instance.all_logs(run_id, of_type={DagsterEventType.STEP_START,
                                               DagsterEventType.STEP_SUCCESS,
                                               DagsterEventType.STEP_FAILURE}):
        is_start = e.dagster_event.event_type == DagsterEventType.STEP_START
        (starts if is_start else ends)[e.step_key] = e.timestamp
    return {k: (starts[k], ends.get(k)) for k in starts if k in ends or not finished}


def worker_pid(instance, run_id: str, step_key: str | None = None, timeout: float = 60,
               daemon: DaemonProcess | None = None) -> int:
    """The pid of the run's worker (`step_key` None) or of the process executing `step_key`
    (multiprocess executor), as the run reported it in its event log."""
    from dagster import DagsterEventType

    deadline = time.monotonic() + timeout
    while True:
        if step_key is None:
            events = instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
            found = [e for e in events if (e.message or "").startswith("Started process for run")]
        else:
            events = instance.all_logs(run_id, of_type=DagsterEventType.STEP_WORKER_STARTED)
            found = [e for e in events if e.step_key == step_key]
        for e in reversed(found):
            pid = e.dagster_event.event_specific_data.metadata.get("pid")
            if pid is not None:
                return int(pid.value)
        if daemon is not None:
            daemon.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} reported no pid for {step_key or 'its worker'} in "
                                 f"{timeout:.0f}s\n{describe_run(instance, run_id)}")
        time.sleep(0.2)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_run_worker(instance, run_id: str, step_key: str | None = None, sig: int = signal.SIGKILL,
                    tree: bool = True, command_contains: str | None = None, timeout: float = 60,
                    daemon: DaemonProcess | None = None) -> list[int]:
    """Kill the run's worker, or the process executing `step_key`, with `sig` (SIGKILL: what
    the OOM killer or a lost node does). With `tree`, its descendants too, children first, as
    they would all go with their machine. With `command_contains`, only the processes of that
    tree whose command line contains it (the training a step launched through Pipes: what the
    OOM killer picks), waiting up to `timeout` for one to appear. Returns the pids killed."""
    root = worker_pid(instance, run_id, step_key, timeout=timeout, daemon=daemon)
    deadline = time.monotonic() + timeout
    while True:
        pids = process_tree(root) if tree or command_contains else [root]
        if command_contains:
            pids = [p for p in pids if p != root and command_contains in command_line(p)]
        if pids:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"no process with {command_contains!r} under pid {root} of run "
                                 f"{run_id} in {timeout:.0f}s\n{describe_run(instance, run_id)}")
        time.sleep(0.1)
    for p in reversed(pids):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return pids
