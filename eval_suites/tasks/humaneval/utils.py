"""HumanEval for lm-eval, scored in lmforge's sandbox instead of the hub's `code_eval`."""

import os

from lmforge.evaluate.sandbox import check_program, estimate_pass_at_k
from lmforge.evaluate.tasks import load_humaneval

# Seconds per program and parallel sandboxes; the harness sets these from EvalConfig.
TIMEOUT = float(os.environ.get("LMFORGE_SANDBOX_TIMEOUT", "3.0"))


def load(humaneval_path=None, **kwargs):
    return load_humaneval(humaneval_path)


def build_predictions(resps, docs):
    """Same as the stock task: each candidate is the prompt followed by the completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def pass_at_k(references, predictions, k=None):
    """Called by lm-eval once per problem: references = [test code + check call],
    predictions = [[candidate programs]]. Returns {"pass@k": value} like the stock metric."""
    assert k is not None
    ks = [k] if isinstance(k, int) else list(k)
    scores = {}
    for ref, candidates in zip(references, predictions):
        passed = [check_program(c + "\n" + ref + "\n", timeout=TIMEOUT)["passed"] for c in candidates]
        for kk in ks:
            if len(candidates) >= kk:
                scores.setdefault(f"pass@{kk}", []).append(
                    float(estimate_pass_at_k(len(candidates), [sum(passed)], kk)[0]))
    return {name: sum(v) / len(v) for name, v in scores.items()}
