"""Regressions against a previous evaluation: direction of each metric, tolerance, missing tasks."""

from lmforge.evaluate.harness import EvalSummary, TaskResult, load_suite, regressions, suite_names


def _summary(**scores):
    tasks = [TaskResult(name=n, source="local", status="ok", metric=m, score=v, higher_is_better=h)
             for n, (m, v, h) in scores.items()]
    tasks.append(TaskResult(name="gsm8k", source="local", status="skipped", reason="no mirror",
                            metric="exact_match,strict-match"))
    return EvalSummary(model_dir="m", adapter_dir=None, suite="standard", tasks=tasks)


def test_regressions_follow_each_metric_direction():
    current = _summary(mmlu=("acc,none", 0.30, True), heldout_bpb=("bits_per_byte,none", 2.50, False),
                       humaneval=("pass@1,create_test", 0.10, True))
    previous = {"mmlu": 0.35, "heldout_bpb": 2.40, "humaneval": 0.09, "gsm8k": 0.2}
    found = regressions(previous, current, max_regression=0.02)
    assert set(found) == {"mmlu", "heldout_bpb"}  # accuracy fell, bits per byte rose
    assert abs(found["mmlu"]["worse_by"] - 0.05) < 1e-9
    assert abs(found["heldout_bpb"]["worse_by"] - 0.10) < 1e-9
    # within tolerance, improvements and tasks without a current score are not regressions
    assert regressions(previous, current, max_regression=0.2) == {}
    assert regressions({}, current, max_regression=0.0) == {}


def test_suites_declare_regression_policy():
    assert {"smoke", "standard"} <= set(suite_names())
    standard = load_suite("standard")
    assert standard.max_regression is not None and standard.block_on_regression
