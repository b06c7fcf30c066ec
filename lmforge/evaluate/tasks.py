"""What the evaluation harness needs from our lm-eval tasks, which live with their benchmarks.

Each benchmark's folder under ``lmforge/benchmarks/`` holds its lm-eval task YAML(s) and its
``reader.py``; the YAMLs' ``custom_dataset: !function reader.load`` loads the data through the
benchmark's one reader, with the TaskManager's metadata (``benchmarks_dir``, ``cache_dir``,
``heldout_path``, ``humaneval_path``) as keyword arguments. Items have the columns of the hub
datasets the stock lm-eval tasks read, so prompts are identical.

A loader raises ``DataUnavailable`` (with a reason a person can act on) when its files are not
there; the harness reports such a task as skipped instead of dropping or faking it.

:func:`check_local_tasks` is the cheap, early check of a suite: every ``local_task`` it names is
defined by one of our task YAMLs (read as text, without lm-eval, so it can run when the suite or
the definitions load, long before a model does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from lmforge.benchmarks import DataUnavailable, get, task_include_paths
from lmforge.errors import LmforgeError

__all__ = ["DataUnavailable", "check_local_tasks", "default_cache_dir", "load_gsm8k",
           "load_heldout", "load_humaneval", "load_mmlu", "local_task_names",
           "task_include_paths"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE_DIR", Path.home() / ".cache" / "lmforge")) / "eval"


class _TaskYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when present
    """Reads task YAMLs for their names only: ``!function`` tags stay unresolved strings."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def local_task_names(extra_roots: Iterable[str | os.PathLike] = ()) -> dict[str, Path]:
    """Every task, group and tag name our task YAMLs define, with the file defining it."""
    names: dict[str, Path] = {}
    for root in task_include_paths(extra_roots):
        for path in sorted(Path(root).rglob("*.yaml")):
            try:
                doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise LmforgeError(f"task definition {path}: not valid YAML "
                                   f"({getattr(e, 'problem', None) or type(e).__name__})") from None
            if not isinstance(doc, dict):
                continue
            for key in ("task", "group", "tag"):
                values = doc.get(key)
                for name in values if isinstance(values, list) and key == "tag" else [values]:
                    if isinstance(name, str):
                        names.setdefault(name, path)
    return names


def check_local_tasks(suite: Any, suite_path: str | os.PathLike,
                      extra_roots: Iterable[str | os.PathLike] = (),
                      known: dict[str, Path] | None = None) -> None:
    """Raise one line naming the suite file and the key when a suite task's ``local_task`` is
    not one of our tasks (``suite`` is a harness ``Suite``: ``.tasks[i].local_task``)."""
    known = local_task_names(extra_roots) if known is None else known
    for i, t in enumerate(suite.tasks):
        if t.local_task and t.local_task not in known:
            tops = sorted(n for n in known if n.startswith("lmforge_") and "_mmlu_" not in n)
            raise LmforgeError(f"suite {suite_path}: tasks[{i}] ({t.name}).local_task: no task "
                               f"{t.local_task!r} in lmforge/benchmarks/*/ (known: {', '.join(tops)})")


# Loaders by benchmark, for callers that want a DatasetDict without going through lm-eval.

def load_mmlu(subject: str, benchmarks_dir=None, **kw: Any):
    from lmforge.benchmarks.mmlu.reader import load

    return load(subject, benchmarks_dir=benchmarks_dir, **kw)


def load_gsm8k(benchmarks_dir=None, **_: Any):
    return get("gsm8k").dataset(benchmarks_dir=benchmarks_dir)


def load_humaneval(humaneval_path=None, **_: Any):
    return get("humaneval").dataset(path=humaneval_path)


def load_heldout(heldout_path=None, **_: Any):
    from lmforge.benchmarks.heldout.reader import load

    return load(heldout_path)
