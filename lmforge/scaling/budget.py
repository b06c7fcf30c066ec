"""From a FLOP budget to a model and a token budget: what a preset that names a budget trains.

The law is the latest scaling fit in the artifact store (``scaling_fit/latest.json``, written by
the ``scaling_fit_*`` assets) or, where there is none, the published Chinchilla fit (Hoffmann et
al. 2022, eq. 10). From it: N* and D* for the budget (``LossLaw.optimal``); a Llama shape
whose parameter count is nearest N* (width a multiple of 64, of 128 from 512, of 256 from 2048;
64-dimensional heads; grouped-query attention with 4 query heads per KV head where they divide,
else 2; SwiGLU 8/3 wide; width / depth near 96, as the 124M-1B presets); and the steps that train
it on C / 6N tokens for its actual N (so 6 N D is the budget).

Light (no numpy, no torch): the Dagster graph calls it when the definitions load.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from lmforge.scaling.fit import HOFFMANN, LossLaw, law_from_report
from lmforge.scaling.sweep import count_params, swiglu_width
from lmforge.train.config import ModelPreset

LATEST = ("scaling_fit", "latest.json")


def latest_fit(artifact_root: str | Path, sweep: str | None = None) -> dict | None:
    """The newest fit report in the artifact store (its ``path`` added), or None: of any sweep,
    or of the sweep named (``scaling_fit_<sweep>/latest.json``)."""
    pointer = (Path(artifact_root).joinpath(*LATEST) if sweep is None
               else Path(artifact_root) / f"scaling_fit_{sweep}" / "latest.json")
    try:
        where = json.loads(pointer.read_text())["path"]
        report = json.loads(Path(where).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        law_from_report(report)
    except (KeyError, TypeError, ValueError):
        return None
    return {**report, "path": where}


def current_law(artifact_root: str | Path | None, sweep: str | None = None) -> tuple[LossLaw, str]:
    """``(law, source)``: the latest fit's law (of ``sweep`` when named), else Hoffmann et al.'s."""
    report = latest_fit(artifact_root, sweep) if artifact_root is not None else None
    if report is not None:
        return law_from_report(report), report["path"]
    return HOFFMANN, "Hoffmann et al. 2022 (eq. 10)"


@functools.lru_cache(maxsize=64)
def shape_for_params(target: float, vocab_size: int, seq_len: int,
                     aspect: float = 96.0) -> ModelPreset:
    """The Llama shape whose parameter count is nearest ``target`` (in log), preferring
    width / depth near ``aspect`` among shapes within a few percent of each other."""
    best, best_score = None, math.inf
    widths = [*range(64, 512, 64), *range(512, 2048, 128), *range(2048, 16384 + 1, 256)]
    for d in widths:
        heads = d // 64
        kv = heads // 4 if heads % 4 == 0 else heads // 2 if heads % 2 == 0 else heads
        ff = swiglu_width(d, 64)

        def shape(layers: int) -> ModelPreset:
            return ModelPreset(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, d_ff=ff,
                               seq_len=seq_len, tie_embeddings=True)

        # parameters are affine in depth: only the depths either side of the target can be best
        base, per_layer = count_params(shape(0), vocab_size), count_params(shape(1), vocab_size)
        per_layer -= base
        ideal = (target - base) / per_layer
        lo, hi = max(1, math.ceil(d / 512)), min(96, d // 16)
        for layers in {min(hi, max(lo, math.floor(ideal))), min(hi, max(lo, math.ceil(ideal)))}:
            if lo > hi:
                continue
            n = count_params(shape(layers), vocab_size)
            score = abs(math.log(n / target)) + 0.02 * abs(math.log(d / layers / aspect))
            if score < best_score:
                best, best_score = shape(layers), score
    return best


def budget_plan(flops: float, vocab_size: int, seq_len: int, tokens_per_step: int,
                law: LossLaw = HOFFMANN) -> dict[str, Any]:
    """The shape (PretrainConfig overrides) and ``max_steps`` for a FLOP budget, and the figures
    behind them."""
    if not (flops > 0 and math.isfinite(flops)):
        raise ValueError(f"a FLOP budget must be positive, got {flops!r}")
    n_opt, d_opt = law.optimal(flops)
    shape = shape_for_params(n_opt, vocab_size, seq_len)
    params = count_params(shape, vocab_size)
    tokens = flops / (6 * params)
    steps = max(1, round(tokens / tokens_per_step))
    return {"overrides": {"d_model": shape.d_model, "n_layers": shape.n_layers,
                          "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
                          "d_ff": shape.d_ff, "seq_len": seq_len, "max_steps": steps},
            "flops": flops, "params_opt": n_opt, "tokens_opt": d_opt, "params": params,
            "tokens": steps * tokens_per_step, "tokens_per_param": steps * tokens_per_step / params}
