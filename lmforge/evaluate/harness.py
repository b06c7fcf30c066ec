"""Evaluate a model (Hugging Face directory, optionally + a PEFT LoRA adapter) on a suite of tasks
with lm-evaluation-harness.

    suite YAML (eval_suites/<name>.yaml)  ->  per task: source (local mirror / hub), shots, limit
    model dir (+ adapter)                 ->  one lm-eval HFLM, loaded once, no hub access
    for each task: lm_eval.simple_evaluate(model, [task], task_manager)  ->  scores
    out_dir/results.json   lm-eval's results (all tasks merged), comparable with published numbers
    out_dir/summary.json   EvalSummary: scores per task, skipped tasks and why, thresholds

A task whose data is not on this machine (no mirror, no held-out file, offline hub) is reported
as skipped with the reason; it is never dropped silently or given a made-up score.

    lmforge eval --model runs/sft/model --suite smoke --heldout data/val.parquet --out eval/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.config import add_config_arguments, config_from_args
from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, check_output
from lmforge.paths import REPO_ROOT, benchmarks_dir as default_benchmarks_dir

# Suites and our task YAMLs live beside the package in the checkout (not inside the wheel).
def suites_dir() -> Path:
    """Where the suites are: ``LMFORGE_EVAL_SUITES_DIR`` when set (read at each call), else the
    repository's ``eval_suites/``."""
    return Path(os.environ.get("LMFORGE_EVAL_SUITES_DIR") or REPO_ROOT / "eval_suites")
TASKS_DIR = REPO_ROOT / "lmforge" / "benchmarks"  # our lm-eval tasks: one folder per benchmark
# Our own tasks: they run completions in lmforge's sandbox, so lm-eval's unsafe-code gate is ours.
SANDBOXED_TASKS = {"lmforge_humaneval"}


# ----------------------------------------------------------------------------------------------
# Suites

class SuiteTask(BaseModel):
    """One entry of a suite YAML."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default
    name: str = Field(description="the task's name in summary.json and the report")
    source: Literal["auto", "hub", "local"] = Field(
        "auto", description="where its data comes from: local (our task over the benchmark "
        "mirror), hub (lm-eval's stock task), auto (local when the mirror has it, else hub)")
    local_task: str | None = Field(None, description="our lm-eval task under the task "
                                   "directory (reads local files)")
    hub_task: str | None = Field(None, description="lm-eval's stock task (reads the hub)")
    num_fewshot: int | None = Field(None, description="few-shot examples; none = the task's own")
    limit: int | float | None = Field(
        None, description="lm-eval's limit: documents per task (per sub-task for groups such as "
        "MMLU's subjects); < 1 is a fraction")
    gen_kwargs: dict[str, Any] | None = Field(None, description="generation settings passed to "
                                              "lm-eval (e.g. max_gen_toks)")
    metric: str = Field(description="'metric,filter' as in lm-eval's results, e.g. 'acc,none'")
    min_score: float | None = Field(None, description="the task fails below this score")
    max_score: float | None = Field(None, description="the task fails above this score (for "
                                    "lower-is-better metrics such as bits per byte)")


class Suite(BaseModel):
    """A suite YAML: named tasks, each with its metric and optional bounds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the suite's name")
    description: str = Field("", description="what the suite is for")
    tasks: list[SuiteTask] = Field(description="the tasks it runs, in order")
    max_regression: float | None = Field(
        None, description="a drop of a task's score by more than this (in its own units, in its "
        "worse direction) against the previous evaluation of the same model is a regression; "
        "none: not checked")
    block_on_regression: bool = Field(False, description="whether a regression blocks what runs "
                                      "downstream (the report), or only warns")


