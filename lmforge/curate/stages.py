"""The curation chain: an ordered list of stages over Parquet documents (datatrove's list of blocks).

Each stage reads one day's documents of the stage before it and writes the documents it keeps,
plus those it removed with the reason, beside them. A stage is declared once, here, as a
:class:`Stage`: its name (the asset and artifact directory), its command, its config (a pydantic
model whose fields all have descriptions), the function that runs it, and the checks that guard
its output. From this list the graph generates the day-partitioned assets and their checks
(``assets/curation.py``), the ``lmforge`` subcommands, the report's funnel and the demo's summary;
whatever comes after curation reads the last stage's output, "the curated corpus".

Adding a stage is one engine module (config, function, ``main``), one entry in
:data:`CURATION_STAGES` at the place it belongs, and one test. Nothing here imports a stage's
module until the stage is used, so loading the graph stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

# The step before the chain: WARC files -> documents. It reads archives, not documents, so it is
# not a Stage; the chain starts from its output.
EXTRACTED = "extracted_documents"


@dataclass(frozen=True)
class StageRun:
    """What one run of a stage gets: the day's input and outputs, its config, and where it may
    keep state across days (``state_dir``) or read the output of another asset (``needs``)."""

    input: Path
    output: Path
    removed: Path
    config: Any
    day: str | None = None
    state_dir: Path | None = None
    needs: Mapping[str, Path] = field(default_factory=dict)


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
    """The asset, and the artifact directory: ``<name>/documents/<day>.parquet``."""
    command: str
    """The ``lmforge`` subcommand; its module's ``main(argv)`` is the CLI."""
    module: str
    """The engine module: it defines the config class and ``main``."""
    config: str
    """The config class's name in ``module``."""
    run: Callable[[StageRun], Any] | str
    """Runs the stage and returns stats with ``to_metadata()``: the name of a function in
    ``module`` called as ``fn(input, output, removed, config)``, or a callable taking the whole
    :class:`StageRun` (for stages that keep state or read another asset)."""
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

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def __call__(self, run: StageRun) -> Any:
        if isinstance(self.run, str):
            fn = getattr(importlib.import_module(self.module), self.run)
            return fn(run.input, run.output, run.removed, run.config)
        return self.run(run)


# ------------------------------------------------------------------------------------------------
# How each built-in stage runs. Each adapter maps the common StageRun onto the engine function.


def _run_filter(run: StageRun):
    from lmforge.curate.filter import filter_documents

    return filter_documents(run.input, run.output, run.removed, run.config)


def _run_quality(run: StageRun):
    """Scores with the classifier the ``quality_classifier`` asset trained; without one (no
    reference text on this machine) every document passes through, unscored."""
    from lmforge.curate.quality import MODEL_FILE, score_documents

    model = run.needs["quality_classifier"] / "model"
    if not (model / MODEL_FILE).exists():
        return _pass_through(run, "no quality classifier")
    return score_documents(run.input, run.output, run.removed, model, run.config)


def _run_dedup(run: StageRun):
    """Against every day kept before: the day starts from a copy of the latest earlier day's
    index (``<state_dir>/<day>/``), so a day materialized again gives the same result and a
    backfill of an earlier day does not change the later ones."""
    from lmforge.curate.dedup import dedup_documents, start_index_from

    assert run.state_dir is not None and run.day is not None
    index = run.state_dir / run.day
    snapshots = [p for p in run.state_dir.iterdir()
                 if not p.name.startswith(".") and p.name.split(".")[0] < run.day] \
        if run.state_dir.is_dir() else []
    # The latest earlier day; its directory over an old `<day>.pkl` beside it (refused, unread).
    earlier = sorted(snapshots, key=lambda p: (p.name.split(".")[0], p.is_dir()))
    start_index_from(earlier[-1] if earlier else None, index)
    stats = dedup_documents(run.input, run.output, run.removed,
                            run.config.model_copy(update={"index_path": str(index)}))
    stats.extra_metadata = {  # type: ignore[attr-defined]
        "index": str(index),
        "deduplicated_against": earlier[-1].name if earlier else "nothing (first day)"}
    return stats


def _run_decontaminate(run: StageRun):
    from lmforge.curate.decontaminate import decontaminate

    return decontaminate(run.input, run.output, run.removed, run.config)


class PassThroughStats:
    def __init__(self, kept: int, reason: str):
        self.kept, self.reason = kept, reason

    def to_metadata(self) -> dict[str, Any]:
        return {"skipped": self.reason, "input_documents": self.kept,
                "kept_documents": self.kept}


def _pass_through(run: StageRun, reason: str) -> PassThroughStats:
    """Keep every document as it is (a stage that cannot run here, with the reason)."""
    import shutil

    from lmforge.io import atomic_path, count_rows

    with atomic_path(run.output) as tmp:
        shutil.copyfile(run.input, tmp)
    run.removed.unlink(missing_ok=True)
    return PassThroughStats(count_rows(run.output), reason)


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
    Stage("filtered_documents", "filter", "lmforge.curate.filter", "FilterConfig", _run_filter,
          "language ID (fastText lid.176) and quality filters over Parquet documents",
          version="2", kinds=("fasttext", "parquet")),
    Stage("quality_filtered_documents", "quality", "lmforge.curate.quality",
          "QualityConfig", _run_quality,
          "train a fastText quality classifier (DCLM-style), or keep the documents it scores "
          "highest",
          version="2", kinds=("fasttext", "parquet"), needs=("quality_classifier",),
          config_fields=("threshold", "keep_fraction", "batch_rows")),
    Stage("deduplicated_documents", "dedup", "lmforge.curate.dedup", "DedupConfig", _run_dedup,
          "exact and MinHash LSH near-duplicate removal, against every earlier day",
          version="3", kinds=("datasketch", "parquet"), must_keep=False,
          fixed_fields=("index_path",),
          checks=(Check("dedup_rate_in_band", _dedup_rate_in_band, description=(
              "Within one day, a dedup that removes more than half usually means a broken "
              "normalization (or a site that did not change since the day before).")),)),
    Stage("decontaminated_documents", "decontaminate", "lmforge.curate.decontaminate",
          "DecontamConfig", _run_decontaminate,
          "remove documents sharing 13-grams with any registered benchmark",
          version="2", must_keep=False,
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
