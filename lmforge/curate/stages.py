"""The curation chain: an ordered list of stages over Parquet documents (datatrove's list of blocks).

Each stage reads one day's documents of the stage before it and writes the documents it keeps,
plus those it removed with the reason, beside them: shard by shard (one input part to one output
part, :func:`run_sharded`), in this process, on a process pool or on a Ray cluster
(``lmforge.curate.parallel``), with the day's manifest written last. A stage is declared once,
here, as a :class:`Stage`: its name (the asset and artifact directory), its command, its config
(a pydantic model whose fields all have descriptions), the function that runs it, and the checks
that guard its output. From this list the graph generates the day-partitioned assets and their
checks (``assets/curation.py``), the ``lmforge`` subcommands, the report's funnel and the demo's
summary; whatever comes after curation reads the last stage's output, "the curated corpus".

Adding a stage is one engine module (config, function, ``main``), one entry in
:data:`CURATION_STAGES` at the place it belongs, and one test. Nothing here imports a stage's
module until the stage is used, so loading the graph stays light.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lmforge.curate.parallel import ParallelConfig

# The step before the chain: WARC files -> documents. It reads archives, not documents, so it is
# not a Stage; the chain starts from its output.
EXTRACTED = "extracted_documents"


@dataclass(frozen=True)
class StageRun:
    """What one run of a stage gets: the day's input and outputs, its config, where its shards
    run (``parallel``), and where it may keep state across days (``state_dir``) or read the
    output of another asset (``needs``).

    ``input`` is a Parquet file, a day directory (parts and a manifest) or a directory of them.
    ``output`` is a day directory (a path not ending in ``.parquet``: one part per input part,
    the removed rows beside each part, ``removed`` unused) or one Parquet file (the removed rows
    in ``removed``)."""

    input: Path
    output: Path
    removed: Path | None
    config: Any
    day: str | None = None
    state_dir: Path | None = None
    needs: Mapping[str, Path] = field(default_factory=dict)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass(frozen=True)
class Check:
    """A check on a stage's output, computed from its run's metadata (no Dagster here).

    ``fn(metadata, documents_in, documents_out)`` returns ``(passed, description, metadata)``.
    ``blocking`` checks stop the stages after it; others warn.
    """

    name: str
    fn: Callable[[Mapping[str, Any], int, int], tuple[bool, str | None, dict[str, Any]]]
    blocking: bool = False
    description: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    """The asset, and the artifact directory: ``<name>/documents/<day>/`` (parts, manifest)."""
    command: str
    """The ``lmforge`` subcommand; its module's ``main(argv)`` is the CLI."""
    module: str
    """The engine module: it defines the config class and ``main``."""
    config: str
    """The config class's name in ``module``."""
    run: Callable[[StageRun], Any] | str
    """Runs the stage and returns stats with ``to_metadata()``: the name of a function in
    ``module`` called as ``fn(input, output, removed, config)`` on each shard (one input part to
    one output part, see :func:`run_sharded`), or a callable taking the whole :class:`StageRun`
    (for stages that keep state or read another asset)."""
    summary: str
    """One line: the command's help and the asset's description."""
    version: str = "1"
    """Bump when the stage's output changes for the same input (the asset's code_version)."""
    kinds: tuple[str, ...] = ("parquet",)
    must_keep: bool = True
    """A day that keeps no document is an error (blocking). False for stages where a day may
    legitimately add nothing (dedup: a day that repeats earlier days)."""
    needs: tuple[str, ...] = ()
    """Other assets whose artifact directory the stage reads (the quality classifier)."""
    fixed_fields: tuple[str, ...] = ()
    """Config fields the graph sets itself (paths); not in the run config."""
    config_fields: tuple[str, ...] | None = None
    """Only these config fields are the stage's (the rest belong to another asset)."""
    checks: tuple[Check, ...] = ()
    depends_on_previous_day: bool = False
    """A day's run reads what the day before wrote (dedup's index): the day's asset depends on
    the day before's, so days run in order."""
    merge: str | None = None
    """The function in ``module`` that combines the stats of a day's parts (``merge(records,
    seconds, config)``, records being each part's stats as JSON); without one, the numbers in
    the parts' ``to_metadata()`` are added up."""

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def __call__(self, run: StageRun) -> Any:
        if isinstance(self.run, str):
            return run_sharded(self.module, self.run, run.input, run.output, run.removed,
                               run.config, run.parallel, name=self.name, version=self.version,
                               merge=self.merge)
        return self.run(run)