def suite_names() -> list[str]:
    """The suites under ``eval_suites/`` (one YAML each)."""
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def regressions(previous: dict[str, float], summary: "EvalSummary",
                max_regression: float) -> dict[str, dict[str, float]]:
    """Tasks whose score got worse than ``previous`` by more than ``max_regression``.

    Worse means lower for a higher-is-better metric (accuracy, pass@1) and higher for the others
    (bits per byte). Tasks without a previous or current score are not compared.
    """
    found = {}
    for t in summary.tasks:
        if t.score is None or t.name not in previous or previous[t.name] is None:
            continue
        before = float(previous[t.name])
        worse_by = (before - t.score) if t.higher_is_better is not False else (t.score - before)
        if worse_by > max_regression:
            found[t.name] = {"previous": before, "current": t.score, "worse_by": worse_by}
    return found


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """A suite by name (``eval_suites/<name>.yaml``) or by path."""
    p = Path(name_or_path)
    if not p.is_file():
        p = suites_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in suites_dir().glob("*.yaml"))
        raise LmforgeError(f"unknown suite {name_or_path!r}: not a file, and not one of {known}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise LmforgeError(f"suite {p}: not valid YAML{at} ({getattr(e, 'problem', None) or type(e).__name__})") from e
    if not isinstance(data, dict):
        raise LmforgeError(f"suite {p}: expected a mapping with name and tasks, got {type(data).__name__}")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:3])
        more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
        raise LmforgeError(f"suite {p}: {problems}{more}") from e
    for t in suite.tasks:
        if not (t.local_task or t.hub_task):
            raise LmforgeError(f"suite {p}: task {t.name} names neither local_task nor hub_task")
    return suite


# ----------------------------------------------------------------------------------------------
# Config and results

class EvalConfig(BaseModel):
    """What to evaluate and how. Defaults are the tiny preset (CPU, smoke suite)."""

    model_dir: str = Field(description="Hugging Face model directory")
    adapter_dir: str | None = Field(None, description="PEFT (LoRA) adapter directory applied "
                                    "to the model")
    suite: str = Field("smoke", description="suite name (eval_suites/NAME.yaml) or a YAML path")
    limit: int | float | None = Field(None, description="override every task's limit: documents "
                                      "per task (per subject for MMLU); < 1 is a fraction")
    source: Literal["suite", "auto", "hub", "local"] = Field(
        "suite", description="override every task's data source; 'suite' keeps each task's own")
    benchmarks_dir: str | None = Field(None, description="local MMLU/GSM8K mirror; default "
                                       "lmforge.paths.benchmarks_dir() ($LMFORGE_BENCHMARKS_DIR)")
    heldout_path: str | None = Field(None, description="held-out documents for bits per byte "
                                     "(val.parquet, or JSONL with text)")
    out_dir: str = Field("artifacts/eval", description="output directory (results.json, "
                         "summary.json, samples/)")
    cache_dir: str | None = Field(None, description="normalized benchmark files; default ~/.cache/lmforge/eval")
    batch_size: int = Field(8, description="lm-eval batch size")
    device: str = Field("cpu", description="torch device of the model")
    dtype: str = Field("float32", description="torch dtype the model is loaded in")
    threads: int | None = Field(None, description="torch CPU threads; none = torch's default")
    max_length: int | None = Field(None, description="context length; default the model config's")
    apply_chat_template: bool = Field(False, description="wrap prompts in the model's chat "
                                      "template (ChatML): for chat (SFT) models")
    sandbox_timeout: float = Field(3.0, gt=0, description="wall-clock seconds per HumanEval "
                                   "program in the sandbox")
    bootstrap_iters: int = Field(0, description="lm-eval's bootstrap for the stderr of non-mean "
                                 "metrics (slow); 0 = off")
    seed: int = Field(1234, description="seed of lm-eval's sampling (fewshot, generation)")
    log_samples: bool = Field(True, description="write every prompt and response to "
                              "out_dir/samples/<task>.jsonl")


class TaskResult(BaseModel):
    name: str
    lm_eval_task: str | None = None
    source: str
    status: Literal["ok", "skipped"]
    reason: str | None = None
    scores: dict[str, float] = {}
    metric: str
    score: float | None = None
    higher_is_better: bool | None = None
    min_score: float | None = None
    max_score: float | None = None
    passed: bool | None = None  # None: skipped, or no threshold
    num_fewshot: int | None = None
    n_samples: int | None = None
    seconds: float = 0.0


