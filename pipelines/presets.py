"""Run presets: named run configurations for the whole graph, one entry each.

A preset changes sizes, never code. Everything about it is in its :class:`Preset`: the per-asset
config (on top of the engine defaults), the evaluation suite its jobs evaluate on, and the time of
its nightly curation. ``tiny`` is the engine defaults: the whole graph on a laptop CPU in minutes,
offline, on the pages of this Python's documentation server. The larger presets are for GPU
machines and real data: they name the model size and the token budget, and expect seeds (or
Common Crawl WARC files) and the online or mirrored benchmarks.

Adding a preset is one entry in :data:`PRESETS`; ``pipelines.definitions`` builds its four jobs
and its schedule from it, and ``tests/pipelines/test_graph.py`` checks every preset's run config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_EVAL_ASSETS = ("base_model_eval", "sft_model_eval", "lora_model_eval")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    suite: str
    """The evaluation suite (``eval_suites/<suite>.yaml``): the partition its training evaluates."""
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-asset run config on top of the engine defaults: ``{asset: {field: value}}``."""
    nightly_at: tuple[int, int] | None = (2, 0)
    """(hour, minute), UTC, of the nightly curation of the day that just ended; None: no
    schedule. (Dagster derives the cron from the daily partitions and this time of day.)"""
    schedule_running: bool = False
    """Whether the schedule starts running by itself when the daemon sees it (off for the GPU
    presets, so a laptop running `make ui` does not start a 124M-parameter run at 2 AM)."""


def _on_gpu(extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    config = {name: {"device": "cuda"} for name in ("sft_model", "lora_adapter", *_EVAL_ASSETS)}
    for asset, values in extra.items():
        config[asset] = {**config.get(asset, {}), **values}
    return config


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("tiny", "every stage for real on a laptop CPU in minutes, offline", suite="smoke",
           schedule_running=True, config={
               # The quality filter keeps the top 90 %: the demo's crawl is one homogeneous site
               # (DCLM keeps 10 % of Common Crawl).
               "quality_filtered_documents": {"keep_fraction": 0.9},
               # One torch thread per evaluation: for a ~2M-parameter model on a 2-core machine
               # one thread is far faster than two fighting over the cores.
               **{name: {"threads": 1} for name in _EVAL_ASSETS}}),
    Preset("gpt2-124m", "one GPU: GPT-2 small's size with Llama's blocks", suite="standard",
           config=_on_gpu({
               "crawled_pages": {"max_pages": 200_000},
               "tokenizer": {"vocab_size": 32_768},
               "pretrained_model": {"preset": "124m", "max_steps": 20_000, "device": "cuda",
                                    "compile": True}})),
    Preset("1b", "a node of GPUs, DeepSpeed ZeRO-2: Llama 3.2 1B's shape", suite="standard",
           config=_on_gpu({
               "crawled_pages": {"max_pages": 2_000_000},
               "tokenizer": {"vocab_size": 65_536},
               "pretrained_model": {"preset": "1b", "max_steps": 100_000, "device": "cuda",
                                    "compile": True, "zero_stage": 2}})),
]}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def job_name(kind: str, preset: str) -> str:
    """``curation`` / ``training`` / ... for tiny, ``<kind>_<preset>`` for the others."""
    return kind if preset == "tiny" else f"{kind}_{preset.replace('-', '_')}"


def schedule_name(preset: str) -> str:
    return "nightly_curation" if preset == "tiny" else f"nightly_curation_{preset.replace('-', '_')}"


def run_config(preset: str, overrides: dict[str, dict[str, Any]] | None = None,
               assets: set[str] | None = None) -> dict[str, Any]:
    """The Dagster run config of a preset, with per-asset ``overrides`` merged on top, limited
    to ``assets`` (the assets of the job it is for) when given."""
    chosen = get_preset(preset)
    ops: dict[str, dict[str, Any]] = {}
    for source in (chosen.config, overrides or {}):
        for asset_name, values in source.items():
            if assets is None or asset_name in assets:
                ops.setdefault(asset_name, {}).update(values)
    return {"ops": {name: {"config": values} for name, values in ops.items()}}


def validate_presets(asset_names: set[str], suites: set[str],
                     where: str = "pipelines/presets.py") -> None:
    """One line naming the preset and the key, for a preset that refers to something missing."""
    from lmforge.errors import LmforgeError

    for p in PRESETS.values():
        if p.suite not in suites:
            raise LmforgeError(f"{where}: preset {p.name!r}: suite {p.suite!r} is not one of "
                               f"{', '.join(sorted(suites))} (eval_suites/*.yaml)")
        unknown = sorted(set(p.config) - asset_names)
        if unknown:
            raise LmforgeError(f"{where}: preset {p.name!r}: config for unknown asset(s) "
                               f"{', '.join(unknown)}")