# ------------------------------------------------------------------------------------------------
# Shards: a stage's function applied to each input part (or WARC file), each writing one part of
# the day directory; the manifest is written when every part is there.


def is_parts_output(path: str | os.PathLike) -> bool:
    """Whether an output is a day directory of parts (else one Parquet file)."""
    return not str(path).endswith(".parquet")


@dataclass(frozen=True)
class PartTask:
    """One shard: ``module.function(input, output, removed, config, *args)`` writes one part."""

    module: str
    function: str
    input: Any
    output: str
    removed: str
    config: Any
    args: tuple = ()
    fingerprint: str = ""
    source: tuple[str, ...] = ()
    record: str = ""

    def __str__(self) -> str:
        names = [os.path.basename(s.split(":")[0]) for s in self.source] or [str(self.input)]
        return names[0] + (f" (+{len(names) - 1} files)" if len(names) > 1 else "")


def file_identity(path: str | os.PathLike) -> str:
    """``name:size:sha256`` of a file: a part made from it is redone when its bytes changed (not
    when it was only copied back or touched, nor when the artifact root moved)."""
    import hashlib

    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:32]
    return f"{os.path.basename(path)}:{os.path.getsize(path)}:{digest}"


def config_fingerprint(name: str, version: str, config: Any, extra: Sequence[str] = ()) -> str:
    """What a stage's output depends on besides its input: the stage, its version, its config,
    and ``extra`` (identities of other files it reads, a model). Not where it ran."""
    import hashlib
    import json

    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    text = json.dumps({"stage": name, "version": version, "config": cfg, "extra": list(extra)},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(obj: Any) -> Any:
    import dataclasses
    from array import array

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, array)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # a numpy scalar
        return obj.item()
    return obj


def _call(task: PartTask) -> Any:
    fn = getattr(importlib.import_module(task.module), task.function)
    return fn(task.input, task.output, task.removed, task.config, *task.args)


def run_part(task: PartTask) -> dict[str, Any]:
    """Write one part, then its record (``part-NNNNN.done.json``): a part without a record that
    matches is never trusted, whatever is on disk."""
    import dataclasses

    from lmforge.io import count_rows, write_json

    stats = _call(task)
    removed = Path(task.removed)
    record = {"fingerprint": task.fingerprint, "source": list(task.source),
              "rows": count_rows(task.output),
              "removed_rows": count_rows(removed) if removed.exists() else 0,
              "stats": _jsonable(stats) if dataclasses.is_dataclass(stats) else None,
              "metadata": _jsonable(stats.to_metadata()) if hasattr(stats, "to_metadata") else {}}
    write_json(task.record, record)
    return record


def part_done(task: PartTask) -> dict[str, Any] | None:
    """The record of a part a run before wrote from the same input and config, when its files
    are whole (their row counts match); else None (the part is redone)."""
    from lmforge.io import open_parquet, read_json

    try:
        record = read_json(task.record)
        if (record.get("fingerprint") != task.fingerprint
                or record.get("source") != list(task.source)):
            return None
        removed = Path(task.removed)
        if open_parquet(task.output).metadata.num_rows != record["rows"]:
            return None
        if (open_parquet(removed).metadata.num_rows if removed.exists() else 0) \
                != record["removed_rows"]:
            return None
    except Exception:  # noqa: BLE001 - missing, damaged, planted: the part is redone
        return None
    return record


