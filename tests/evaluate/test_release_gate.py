"""The release gate (lmforge.evaluate.gate): bounds of the suite as it is now, and no regression
against the current release."""

from __future__ import annotations

from lmforge.evaluate.gate import release_gate
from lmforge.evaluate.harness import EvalSummary, Suite


def _summary(**scores):
    tasks = []
    for name, score in scores.items():
        if score == "skipped":
            tasks.append({"name": name, "source": "local", "status": "skipped", "reason": "no mirror",
                          "metric": "acc,none"})
        else:
            tasks.append({"name": name, "source": "local", "status": "ok", "metric": "acc,none", "score": score,
                          "higher_is_better": name != "bpb"})
    return EvalSummary.model_validate({"model_dir": "m", "adapter_dir": None, "suite": "s", "tasks": tasks})


def _suite(max_regression=None, **bounds):
    tasks = [{"name": n, "metric": "acc,none", **b} for n, b in bounds.items()]
    return Suite.model_validate({"name": "s", "tasks": tasks, "max_regression": max_regression})


def test_a_candidate_within_bounds_and_not_worse_passes():
    suite = _suite(0.05, mmlu={"min_score": 0.2}, bpb={"max_score": 8.0}, gsm8k={})
    gate = release_gate(_summary(mmlu=0.3, bpb=4.0, gsm8k="skipped"), suite, {"mmlu": 0.33, "bpb": 4.02})
    assert gate.passed, gate.reasons
    assert [r["verdict"] for r in gate.rows] == ["pass", "pass", "skipped: no mirror"]
    assert "| mmlu | 0.3000 | 0.3300 | >= 0.2 | pass |" in gate.to_markdown()


def test_an_impossible_threshold_or_a_regression_fails_the_gate():
    gate = release_gate(_summary(mmlu=0.3), _suite(mmlu={"min_score": 2.0}), None)
    assert not gate.passed and gate.reasons == ["mmlu below 2"]
    gate = release_gate(_summary(bpb=9.0), _suite(bpb={"max_score": 8.0}), None)
    assert gate.reasons == ["bpb above 8"]
    # Worse than the release: lower accuracy, higher bits per byte; max_regression 0 by default.
    gate = release_gate(_summary(mmlu=0.3, bpb=4.5), _suite(mmlu={}, bpb={}), {"mmlu": 0.31, "bpb": 4.0})
    assert not gate.passed
    assert [r["verdict"].split(" by ")[0] for r in gate.rows] == ["worse than the release"] * 2
    # A task the suite runs that has no score at all fails; one the release lacks is not compared.
    gate = release_gate(_summary(), _suite(mmlu={}), {"other": 1.0})
    assert gate.reasons == ["mmlu no score"]
