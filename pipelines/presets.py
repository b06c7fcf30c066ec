"""Run presets: named run configurations for the whole graph.

A preset changes sizes, never code. ``tiny`` is every engine default: the whole graph on a laptop
CPU in minutes, offline, on the pages of this Python's documentation server. The larger presets
are for GPU machines and real data: they name the model size and the token budget, and expect
seeds (or Common Crawl WARC files) and the online or mirrored benchmarks.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Engine defaults, but one torch thread per evaluation: for a ~2M-parameter model on a
    # 2-core machine one thread is far faster than two fighting over the cores.
    # The quality filter keeps the top 90 %: the demo's crawl is one homogeneous site (DCLM keeps
    # 10 % of Common Crawl).
    "tiny": {"quality_filtered_documents": {"keep_fraction": 0.9},
             **{name: {"threads": 1}
                for name in ("base_model_eval", "sft_model_eval", "lora_model_eval")}},
    "gpt2-124m": {
        "crawled_pages": {"max_pages": 200_000},
        "tokenizer": {"vocab_size": 32_768},
        "pretrained_model": {"preset": "124m", "max_steps": 20_000, "device": "cuda",
                             "compile": True},
        "sft_model": {"device": "cuda"},
        "lora_adapter": {"device": "cuda"},
        **{name: {"device": "cuda"}
           for name in ("base_model_eval", "sft_model_eval", "lora_model_eval")},
    },
    "1b": {
        "crawled_pages": {"max_pages": 2_000_000},
        "tokenizer": {"vocab_size": 65_536},
        "pretrained_model": {"preset": "1b", "max_steps": 100_000, "device": "cuda",
                             "compile": True, "zero_stage": 2},
        "sft_model": {"device": "cuda"},
        "lora_adapter": {"device": "cuda"},
        **{name: {"device": "cuda"}
           for name in ("base_model_eval", "sft_model_eval", "lora_model_eval")},
    },
}


# The evaluation suite each preset's job runs: the suite is the evaluation assets' partition.
PRESET_SUITES: dict[str, str] = {"tiny": "smoke", "gpt2-124m": "standard", "1b": "standard"}


def job_name(kind: str, preset: str) -> str:
    """``curation`` / ``training`` / ... for tiny, ``<kind>_<preset>`` for the others."""
    return kind if preset == "tiny" else f"{kind}_{preset.replace('-', '_')}"


def run_config(preset: str, overrides: dict[str, dict[str, Any]] | None = None,
               assets: set[str] | None = None) -> dict[str, Any]:
    """The Dagster run config of a preset, with per-asset ``overrides`` merged on top, limited
    to ``assets`` (the assets of the job it is for) when given."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    ops: dict[str, dict[str, Any]] = {}
    for source in (PRESETS[preset], overrides or {}):
        for asset_name, values in source.items():
            if assets is None or asset_name in assets:
                ops.setdefault(asset_name, {}).update(values)
    return {"ops": {name: {"config": values} for name, values in ops.items()}}