def run_sharded(module: str, function: str, input: Any, output: str | os.PathLike,
                removed: str | os.PathLike | None, config: Any,
                parallel: ParallelConfig | None = None, *, args: tuple = (), name: str = "",
                version: str = "1", merge: str | None = None, finish: str | None = None,
                shards: Sequence[tuple[Any, Sequence[str | os.PathLike]]] | None = None,
                extra_fingerprint: Sequence[str] = ()) -> Any:
    """Run a stage's ``module.function(input, output, removed, config, *args)`` over ``input``.

    To a day directory (``output`` not ending in ``.parquet``): one part per shard, by default
    one per Parquet file of ``input`` (``shards`` gives others: ``(task input, its files)``, e.g.
    one WARC file each); parts already written by a killed or earlier run from the same input
    and config are kept; ``module.finish(output, tasks, records)`` may then rewrite parts (and
    their records) for what no single shard could see; the manifest is written last. Returns the
    parts' stats combined by ``module.merge``. To one file: one shard, the function called once
    (in this process for the local backend with one worker) and its stats returned."""
    import time

    from lmforge.curate.parallel import run_tasks
    from lmforge.io import (claim_output_dir, parquet_files, part_path, removed_path_for,
                            write_manifest)

    parallel = parallel or ParallelConfig()
    desc = name or function
    if not is_parts_output(output):
        task = PartTask(module, function, input, str(output),
                        str(removed or removed_path_for(output)), config, tuple(args))
        if parallel.backend == "local" and parallel.workers == 1:
            return _call(task)  # exactly the single process of before: no progress lines
        return run_tasks(_call, [task], parallel, desc=desc)[0]

    t0 = time.perf_counter()
    if shards is None:
        shards = [(str(f), [f]) for f in parquet_files(input)]
    if not shards:
        from lmforge.errors import MissingInputError

        raise MissingInputError(f"no input parts for {desc} in {input}")
    target = Path(output).resolve()
    for _, files in shards:
        for f in files:
            if target in Path(f).resolve().parents:
                from lmforge.errors import InputError

                raise InputError(f"output {output} holds the input {f}; give another directory")
    out = claim_output_dir(output)
    fingerprint = config_fingerprint(name or f"{module}:{function}", version, config,
                                     extra_fingerprint)
    tasks = []
    for i, (task_input, files) in enumerate(shards):
        source = tuple(file_identity(f) for f in files)
        part = part_path(out, i, _part_key(fingerprint, source))
        tasks.append(PartTask(module, function, task_input, str(part),
                              str(removed_path_for(part)), config, tuple(args), fingerprint,
                              source, str(part.with_name(part.name[:-len(".parquet")]
                                                         + ".done.json"))))
    # The committed manifest and its parts stay readable until the new manifest replaces them:
    # parts made from another input or config have other names.
    records = run_tasks(run_part, tasks, parallel, done=part_done, desc=desc)
    if finish:
        getattr(importlib.import_module(module), finish)(out, tasks, records)
    write_manifest(out, [{"file": Path(t.output).name, "removed": Path(t.removed).name,
                          "rows": r["rows"], "removed_rows": r["removed_rows"],
                          "source": list(t.source)} for t, r in zip(tasks, records)],
                   stage=desc, fingerprint=fingerprint)
    _remove_other_parts(out, tasks)
    seconds = time.perf_counter() - t0
    if merge:
        return getattr(importlib.import_module(module), merge)([r["stats"] for r in records],
                                                              seconds, config)
    return MergedStats([r["metadata"] for r in records], seconds)


def _part_key(fingerprint: str, source: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join([fingerprint, *source]).encode()).hexdigest()[:12]


def _remove_other_parts(out: Path, tasks: Sequence[PartTask]) -> None:
    """Once the manifest is committed, the parts it does not list go (an earlier version's, or
    those of a run with another config that never finished)."""
    keep = {Path(name).name for t in tasks for name in (t.output, t.removed, t.record)}
    for p in out.glob("part-*"):
        if p.name not in keep and p.is_file():
            p.unlink()


class MergedStats:
    """The stats of a day's parts for a stage with no ``merge``: numbers added up, mappings
    merged, lists joined, anything else the first part's; the keep rate recomputed."""

    def __init__(self, parts: list[Mapping[str, Any]], seconds: float):
        self.metadata = _add_up(parts) if parts else {}
        n, kept = self.metadata.get("input_documents"), self.metadata.get("kept_documents")
        if isinstance(n, int) and isinstance(kept, int) and "keep_rate" in self.metadata:
            self.metadata["keep_rate"] = round(kept / n, 4) if n else 0.0
        self.metadata["parts"] = len(parts)
        self.metadata["seconds"] = round(seconds, 3)

    def to_metadata(self) -> dict[str, Any]:
        return dict(self.metadata)


