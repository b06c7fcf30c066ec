"""Adapter tasks: what each LoRA adapter over the one base model is trained to do.

    adapter_tasks/<name>.yaml      one task per file; the file name is the task's name

One base model, one adapter per task: swapping the adapter swaps the task. In the Dagster graph
each task is a partition of ``lora_adapter``. A task says where its conversations come from:

    source: documents   instruction examples derived from the crawled pydoc pages; ``kinds``
                        picks which (see ``sft_data.DOCUMENT_KINDS``)
    source: qa          question/answer chats of a benchmark (``lmforge.benchmarks``): the
                        ``benchmark`` named (its ``split``, default train), through its reader;
                        or a GSM8K-format JSONL at ``path`` (a relative path is read from the
                        benchmark mirror, ``LMFORGE_BENCHMARKS_DIR``)
    source: jsonl       a chat JSONL file (``{"messages": [...]}``) at ``path``
    source: hub         the Hugging Face Hub data set named by ``path`` (``split``); online only

``limit`` caps the number of conversations. Adding a task is adding a YAML file; the directory
can be moved with ``LMFORGE_ADAPTER_TASKS_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmforge.curate.text import InputError, config_error
from lmforge.errors import LmforgeError

from lmforge.benchmarks import DataUnavailable
from lmforge.benchmarks import names as benchmark_names
from lmforge.benchmarks import get as get_benchmark
from lmforge.paths import REPO_ROOT, benchmarks_dir
from lmforge.train.sft_data import (DOCUMENT_KINDS, NoConversations, ChatFileStats,
                                    sft_data_from_benchmark, sft_data_from_documents,
                                    sft_data_from_hub, sft_data_from_jsonl, sft_data_from_qa)


def tasks_dir() -> Path:
    return Path(os.environ.get("LMFORGE_ADAPTER_TASKS_DIR", REPO_ROOT / "adapter_tasks"))


class TaskDataUnavailable(LmforgeError, RuntimeError):
    """The task's source is not on this machine (no benchmark mirror, offline hub, ...)."""


class TaskError(InputError):
    """A mistake in a task file (malformed YAML, an unknown setting, a file that is not there)."""


class AdapterTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    source: Literal["documents", "qa", "jsonl", "hub"]
    path: str | None = None
    benchmark: str | None = None  # source qa: a registered benchmark with a question/answer form
    kinds: list[str] | None = None
    split: str = "train"
    limit: int = Field(300, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "AdapterTask":
        if self.source == "documents":
            unknown = set(self.kinds or ()) - set(DOCUMENT_KINDS)
            if unknown:
                raise ValueError(f"task {self.name}: unknown kinds {sorted(unknown)}; "
                                 f"known: {', '.join(DOCUMENT_KINDS)}")
            if self.path or self.benchmark:
                raise ValueError(f"task {self.name}: source 'documents' reads the curated "
                                 "documents and takes no path or benchmark")
        elif self.benchmark is not None and self.source != "qa":
            raise ValueError(f"task {self.name}: benchmark only applies to source 'qa'")
        elif self.benchmark is not None and self.benchmark not in benchmark_names():
            raise ValueError(f"task {self.name}: unknown benchmark {self.benchmark!r}; known: "
                             f"{', '.join(benchmark_names())}")
        elif self.source == "qa" and (self.benchmark is None) == (self.path is None):
            raise ValueError(f"task {self.name}: source 'qa' needs a benchmark or a path "
                             "(not both)")
        elif "split" in self.model_fields_set and self.source != "hub" and not self.benchmark:
            raise ValueError(f"task {self.name}: split only applies to source 'hub' and to a "
                             "qa benchmark")
        elif not self.path and not self.benchmark:
            raise ValueError(f"task {self.name}: source {self.source!r} needs a path")
        elif self.kinds:
            raise ValueError(f"task {self.name}: kinds only apply to source 'documents'")
        return self


def task_names() -> list[str]:
    """The tasks under ``adapter_tasks/`` (one YAML each)."""
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


def load_task(name: str) -> AdapterTask:
    path = tasks_dir() / f"{name}.yaml"
    if not path.is_file():
        raise TaskError(f"unknown adapter task {name!r}; known: {', '.join(task_names()) or 'none'} "
                        f"(in {tasks_dir()})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or type(e).__name__
        raise TaskError(f"{path}{where}: not valid YAML ({why})") from None
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: expected a mapping of task settings, got "
                        f"{type(raw).__name__}")
    if raw.setdefault("name", name) != name:
        raise TaskError(f"{path}: name {raw['name']!r} differs from the file name {name!r}")
    try:
        return AdapterTask.model_validate(raw)
    except ValidationError as e:
        raise TaskError(f"{path}: {config_error(e)}") from None


def _resolve(task: AdapterTask) -> Path:
    """The task's file. A relative ``qa`` path is read from the benchmark mirror, whose absence
    (or a file it lacks) makes the task unavailable on this machine; any other relative path is
    read beside the task's YAML, and a missing file there is a mistake in the task."""
    path = Path(task.path)
    if task.source == "qa" and not path.is_absolute():
        mirror = benchmarks_dir()
        if mirror is None:
            raise TaskDataUnavailable(f"task {task.name}: {task.path} is read from the benchmark "
                                      "mirror, and none was found (set LMFORGE_BENCHMARKS_DIR)")
        if not (mirror / path).is_file():
            raise TaskDataUnavailable(f"task {task.name}: the benchmark mirror {mirror} has no {path}")
        return mirror / path
    if not path.is_absolute():
        path = tasks_dir() / path
    if not path.is_file():
        raise TaskError(f"task {task.name}: no file at {path}")
    return path


def _from_benchmark(task: AdapterTask, out_path) -> ChatFileStats:
    """Chats from a registered benchmark's split; missing data makes the task unavailable here."""
    try:
        bench = get_benchmark(task.benchmark)
    except LmforgeError as e:
        raise TaskError(f"task {task.name}: {e}") from None
    if bench.chat is None:
        raise TaskError(f"task {task.name}: benchmark {bench.name} has no question/answer form")
    if task.split not in bench.splits:
        raise TaskError(f"task {task.name}: benchmark {bench.name} has no split {task.split!r} "
                        f"(it has {', '.join(bench.splits)})")
    if bench.locate is None:
        mirror = benchmarks_dir()
        if mirror is None:
            raise TaskDataUnavailable(f"task {task.name}: {bench.name} is read from the benchmark "
                                      "mirror, and none was found (set LMFORGE_BENCHMARKS_DIR)")
    else:
        mirror = None
    try:
        return sft_data_from_benchmark(bench.name, out_path, task.split, limit=task.limit,
                                       require_examples=True, benchmarks_dir=mirror)
    except DataUnavailable as e:
        raise TaskDataUnavailable(f"task {task.name}: {e}") from None


def build_task_data(task: AdapterTask, out_path: str | os.PathLike,
                    documents: str | os.PathLike | None = None) -> ChatFileStats:
    """Write the task's conversations to ``out_path`` (chat JSONL, atomically).

    ``documents`` is the curated documents Parquet (file or directory) for ``source: documents``.
    Raises ``TaskDataUnavailable`` when the source is not on this machine or gives no
    conversation, ``ValueError`` for a mistake in the task (a file that is not there).
    """
    try:
        return _build(task, out_path, documents)
    except NoConversations as e:  # nothing was written: an earlier output stays as it was
        raise TaskDataUnavailable(f"task {task.name}: its source gave no conversations "
                                  f"({str(e).split(': gave no conversations ', 1)[-1]})") from None


def _build(task: AdapterTask, out_path, documents) -> ChatFileStats:
    if task.source == "documents":
        if documents is None or not Path(documents).exists():
            raise TaskDataUnavailable(f"task {task.name}: no curated documents at {documents}")
        return sft_data_from_documents(documents, out_path, max_examples=task.limit, seed=task.seed,
                                       kinds=task.kinds, require_examples=True)
    if task.source == "qa" and task.benchmark:
        return _from_benchmark(task, out_path)
    if task.source == "qa":
        return sft_data_from_qa(_resolve(task), out_path, limit=task.limit, require_examples=True)
    if task.source == "hub":
        try:
            return sft_data_from_hub(task.path, out_path, split=task.split, limit=task.limit,
                                     require_examples=True)
        except LmforgeError:
            raise
        except RuntimeError as e:
            raise TaskDataUnavailable(str(e)) from e
    return sft_data_from_jsonl(_resolve(task), out_path, limit=task.limit, require_examples=True)
