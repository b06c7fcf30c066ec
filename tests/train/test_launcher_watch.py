"""A training process ends when the process that launched it is killed (no orphan keeps writing
into the version a retry resumes from)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent("""
    import sys, time
    from lmforge.train.telemetry import Telemetry
    with Telemetry(0, prefix="t"):
        print("ready", flush=True)
        time.sleep(120)
""")
# The launcher: starts the training child with its own pid to watch, prints the child's pid.
PARENT = textwrap.dedent("""
    import os, subprocess, sys
    env = {**os.environ, "LMFORGE_LAUNCHER_PID": str(os.getpid())}
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    child.wait()
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_training_ends_when_its_launcher_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while _alive(child_pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child_pid), "the training outlived its launcher"


def test_without_a_launcher_pid_nothing_is_watched():
    proc = subprocess.run([sys.executable, "-c", CHILD.replace("time.sleep(120)", "pass")],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "LMFORGE_LAUNCHER_PID"})
    assert proc.returncode == 0 and "ready" in proc.stdout


HOLDER = textwrap.dedent("""
    import sys, time
    from lmforge.io import hold_dir_lock
    hold_dir_lock(sys.argv[1])
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_a_second_training_on_one_run_directory_waits_for_the_first(tmp_path):
    """The lock a training holds on its run directory: another process waits (saying for whom)
    until the holder ends, even when the holder is killed with SIGKILL."""
    from lmforge.io import hold_dir_lock, release_dir_lock

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "60"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    said = []
    import threading

    def kill_soon():
        time.sleep(1.5)
        holder.send_signal(signal.SIGKILL)

    threading.Thread(target=kill_soon).start()
    started = time.monotonic()
    hold_dir_lock(tmp_path, on_wait=said.append, poll=0.2)
    waited = time.monotonic() - started
    release_dir_lock(tmp_path)
    holder.wait()
    assert waited >= 1.0, "did not wait for the holder"
    assert said and f"(pid {holder.pid})" in said[0] and str(tmp_path) in said[0]
    # Free now: taken at once.
    started = time.monotonic()
    hold_dir_lock(tmp_path)
    assert time.monotonic() - started < 1.0
    release_dir_lock(tmp_path)