def _add_up(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
        return first
    if isinstance(first, (int, float)):
        return sum(v for v in values if isinstance(v, (int, float)))
    if isinstance(first, list):
        return [x for v in values if isinstance(v, list) for x in v]
    keys = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
    return {k: _add_up([v[k] for v in values if isinstance(v, dict) and k in v]) for k in keys}


# ------------------------------------------------------------------------------------------------
# How each built-in stage runs. Each adapter maps the common StageRun onto the engine function.


def _run_quality(run: StageRun):
    """Scores with the classifier the ``quality_classifier`` asset trained; without one (no
    reference text on this machine) every document passes through, unscored."""
    from lmforge.curate.quality import MODEL_FILE, score_sharded

    model = run.needs["quality_classifier"] / "model"
    if not (model / MODEL_FILE).exists():
        return _pass_through(run, "no quality classifier")
    return score_sharded(run.input, run.output, run.removed, model, run.config, run.parallel)


def _run_dedup(run: StageRun):
    """Against every day kept before: the day's kept documents become its own segment of the
    index (``<state_dir>/<day>/``), and the day is deduplicated against the segments of earlier
    days, read in place, never copied. A day materialized again replaces only its own segment
    and gives the same result; the days after it keep theirs. The graph runs the days in order
    (``depends_on_previous_day``), so a backfill never reads an index a day short."""
    from lmforge.curate.dedup import dedup_documents

    assert run.state_dir is not None and run.day is not None
    stats = dedup_documents(run.input, run.output, run.removed,
                            run.config.model_copy(update={"index_path": str(run.state_dir)}),
                            parallel=run.parallel, segment=run.day)
    stats.extra_metadata = {  # type: ignore[attr-defined]
        "index": str(run.state_dir),
        "deduplicated_against": (f"{stats.index_documents_before} documents kept on earlier days"
                                 if stats.index_documents_before else "nothing (first day)")}
    return stats


def _run_decontaminate(run: StageRun):
    from lmforge.curate.decontaminate import decontaminate_sharded

    return decontaminate_sharded(run.input, run.output, run.removed, run.config, run.parallel)


class PassThroughStats:
    def __init__(self, kept: int, reason: str):
        self.kept, self.reason = kept, reason

    def to_metadata(self) -> dict[str, Any]:
        return {"skipped": self.reason, "input_documents": self.kept,
                "kept_documents": self.kept}


def _pass_through(run: StageRun, reason: str) -> PassThroughStats:
    """Keep every document as it is (a stage that cannot run here, with the reason)."""
    from lmforge.io import count_rows

    run_sharded(__name__, "copy_part", run.input, run.output, run.removed, reason, run.parallel,
                name="pass_through")
    return PassThroughStats(count_rows(run.output), reason)


def copy_part(in_path, out_path, removed_path, reason: str) -> None:
    """One part passed through unchanged, and no removed documents."""
    import shutil

    from lmforge.io import atomic_path, parquet_files

    files = parquet_files(in_path)
    if len(files) != 1:
        from lmforge.errors import InputError

        raise InputError(f"{in_path}: {len(files)} Parquet files; pass a day through to a "
                         "directory (one part each)")
    with atomic_path(out_path) as tmp:
        shutil.copyfile(files[0], tmp)
    Path(removed_path).unlink(missing_ok=True)


class SplitStats:
    """What :func:`split_documents` kept and removed, and why."""

    def __init__(self):
        self.input_documents = self.kept_documents = 0
        self.removed_by_reason: dict[str, int] = {}

    def to_metadata(self) -> dict[str, Any]:
        n = self.input_documents
        return {"input_documents": n, "kept_documents": self.kept_documents,
                "keep_rate": self.kept_documents / n if n else 0.0,
                "removed_by_reason": dict(sorted(self.removed_by_reason.items()))}


def split_documents(in_path, out_path, removed_path,
                    decide: Callable[[dict[str, Any]], str | None],
                    batch_rows: int = 10_000) -> SplitStats:
    """The body of a simple stage: ``decide(document)`` returns None to keep it, or the reason
    to remove it. Kept documents go to ``out_path`` with every column; removed ones to
    ``removed_path`` with a ``reason`` column; both files appear together, or neither."""
    import pyarrow as pa

    from lmforge.curate.text import check_outputs, extend_schema, input_schema, open_sinks

    check_outputs(out_path, removed_path)
    schema = input_schema(in_path)
    stats = SplitStats()
    from lmforge.io import read_parquet_rows

    with open_sinks(out_path, schema, removed_path,
                    extend_schema(schema, [("reason", pa.string())])) as (kept, removed):
        for doc in read_parquet_rows(in_path, batch_rows=batch_rows):
            stats.input_documents += 1
            reason = decide(doc)
            if reason is None:
                stats.kept_documents += 1
                kept.write(doc)
            else:
                stats.removed_by_reason[reason] = stats.removed_by_reason.get(reason, 0) + 1
                removed.write({**doc, "reason": reason})
    return stats


# ------------------------------------------------------------------------------------------------
# Checks beyond "kept something", one per fact they guard.


def _dedup_rate_in_band(meta, before: int, after: int):
    rate = 1 - after / before if before else 0.0
    return rate <= 0.5, (None if rate <= 0.5 else f"removed {rate:.0%} of the day"), \
        {"dedup_rate": rate, "before": before, "after": after}


def _every_benchmark_checked(meta, before: int, after: int):
    skipped = meta.get("skipped_benchmarks") or {}
    return not skipped, (f"not checked against: {', '.join(skipped)}" if skipped else None), \
        {"skipped": skipped}


CURATION_STAGES: list[Stage] = [
    Stage("filtered_documents", "filter", "lmforge.curate.filter", "FilterConfig",
          "filter_documents",
          "language ID (fastText lid.176) and quality filters over Parquet documents",
          version="3", kinds=("fasttext", "parquet"), merge="merge_part_stats"),
    Stage("quality_filtered_documents", "quality", "lmforge.curate.quality",
          "QualityConfig", _run_quality,
          "train a fastText quality classifier (DCLM-style), or keep the documents it scores "
          "highest",
          version="3", kinds=("fasttext", "parquet"), needs=("quality_classifier",),
          config_fields=("threshold", "keep_fraction", "batch_rows")),
    Stage("deduplicated_documents", "dedup", "lmforge.curate.dedup", "DedupConfig", _run_dedup,
          "exact and MinHash LSH near-duplicate removal, against every earlier day",
          version="4", kinds=("datasketch", "parquet"), must_keep=False,
          fixed_fields=("index_path",), depends_on_previous_day=True,
          checks=(Check("dedup_rate_in_band", _dedup_rate_in_band, description=(
              "Within one day, a dedup that removes more than half usually means a broken "
              "normalization (or a site that did not change since the day before).")),)),
    Stage("decontaminated_documents", "decontaminate", "lmforge.curate.decontaminate",
          "DecontamConfig", _run_decontaminate,
          "remove documents sharing 13-grams with any registered benchmark",
          version="3", must_keep=False,
          checks=(Check("decontamination_covered_every_benchmark", _every_benchmark_checked,
                        description="A warning when a benchmark's data was missing, so its "
                        "contamination was not checked."),)),
]


def stage_names(stages: list[Stage] | None = None) -> list[str]:
    """The document assets in chain order, extraction first: the report's funnel."""
    return [EXTRACTED, *(s.name for s in (CURATION_STAGES if stages is None else stages))]


def curated_corpus_name(stages: list[Stage] | None = None) -> str:
    """The asset whose documents everything after curation reads."""
    chain = CURATION_STAGES if stages is None else stages
    return chain[-1].name if chain else EXTRACTED


def validate_stages(stages: list[Stage], where: str = "lmforge.curate.stages") -> None:
    """Fail in one line, naming the stage, when the list refers to something missing."""
    from lmforge.errors import LmforgeError

    seen: set[str] = {EXTRACTED}
    commands: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise LmforgeError(f"{where}: stage {s.name!r} appears twice")
        if s.command in commands:
            raise LmforgeError(f"{where}: stage {s.name!r}: command {s.command!r} is taken")
        seen.add(s.name)
        commands.add(s.command)
        try:
            cls = s.config_class()
        except (ImportError, AttributeError) as e:
            raise LmforgeError(f"{where}: stage {s.name!r}: config {s.module}:{s.config} cannot "
                               f"be loaded ({e})") from None
        fields = set(getattr(cls, "model_fields", {}))
        missing = [f for f in (*s.fixed_fields, *(s.config_fields or ())) if f not in fields]
        if missing:
            raise LmforgeError(f"{where}: stage {s.name!r}: {s.config} has no field "
                               f"{', '.join(missing)}")
        module = importlib.import_module(s.module)
        if not hasattr(module, "main"):
            raise LmforgeError(f"{where}: stage {s.name!r}: {s.module} has no main(argv)")
        if isinstance(s.run, str) and not callable(getattr(module, s.run, None)):
            raise LmforgeError(f"{where}: stage {s.name!r}: {s.module} has no function {s.run}")


def insert_stage(stages: list[Stage], stage: Stage, after: str) -> list[Stage]:
    """A copy of ``stages`` with ``stage`` right after the one named ``after`` (or first, after
    extraction, when ``after`` is ``extracted_documents``)."""
    from lmforge.errors import LmforgeError

    names = stage_names(stages)
    if after not in names:
        raise LmforgeError(f"no stage {after!r} to insert {stage.name!r} after; "
                           f"stages: {', '.join(names)}")
    i = names.index(after)  # names has extraction at 0, so this is the index in `stages` + 1
    return [*stages[:i], stage, *stages[i:]]


def active_stages() -> list[Stage]:
    """The chain, checked: :data:`CURATION_STAGES` as it is when the graph or the CLI is built."""
    validate_stages(CURATION_STAGES)
    return list(CURATION_STAGES)