class EvalSummary(BaseModel):
    model_dir: str
    adapter_dir: str | None
    suite: str
    tasks: list[TaskResult]
    results_path: str | None = None
    seconds: float = 0.0

    @property
    def skipped(self) -> dict[str, str]:
        return {t.name: t.reason or "" for t in self.tasks if t.status == "skipped"}

    @property
    def failed(self) -> list[str]:
        return [t.name for t in self.tasks if t.passed is False]

    @property
    def scores(self) -> dict[str, float]:
        """The primary score of every task that ran, by suite task name."""
        return {t.name: t.score for t in self.tasks if t.score is not None}

    def to_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"suite": self.suite, "model_dir": self.model_dir,
                                "adapter_dir": self.adapter_dir or "", "seconds": round(self.seconds, 1),
                                "thresholds_passed": not self.failed, "failed": self.failed,
                                "skipped": self.skipped}
        for t in self.tasks:
            if t.score is not None:
                meta[f"{t.name}/{t.metric.split(',')[0]}"] = t.score
        return meta

    def to_markdown(self) -> str:
        lines = ["| task | metric | score | threshold | status | n | shots |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for t in self.tasks:
            thr = " ".join(x for x in (f">= {t.min_score:g}" if t.min_score is not None else "",
                                       f"<= {t.max_score:g}" if t.max_score is not None else "") if x)
            if t.status == "skipped":
                status = f"skipped: {t.reason}"
            else:
                status = {True: "pass", False: "FAIL", None: "ok"}[t.passed]
            score = f"{t.score:.4f}" if t.score is not None else "–"
            lines.append(f"| {t.name} | {t.metric} | {score} | {thr or '–'} | {status} | "
                         f"{t.n_samples if t.n_samples is not None else '–'} | "
                         f"{t.num_fewshot if t.num_fewshot is not None else '–'} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Evaluation

def _resolve_source(task: SuiteTask, cfg: EvalConfig, mirror: Path | None) -> tuple[str, str]:
    """(source, lm-eval task name) for one suite task."""
    source = task.source if cfg.source == "suite" else cfg.source
    if source == "auto":
        source = "local" if (mirror is not None or not task.hub_task) else "hub"
    if source == "hub" and not task.hub_task:
        source = "local"  # HumanEval (packaged) and held-out text have no hub variant
    if source == "local" and not task.local_task:
        source = "hub"
    return source, (task.local_task if source == "local" else task.hub_task)  # type: ignore[return-value]


def _load_model(cfg: EvalConfig):
    from lm_eval.models.huggingface import HFLM

    _check_model_dirs(cfg)
    model_dir = Path(cfg.model_dir)
    return HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), peft=cfg.adapter_dir,
                device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                max_length=cfg.max_length)


# What `save_pretrained` writes: one of these makes a directory a model with weights.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def _check_model_dirs(cfg: EvalConfig) -> None:
    """A one-line error for a model or adapter directory that cannot load, before lm-eval tries."""
    model_dir = Path(cfg.model_dir)
    if not model_dir.is_dir():
        raise LmforgeError(f"--model {model_dir}: no such directory")
    if not (model_dir / "config.json").is_file():
        raise LmforgeError(f"--model {model_dir}: not a Hugging Face model directory (no config.json)")
    if not any((model_dir / w).is_file() for w in _WEIGHTS):
        raise LmforgeError(f"--model {model_dir}: no weights in it (none of {', '.join(_WEIGHTS)})")
    if not ((model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()):
        raise LmforgeError(f"--model {model_dir}: no tokenizer in it (no tokenizer.json / tokenizer_config.json)")
    if cfg.adapter_dir:
        adapter = Path(cfg.adapter_dir)
        if not (adapter / "adapter_config.json").is_file():
            raise LmforgeError(f"--adapter {adapter}: not a PEFT adapter directory (no adapter_config.json)")
        if not any((adapter / w).is_file() for w in ("adapter_model.safetensors", "adapter_model.bin")):
            raise LmforgeError(f"--adapter {adapter}: no adapter weights in it")


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k}


