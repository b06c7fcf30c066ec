"""What a finished run leaves: the exported Hugging Face model (with the tokenizer's files and the
records of what it was trained from), ``summary.json`` and the loss curve.

The exported model (``model/``) carries the ``train_config.json`` and ``run_fingerprint.json`` it
was trained from, written inside it and committed with it by one rename; so a run that is killed
leaves the previous model whole, beside the record of what it was trained from.
"""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.io import atomic_path, write_json
from lmforge.train.distributed import Dist, barrier
from lmforge.train.plots import loss_curve_metadata

if TYPE_CHECKING:
    from lmforge.train.telemetry import Telemetry


def report_run(out_dir: Path, stats: dict, dist: Dist, telemetry: Telemetry, title: str) -> None:
    """The end of a run: rank 0 writes ``summary.json`` and ``loss_curve.png``; the figures and
    the curve go to ``telemetry`` (the materialization's metadata under Dagster)."""
    curve = {}
    if dist.rank == 0:
        write_json(out_dir / "summary.json", dict(stats))
        curve = loss_curve_metadata(out_dir, title=title)
    telemetry.report({**stats, **curve})


def gathered_module(engine):
    """A context in which every rank sees full parameters (ZeRO-3 gathers them; a no-op below,
    and for the plain engine). For small parameter sets (a LoRA adapter): the whole model this way
    would be on every rank at once."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    return nullcontext()


def zero3_state_dict(engine, dist: Dist) -> dict[str, Any] | None:
    """The full state dict of a ZeRO-3 ``engine.module`` on rank 0's CPU (None on the others),
    gathered one parameter at a time: no rank ever holds more than the model's largest parameter
    beyond its own partition, and only rank 0 keeps the copies. Every rank must call this (each
    gather is collective). Tied weights stay one tensor under each of their names, as in the
    module's own state dict."""
    import deepspeed

    state: dict[str, Any] = {}
    gathered: dict[int, Any] = {}
    for name, value in engine.module.state_dict(keep_vars=True).items():
        if not hasattr(value, "ds_id"):  # a buffer: ZeRO does not partition those
            state[name] = value.detach().cpu().clone() if dist.rank == 0 else None
            continue
        if value.ds_id not in gathered:
            with deepspeed.zero.GatheredParameters([value], modifier_rank=None):
                gathered[value.ds_id] = value.detach().cpu().clone() if dist.rank == 0 else None
        state[name] = gathered[value.ds_id]
    return state if dist.rank == 0 else None


def save_hf_model(engine, out: Path, dist: Dist, tokenizer_dir: str | Path | None = None,
                  records: dict[str, Any] | None = None, **save_kwargs) -> None:
    """Rank 0 writes ``engine.module`` with ``save_pretrained`` (plus the tokenizer's files and
    ``records``, JSON files such as ``TrainResult.records``: what the weights were trained from)
    to ``out`` and commits it by one rename, so the weights and their records change together;
    every rank must call this (ZeRO-3's parameters are gathered onto rank 0, collectively)."""
    if engine.zero_optimization_stage() == 3:
        save_kwargs = {**save_kwargs, "state_dict": zero3_state_dict(engine, dist)}
    if dist.rank == 0:
        with atomic_path(out, "dir") as tmp:
            engine.module.save_pretrained(str(tmp), **save_kwargs)
            if tokenizer_dir is not None:
                copy_tokenizer_files(tokenizer_dir, tmp)
            for name, obj in (records or {}).items():
                (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    barrier(dist)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    found = False
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
            found = True
    if not found:
        raise FileNotFoundError(f"no tokenizer files in {src}")
