"""The release gate: may a candidate model replace the current release?

A candidate passes when every task of the suite that ran is within the suite's bounds
(``min_score`` / ``max_score``, read from the suite as it is now, so tightening a threshold
applies to the next gate without re-running the evaluation) and no task is worse than the
current release's score by more than the suite's ``max_regression`` (0 when the suite sets
none). A task that should have run but has no score fails the gate; a task skipped for a stated
reason (its data is not on this machine) does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmforge.evaluate.harness import EvalSummary, Suite


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One per task: task, metric, candidate, release, bound, verdict."""

    def to_markdown(self) -> str:
        lines = ["| task | candidate | release | bound | verdict |", "| --- | ---: | ---: | --- | --- |"]
        for r in self.rows:
            fmt = (lambda v: "–" if v is None else f"{v:.4f}")
            lines.append(f"| {r['task']} | {fmt(r['candidate'])} | {fmt(r['release'])} | "
                         f"{r['bound'] or '–'} | {r['verdict']} |")
        return "\n".join(lines)


def release_gate(summary: EvalSummary, suite: Suite,
                 release_scores: dict[str, float] | None) -> GateResult:
    """Compare the candidate's evaluation with the suite's bounds and the current release."""
    by_name = {t.name: t for t in summary.tasks}
    max_regression = suite.max_regression if suite.max_regression is not None else 0.0
    result = GateResult(passed=True)
    for task in suite.tasks:
        ran = by_name.get(task.name)
        score = ran.score if ran is not None else None
        previous = (release_scores or {}).get(task.name)
        bound = " ".join(x for x in (f">= {task.min_score:g}" if task.min_score is not None else "",
                                     f"<= {task.max_score:g}" if task.max_score is not None else "") if x)
        verdict = "pass"
        if ran is None or (ran.status != "skipped" and score is None):
            verdict = "no score"
        elif ran.status == "skipped":
            verdict = f"skipped: {ran.reason}"
        elif task.min_score is not None and score < task.min_score:
            verdict = f"below {task.min_score:g}"
        elif task.max_score is not None and score > task.max_score:
            verdict = f"above {task.max_score:g}"
        elif previous is not None:
            higher = ran.higher_is_better is not False
            worse_by = (previous - score) if higher else (score - previous)
            if worse_by > max_regression:
                verdict = f"worse than the release by {worse_by:.4g} (> {max_regression:g})"
        if verdict not in ("pass",) and not verdict.startswith("skipped"):
            result.passed = False
            result.reasons.append(f"{task.name} {verdict}")
        result.rows.append({"task": task.name, "metric": task.metric, "candidate": score,
                            "release": previous, "bound": bound, "verdict": verdict})
    return result
