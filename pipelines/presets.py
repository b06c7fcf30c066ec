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
    flop_budget: float | None = None
    """Pretraining FLOPs (6 N D) instead of a model size: the shape and ``max_steps`` of
    ``pretrained_model`` come from the latest scaling fit in the artifact store, or from the
    published Chinchilla fit where there is none (``budget_config``); the preset's own
    ``pretrained_model`` config (device, micro_batch, seq_len, ...) applies on top."""
    train_after_tokens: int = 1
    """Automation pretrains again when the token shards hold at least this many more training
    tokens than the last pretraining saw (the first pretraining runs as soon as there are shards)."""
    retrain_tokenizer: bool = False
    """Whether automation retrains the tokenizer when the corpus changes. Off: the tokenizer is
    trained once per deployment and frozen (materialize it by hand to retrain, which makes the
    next pretraining start from scratch)."""
    scaling_sweep: str = "gpu"
    """With ``flop_budget``: the sweep (``sweeps/<name>.yaml``) whose latest fit sizes the model,
    so a fit of CPU micro models never sizes a GPU run 7 orders of magnitude away."""


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
               **{name: {"threads": 1} for name in _EVAL_ASSETS},
               # GRPO on arithmetic with the dense reward: the DPO model seldom gives the exact
               # number, so the exact reward would leave every group at 0 (no gradient).
               "grpo_model": {"reward": "numeric_closeness", "lr": 1e-3, "max_steps": 40,
                              "micro_batch": 8, "max_new_tokens": 8, "arithmetic_max_value": 50},
               "arena_ratings": {"max_value": 50}}),
    Preset("gpt2-124m", "one GPU: GPT-2 small's size with Llama's blocks", suite="standard",
           train_after_tokens=500_000_000,
           config=_on_gpu({
               "crawled_pages": {"max_pages": 200_000},
               "tokenizer": {"vocab_size": 32_768},
               "pretrained_model": {"preset": "124m", "max_steps": 20_000, "device": "cuda",
                                    "compile": True}})),
    Preset("chinchilla-1e18", "one GPU: the compute-optimal model for 1e18 FLOPs, its size and "
           "tokens from the latest scaling fit (or Chinchilla's)", suite="standard",
           flop_budget=1e18, train_after_tokens=500_000_000, config=_on_gpu({
               "crawled_pages": {"max_pages": 200_000},
               "tokenizer": {"vocab_size": 32_768},
               "pretrained_model": {"device": "cuda", "compile": True, "seq_len": 1024,
                                    "micro_batch": 32}})),
    Preset("1b", "a node of GPUs, DeepSpeed ZeRO-2: Llama 3.2 1B's shape", suite="standard",
           train_after_tokens=5_000_000_000,
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


def deployment_name(preset: str) -> str:
    """The asset key prefix and artifact directory of a preset's deployment."""
    return preset.replace("-", "_")


def job_name(kind: str, preset: str) -> str:
    """``curation`` / ``training`` / ... for tiny, ``<kind>_<preset>`` for the others."""
    return kind if preset == "tiny" else f"{kind}_{preset.replace('-', '_')}"


def schedule_name(preset: str) -> str:
    return "nightly_curation" if preset == "tiny" else f"nightly_curation_{preset.replace('-', '_')}"


def artifact_root() -> str:
    """Where the artifact store is when no run config says otherwise (``ArtifactStore``'s rule)."""
    import os

    return os.environ.get("LMFORGE_ARTIFACTS") or "artifacts"


def budget_config(preset: Preset, root: str | None = None) -> dict[str, Any]:
    """``pretrained_model``'s shape and ``max_steps`` for a preset that names a FLOP budget (see
    ``lmforge.scaling.budget``): the shape nearest N* of the latest fit in the store at ``root``
    (default: the store's), trained on budget / 6N tokens at the preset's tokens per step (one
    process: a preset for several sets grad_accum so that a step holds the same tokens)."""
    from lmforge.scaling.budget import budget_plan, current_law
    from lmforge.tokenize.bpe import TokenizerConfig
    from lmforge.train.config import PretrainConfig
    from lmforge.train.config import get_preset as model_preset

    if preset.flop_budget is None:
        return {}
    own = preset.config.get("pretrained_model", {})
    base = PretrainConfig(**{k: v for k, v in own.items() if k in PretrainConfig.model_fields})
    seq_len = base.seq_len or model_preset(base.preset).seq_len
    vocab = int(preset.config.get("tokenizer", {}).get("vocab_size", TokenizerConfig().vocab_size))
    from pathlib import Path

    store_root = Path(root if root is not None else artifact_root()) / deployment_name(preset.name)
    law, _ = current_law(store_root, preset.scaling_sweep)
    tokens_per_step = base.micro_batch * base.grad_accum * seq_len
    return budget_plan(preset.flop_budget, vocab, seq_len, tokens_per_step, law)["overrides"]


def preset_config(chosen: Preset, overrides: dict[str, dict[str, Any]] | None = None,
                  assets: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per asset, the config of a preset (a preset with a FLOP budget gets ``pretrained_model``'s
    shape and steps from :func:`budget_config` first), with ``overrides`` merged on top, limited
    to ``assets`` when given: ``{asset: {field: value}}``."""
    ops: dict[str, dict[str, Any]] = {}
    budgeted = {"pretrained_model": budget_config(chosen)} if chosen.flop_budget else {}
    for source in (budgeted, chosen.config, overrides or {}):
        for asset_name, values in source.items():
            if assets is None or asset_name in assets:
                ops.setdefault(asset_name, {}).update(values)
    return ops


def run_config(preset: str, overrides: dict[str, dict[str, Any]] | None = None,
               assets: set[str] | None = None) -> dict[str, Any]:
    """The Dagster run config of a preset, with per-asset ``overrides`` merged on top, limited
    to ``assets`` (the assets of the job it is for) when given. (The preset's own settings are
    already its assets' config defaults; a run config is for changing them.)"""
    ops = preset_config(get_preset(preset), overrides, assets)
    return {"ops": {op_name(preset, name): {"config": values} for name, values in ops.items()}}


def op_name(preset: str, asset: str) -> str:
    """The op that materializes ``asset`` in the deployment of ``preset`` (its run config key)."""
    return f"{deployment_name(preset)}__{asset}"


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
        if p.flop_budget is not None:
            if not p.flop_budget > 0:
                raise LmforgeError(f"{where}: preset {p.name!r}: flop_budget must be positive, "
                                   f"got {p.flop_budget!r}")
            if "pretrained_model" not in asset_names:
                raise LmforgeError(f"{where}: preset {p.name!r}: a flop_budget sizes "
                                   "pretrained_model, which the graph does not have")
            sized = sorted({"d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_steps"}
                           & set(p.config.get("pretrained_model", {})))
            if sized:
                raise LmforgeError(f"{where}: preset {p.name!r}: names a flop_budget and sets "
                                   f"pretrained_model {', '.join(sized)}; the budget decides them")