def _write_outputs(out_dir: Path, files: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> None:
    """Write the whole output directory at once: a failed or killed evaluation leaves the previous
    one in place, never a mix of both."""
    with atomic_path(out_dir, "dir") as tmp:
        tmp.mkdir()
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        if samples:
            (tmp / "samples").mkdir()
        for task_name, rows in samples.items():
            (tmp / "samples" / f"{task_name}.jsonl").write_text(
                "".join(json.dumps(r, default=str) + "\n" for r in rows))


def evaluate(cfg: EvalConfig) -> EvalSummary:
    """Run the suite on the model; write results.json and summary.json to ``cfg.out_dir``."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lmforge.evaluate.isolation import SandboxConfig, configured
    from lmforge.evaluate.tasks import DataUnavailable, default_cache_dir, task_include_paths

    t_start = time.perf_counter()
    # Everything a user can get wrong is checked before the model loads and the tasks run.
    suite = load_suite(cfg.suite)
    out_dir = check_output(cfg.out_dir, "dir")
    _check_model_dirs(cfg)
    mirror = Path(cfg.benchmarks_dir) if cfg.benchmarks_dir else default_benchmarks_dir()
    if mirror is not None and not mirror.is_dir():
        mirror = None
    plan = [(t, *_resolve_source(t, cfg, mirror)) for t in suite.tasks]
    # The model is a local directory: never let transformers reach for the hub. Datasets may
    # go online only when the suite asks for a hub task (and the user has not said offline).
    os.environ["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "1") if any(s == "hub" for _, s, _ in plan) else "1"
    if not any(s == "hub" for _, s, _ in plan):
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    # HumanEval's metric hook runs inside lm-eval: it gets the sandbox's settings from the config
    # installed around simple_evaluate below. Generated code must not see the model, its outputs
    # or the data (see lmforge.evaluate.isolation).
    base_sandbox = SandboxConfig()
    sandbox_cfg = base_sandbox.model_copy(update={
        "timeout": cfg.sandbox_timeout,
        "hide": base_sandbox.hide + [str(Path(p).resolve()) for p in (
            cfg.model_dir, cfg.adapter_dir, cfg.out_dir, cfg.heldout_path, cfg.cache_dir, mirror) if p]})
    logging.getLogger("lm_eval.api.task").setLevel(logging.ERROR)  # per-subject chatter
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)

    metadata = {"benchmarks_dir": str(mirror) if mirror else None,
                "cache_dir": cfg.cache_dir or str(default_cache_dir()),
                "heldout_path": cfg.heldout_path}
    managers: dict[str, TaskManager] = {}

    def manager(source: str) -> TaskManager:
        if source not in managers:  # the stock index takes seconds to build: only when needed
            managers[source] = (TaskManager(include_path=task_include_paths(), include_defaults=False, metadata=metadata)
                                if source == "local" else TaskManager(metadata=metadata))
        return managers[source]

    unknown = [f"{t.name} ({source} task {name!r})" for t, source, name in plan
               if name not in manager(source).all_tasks]
    if unknown:
        raise LmforgeError(f"suite {suite.name}: no such lm-eval task for {', '.join(unknown)} "
                           f"(local tasks are in {TASKS_DIR}, hub tasks are lm-eval's own)")

    print(f"[eval] loading {cfg.model_dir}" + (f" + adapter {cfg.adapter_dir}" if cfg.adapter_dir else ""),
          file=sys.stderr)
    lm = _load_model(cfg)
    samples: dict[str, list[dict[str, Any]]] = {}
    merged: dict[str, Any] = {}
    results: list[TaskResult] = []
    for task, source, lm_name in plan:
        t0 = time.perf_counter()
        base = dict(name=task.name, lm_eval_task=lm_name, source=source, metric=task.metric,
                    min_score=task.min_score, max_score=task.max_score, num_fewshot=task.num_fewshot)
        try:
            loaded = manager(source).load([lm_name])
        except DataUnavailable as e:
            results.append(TaskResult(**base, status="skipped", reason=str(e)))
            print(f"[eval] {task.name}: skipped: {e}", file=sys.stderr)
            continue
        except Exception as e:  # noqa: BLE001 - a hub dataset that cannot be fetched
            if source != "hub":
                raise
            reason = f"hub data unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
            results.append(TaskResult(**base, status="skipped", reason=reason))
            print(f"[eval] {task.name}: skipped: {reason}", file=sys.stderr)
            continue
        top = loaded["groups"][lm_name] if lm_name in loaded["groups"] else loaded["tasks"][lm_name]
        limit = cfg.limit if cfg.limit is not None else task.limit
        print(f"[eval] {task.name}: {lm_name} ({source}), {task.num_fewshot or 0}-shot, limit {limit}",
              file=sys.stderr)
        with configured(sandbox_cfg):
            res = simple_evaluate(
                model=lm, tasks=[top], task_manager=manager(source), num_fewshot=task.num_fewshot,
                limit=limit, gen_kwargs=task.gen_kwargs, bootstrap_iters=cfg.bootstrap_iters,
                log_samples=cfg.log_samples, apply_chat_template=cfg.apply_chat_template,
                fewshot_as_multiturn=cfg.apply_chat_template,
                confirm_run_unsafe_code=lm_name in SANDBOXED_TASKS,
                random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
            )
        if res.get("samples"):
            found = res.pop("samples")
            if cfg.log_samples:
                samples.update(found)
        for key, value in res.items():
            if isinstance(value, dict) and key != "config":
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
        scores = _numeric(res["results"][lm_name])
        score = scores.get(task.metric)
        if score is None:
            raise LmforgeError(f"suite {suite.name}: task {task.name}: lm-eval reported no {task.metric!r}; it reported {sorted(scores)}")
        passed = None
        if task.min_score is not None or task.max_score is not None:
            passed = ((task.min_score is None or score >= task.min_score)
                      and (task.max_score is None or score <= task.max_score))
        hib = res.get("higher_is_better", {}).get(lm_name, {}).get(task.metric.split(",")[0])
        n = sum(v.get("effective", 0) for k, v in res.get("n-samples", {}).items())
        results.append(TaskResult(**base, status="ok", scores=scores, score=score, passed=passed,
                                  higher_is_better=hib, n_samples=n, seconds=time.perf_counter() - t0))
        print(f"[eval] {task.name}: {task.metric} = {score:.4f} ({n} docs, {time.perf_counter() - t0:.1f}s)",
              file=sys.stderr)

    summary = EvalSummary(model_dir=str(cfg.model_dir), adapter_dir=cfg.adapter_dir, suite=suite.name,
                          tasks=results, seconds=time.perf_counter() - t_start)
    files: dict[str, Any] = {}
    if merged:
        summary.results_path = str(out_dir / "results.json")
        merged["lmforge"] = summary.to_metadata()
        files["results.json"] = merged
    files["summary.json"] = summary.model_dump()
    _write_outputs(out_dir, files, samples)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmforge eval", description=__doc__.split("\n\n")[0])
    add_config_arguments(ap, EvalConfig)
    # The short names the README and scripts use.
    for alias, field in (("--model", "model_dir"), ("--adapter", "adapter_dir"),
                         ("--out", "out_dir"), ("--heldout", "heldout_path")):
        ap.add_argument(alias, dest=field, default=None, help=f"same as --{field.replace('_', '-')}")
    ap.add_argument("--chat", dest="apply_chat_template", action="store_const", const=True,
                    default=None, help="same as --apply-chat-template")
    args = ap.parse_args(argv)
    try:
        summary = evaluate(config_from_args(EvalConfig, args))
    except (LmforgeError, ValueError, FileNotFoundError) as e:
        print(f"lmforge eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(summary.to_markdown())
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('eval', main, sys.argv[1:]))
