"""A training asset materialized in a process of its own (a run worker), for the tests that
interrupt it as Dagster's run termination does (SIGINT to the worker), and the process checks
they make afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]

# Materializes one asset that trains through the given launcher settings, on the instance in
# $DAGSTER_HOME; prints the run's id and success.
SCRIPT = """
import json, sys
from pathlib import Path
import dagster as dg
from resources import TrainingLauncher

cfg, where, settings = json.loads(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])

@dg.asset
def trained(context, launcher: TrainingLauncher):
    return launcher.run(context, "lmforge.train.pretrain", cfg, where / "config.json")

result = dg.materialize([trained], resources={"launcher": TrainingLauncher(**settings)},
                        instance=dg.DagsterInstance.get(), raise_on_error=False)
print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def processes_with(text: str) -> list[int]:
    """Pids of this machine's processes whose command line mentions ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(proc.name))
    return pids


class TrainingRun:
    """The worker, started on a fresh instance in ``tmp_path``; :meth:`wait_training` returns
    once the training streams its second step, :meth:`interrupt` sends SIGINT and returns the
    worker's result line."""

    def __init__(self, cfg_json: str, tmp_path: Path, settings: dict):
        from dagster._core.instance.ref import InstanceRef

        home = tmp_path / "dagster_home"
        home.mkdir()
        self.worker = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, cfg_json, str(tmp_path), json.dumps(settings)],
            cwd=REPO, env={**os.environ, "DAGSTER_HOME": str(home)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        self.run_id: str | None = None

    def logs(self) -> list[str]:
        return [e.user_message for e in self.instance.all_logs(self.run_id)] if self.run_id else []

    def wait_training(self, timeout: float = 240) -> list[str]:
        deadline, logs = time.monotonic() + timeout, []
        while time.monotonic() < deadline and self.worker.poll() is None:
            runs = self.instance.get_runs()
            if runs:
                self.run_id = runs[0].run_id
                logs = self.logs()
                if any(line.startswith("step 2/") for line in logs):  # training, streaming
                    break
            time.sleep(1)
        assert self.worker.poll() is None, self.worker.communicate()
        assert self.run_id and any(line.startswith("step 2/") for line in logs), logs[-20:]
        return logs

    def interrupt(self) -> dict:
        self.worker.send_signal(signal.SIGINT)
        out, err = self.worker.communicate(timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
        result["stderr"] = err
        return result

    def close(self) -> None:
        if self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()
