"""The training loop shared by pretraining, SFT and LoRA.

One plain loop, readable top to bottom: set the learning rate for the step, run the micro-batches,
step, log, evaluate, checkpoint. The loop drives an engine (``engine.py``: plain PyTorch on one
process, DeepSpeed otherwise) over the process group of ``distributed.py``; checkpoints and the
record of what a run was trained from are ``checkpoint.py``, the exported model ``export.py``.
The names tests and scripts import from here (``TrainConfig``, ``init_distributed``,
``latest_checkpoint``, ``save_hf_model``, ...) are re-exported below.

The loss of a step is the mean NLL over every target token of the step, across micro-batches and
ranks (not a mean of per-micro-batch means), so a step's loss does not depend on how the batch is
split, and SFT's loss is exactly the mean over assistant tokens.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from lmforge.io import atomic_path
from lmforge.train.checkpoint import (UnsafeCheckpointError, check_checkpoint_files,
                                      latest_checkpoint, load_checkpoint, load_rng_state, run_fingerprint,
                                      safe_torch_load, save_checkpoint, save_rng_state, start_fresh_if_changed,
                                      sweep_checkpoints)
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import Dist, all_reduce_sum, barrier, init_distributed
from lmforge.train.engine import (PlainEngine, build_engine, compile_enabled, compile_engine,
                                  deepspeed_config, lr_at, make_optimizer, resolve_engine)
from lmforge.train.export import (TOKENIZER_FILES, copy_tokenizer_files, gathered_module,
                                  report_run, save_hf_model)
from lmforge.train.model import attention_context, causal_lm_parts, check_attention_backend, count_params, \
    linear_cross_entropy
from lmforge.train.objectives import Objective, TokenNLL
from lmforge.train.telemetry import Telemetry

Batch = dict[str, torch.Tensor]

__all__ = [
    # the loop
    "Batch", "TrainResult", "evaluate", "forward_nll", "input_tokens", "train", "Objective", "TokenNLL",
    # re-exported from the modules the loop drives
    "TrainConfig", "Dist", "init_distributed", "all_reduce_sum", "barrier",
    "PlainEngine", "build_engine", "compile_enabled", "compile_engine", "deepspeed_config", "lr_at",
    "make_optimizer", "resolve_engine",
    "UnsafeCheckpointError", "check_checkpoint_files", "latest_checkpoint", "load_checkpoint",
    "load_rng_state", "run_fingerprint", "safe_torch_load", "save_checkpoint", "save_rng_state",
    "start_fresh_if_changed", "sweep_checkpoints",
    "TOKENIZER_FILES", "copy_tokenizer_files", "gathered_module", "report_run", "save_hf_model",
]


@dataclass
class TrainResult:
    steps: int
    first_loss: float | None
    final_loss: float | None
    final_val_loss: float | None
    tokens: int
    tokens_per_s: float
    mfu: float
    wall_s: float
    resumed_from: int | None
    params: int
    trainable_params: int
    engine_name: str
    engine: Any = field(default=None, repr=False)
    # What the trained weights come from, to be exported with them (``save_hf_model(records=)``).
    records: dict = field(default_factory=dict, repr=False)
    # The objective's statistics (means over the last step, and over the final held-out pass).
    final_stats: dict = field(default_factory=dict)
    final_val_stats: dict = field(default_factory=dict)

    def to_metadata(self) -> dict:
        skip = ("engine", "engine_name", "records", "final_stats", "final_val_stats")
        meta = {k: v for k, v in self.__dict__.items() if k not in skip}
        meta.update({f"final_{k}": v for k, v in self.final_stats.items()})
        meta.update({f"final_val_{k}": v for k, v in self.final_val_stats.items()})
        return {**meta, "engine": self.engine_name}


def _uses_bf16(cfg: TrainConfig, dist: Dist) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and dist.device.type == "cuda")


def _autocast(cfg: TrainConfig, dist: Dist):
    """bf16 autocast over fp32 master weights (or nothing): matmuls in bf16, the optimizer and
    the weights in fp32."""
    if not _uses_bf16(cfg, dist):
        return nullcontext()
    return torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def input_tokens(batch: Batch) -> int:
    """Non-padding input positions of a micro-batch, for token counts and throughput. A packed
    batch (see ``packing.py``) says so in ``num_tokens``: its 4D attention mask marks no padding."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()


def forward_nll(model, batch: Batch, loss_chunk: int = 0, compiled: bool = False) -> torch.Tensor:
    """Summed NLL of ``batch['targets']`` (already shifted; -100 = not trained). ``position_ids``
    and a 4D ``attention_mask`` are passed through when present (packed SFT rows).

    ``loss_chunk > 0`` runs the decoder for the final hidden states and the output projection +
    cross-entropy ``loss_chunk`` tokens at a time (``model.linear_cross_entropy``), where the model
    splits that way (``causal_lm_parts``: Llama, Mistral, Qwen2/3, plain or LoRA-wrapped); other
    models take the standard path. ``compiled``: torch.compile the chunk kernel.
    """
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                  position_ids=batch.get("position_ids"), use_cache=False)
    parts = causal_lm_parts(model) if loss_chunk else None
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state
        return linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight,
                                    batch["targets"].reshape(-1), loss_chunk, compiled=compiled)
    logits = model(**inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["targets"].reshape(-1),
                           ignore_index=-100, reduction="sum")


def _sum_stats(total: dict, stats: dict) -> None:
    for k, v in stats.items():
        v = v.detach().to(torch.float64)
        total[k] = total[k] + v if k in total else v


def _reduce_stats(stats: dict, n: float, dist: Dist) -> dict[str, float]:
    names = sorted(stats)
    values = all_reduce_sum([stats[k] for k in names], dist) if names else []
    return {k: float(v) / max(1.0, n) for k, v in zip(names, values)}


def evaluate_objective(engine, eval_batches: Iterable[Batch], cfg: TrainConfig, dist: Dist,
                       objective: Objective | None = None) -> tuple[float | None, dict[str, float]]:
    """The objective's mean loss and statistics over ``eval_batches`` (all ranks together)."""
    objective = objective or TokenNLL(cfg.loss_chunk, compile_enabled(cfg, dist))
    engine.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    stats: dict = {}
    n = 0
    with torch.no_grad(), _autocast(cfg, dist), attention_context(cfg.attention_backend):
        for batch in eval_batches:
            n += objective.count(batch)  # on the host, before the copy: no wait for the device
            batch = _to(batch, dist.device)
            loss, batch_stats = objective.loss(engine, batch)
            loss_sum += loss.detach().to(torch.float64)
            _sum_stats(stats, batch_stats)
    engine.train()
    loss_sum, n = all_reduce_sum([loss_sum, n], dist)
    return (loss_sum / n if n else None), _reduce_stats(stats, n, dist)


def evaluate(engine, eval_batches: Iterable[Batch], cfg: TrainConfig, dist: Dist,
             objective: Objective | None = None) -> float | None:
    return evaluate_objective(engine, eval_batches, cfg, dist, objective)[0]


def train(model: torch.nn.Module, cfg: TrainConfig, out_dir: str | Path, **kwargs) -> TrainResult:
    """:func:`_train`, holding the run directory's lock on rank 0: one training per run directory
    at a time (the retry of a run whose worker was killed waits for an orphaned training still
    writing there, then resumes from its last checkpoint)."""
    from lmforge.io import hold_dir_lock, release_dir_lock

    dist = kwargs["dist"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if dist.rank != 0:
        return _train(model, cfg, out_dir, **kwargs)
    hold_dir_lock(out_dir, on_wait=kwargs["telemetry"].log)
    try:
        return _train(model, cfg, out_dir, **kwargs)
    finally:
        release_dir_lock(out_dir)


def _train(model: torch.nn.Module, cfg: TrainConfig, out_dir: str | Path, *,
          batch_fn: Callable[[int, int, int, int], Batch],
          eval_fn: Callable[[int, int], Iterable[Batch]] | None,
          dist: Dist, telemetry: Telemetry, flops_per_token: float = 0.0,
          config_record: dict | None = None, inputs: Iterable[str | Path] = (),
          objective: Objective | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps, resuming from ``out_dir`` if it holds
    a checkpoint.

    ``batch_fn(step, micro, rank, world_size)`` returns one micro-batch (``input_ids``,
    ``targets``, optionally ``attention_mask``, ``position_ids`` and ``num_tokens``);
    ``eval_fn(rank, world_size)`` yields the val batches. Rank 0 writes ``metrics.jsonl`` and
    TensorBoard logs under ``out_dir``. ``inputs`` are the files the run trains from: with
    ``config_record`` they decide whether a checkpoint in ``out_dir`` is resumed
    (``run_fingerprint``). ``objective`` (``objectives.py``) is what a step minimises: the
    token NLL of ``batch['targets']`` by default; DPO and GRPO bring their own.
    """
    resolve_engine(cfg, dist.world_size)  # a bad combination fails before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    if not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit (QLoRA) base is placed at load
        model.to(dist.device)
    n_params, n_trainable = count_params(model), count_params(model, trainable_only=True)
    train_dtype = torch.bfloat16 if _uses_bf16(cfg, dist) else torch.float32
    if cfg.attention_backend != "auto":
        # Padded or packed rows (SFT) reach SDPA with a mask and repeated KV heads, unmasked ones
        # (pretraining) without: probe the way this run's batches will call it.
        masked = batch_fn(0, 0, dist.rank, dist.world_size).get("attention_mask") is not None
        check_attention_backend(cfg.attention_backend, model, dist.device, train_dtype, masked=masked)
    engine, engine_name = build_engine(model, cfg, dist)
    compile_ = compile_enabled(cfg, dist)
    if compile_:
        compile_engine(engine, cfg)
    objective = objective or TokenNLL(cfg.loss_chunk, compile_)
    telemetry.log(f"engine {engine_name}" + (f", ZeRO {cfg.zero_stage}" if engine_name == "deepspeed" else "")
                  + f", attention {cfg.attention_backend}"
                  + (f", loss in chunks of {cfg.loss_chunk} tokens" if cfg.loss_chunk else "")
                  + (", torch.compile" if compile_ else ""))

    fingerprint = run_fingerprint(config_record, inputs)
    start_fresh_if_changed(out_dir, fingerprint, config_record, dist, telemetry)
    start, tokens, first_loss, elapsed, resumed_from = 0, 0, None, 0.0, None
    saved_loss = saved_val_loss = None
    tag = latest_checkpoint(out_dir)
    if tag is not None:
        state = load_checkpoint(engine, out_dir, tag, dist)
        start = resumed_from = int(state["step"])
        tokens, first_loss, elapsed = int(state["tokens"]), state.get("first_loss"), float(state.get("elapsed", 0.0))
        saved_loss, saved_val_loss = state.get("loss"), state.get("val_loss")
        telemetry.log(f"resumed from {tag} (step {start}, {tokens:,} tokens)")

    writer = None
    metrics_path = out_dir / "metrics.jsonl"
    if dist.rank == 0:
        # A crash after the last checkpoint leaves lines for steps that will be re-run, and maybe
        # a last line cut off mid-write; rewrite the file atomically without either.
        if metrics_path.exists():
            kept = [line for line in metrics_path.read_text().splitlines()
                    if (line_step := _metrics_step(line)) is not None and line_step <= start]
            with atomic_path(metrics_path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        elif start == 0:
            metrics_path.write_text("")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log_metrics(record: dict) -> None:
        if dist.rank != 0:
            return
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and v is not None:
                writer.add_scalar(k, v, record["step"])

    def client_state(step: int) -> dict:
        return {"step": step, "tokens": tokens, "first_loss": first_loss, "elapsed": elapsed,
                "loss": loss, "val_loss": val_loss}

    loss, val_loss = saved_loss, saved_val_loss
    step_stats: dict[str, float] = {}
    val_stats: dict[str, float] = {}
    window_tokens, window_t0 = 0, time.perf_counter()
    engine.train()
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        batches = [batch_fn(step, m, dist.rank, dist.world_size) for m in range(cfg.grad_accum)]
        # Counted on the host before the copy: counting device tensors would wait for the device.
        n_local = sum(objective.count(b) for b in batches)
        in_local = sum(input_tokens(b) for b in batches)
        batches = [_to(b, dist.device) for b in batches]
        n_targets, n_inputs = all_reduce_sum([n_local, in_local], dist)
        # Both engines divide each micro-batch's loss by grad_accum and average gradients over
        # ranks; scaling by (grad_accum * world / n_targets) makes the step's gradient that of
        # the mean NLL over all of the step's target tokens.
        scale = cfg.grad_accum * dist.world_size / max(1.0, n_targets)
        # The step's NLL is summed on the device (in float64, so the sum is the one a Python
        # float would give) and read once per step: reading it after every micro-batch would make
        # the host wait for the GPU instead of queueing the next micro-batch's kernels.
        nll_sum, grad_norm = torch.zeros((), dtype=torch.float64, device=dist.device), None
        stats_sum: dict = {}
        for m, batch in enumerate(batches):
            with attention_context(cfg.attention_backend):
                with _autocast(cfg, dist):
                    nll, batch_stats = objective.loss(engine, batch)
                engine.backward(nll * scale)
            _sum_stats(stats_sum, batch_stats)
            if m == len(batches) - 1 and engine_name == "deepspeed" and engine.zero_optimization_stage() == 0:
                # ZeRO reports the pre-clipping norm itself; without ZeRO DeepSpeed clips
                # but discards the norm, so take it here (gradients are all-reduced by now).
                grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            engine.step()
            nll_sum += nll.detach()
        if grad_norm is None:
            grad_norm = engine.get_global_grad_norm()
        (nll_total,) = all_reduce_sum([nll_sum], dist)  # the step's one wait for the device
        step_stats = _reduce_stats(stats_sum, n_targets, dist)
        grad_norm = None if grad_norm is None else float(grad_norm)
        loss = nll_total / max(1.0, n_targets)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step + 1}")
        if first_loss is None:
            first_loss = loss
        dt = time.perf_counter() - t0
        tokens += int(n_inputs)
        elapsed += dt
        window_tokens += int(n_inputs)
        done = step + 1

        if done % cfg.log_every == 0 or done == cfg.max_steps or done == start + 1:
            now = time.perf_counter()
            tps = window_tokens / max(1e-9, now - window_t0)
            step_mfu = tps * flops_per_token / (cfg.peak_flops * dist.world_size)
            log_metrics({"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                         "tokens": tokens, "tokens_per_s": tps, "mfu": step_mfu, **step_stats})
            shown = "".join(f" {k} {v:.4g}" for k, v in step_stats.items())
            telemetry.log(f"step {done}/{cfg.max_steps} loss {loss:.4f}{shown} lr {lr:.2e} "
                          f"grad_norm {grad_norm if grad_norm is None else round(grad_norm, 3)} "
                          f"tokens/s {tps:,.0f} MFU {100 * step_mfu:.3f}%")
            window_tokens, window_t0 = 0, time.perf_counter()

        last = done == cfg.max_steps
        if eval_fn is not None and cfg.eval_batches and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
            val_loss, val_stats = evaluate_objective(engine, eval_fn(dist.rank, dist.world_size), cfg,
                                                     dist, objective)
            if val_loss is not None:
                log_metrics({"step": done, "val_loss": val_loss,
                             **{f"val_{k}": v for k, v in val_stats.items()}})
                shown = "".join(f" val_{k} {v:.4g}" for k, v in val_stats.items())
                telemetry.log(f"step {done} val_loss {val_loss:.4f}{shown}")
            window_t0 = time.perf_counter()
        if (cfg.save_every and done % cfg.save_every == 0) or last:
            save_checkpoint(engine, out_dir, done, client_state(done), dist, keep=cfg.keep_checkpoints)
            window_t0 = time.perf_counter()

    if writer is not None:
        writer.close()
    if start >= cfg.max_steps:
        telemetry.log(f"checkpoint is already at step {start} >= max_steps {cfg.max_steps}; nothing to train")
    tps = tokens / elapsed if elapsed > 0 else 0.0
    return TrainResult(
        steps=max(cfg.max_steps, start), first_loss=first_loss,
        final_loss=loss, final_val_loss=val_loss, tokens=tokens, tokens_per_s=tps,
        mfu=tps * flops_per_token / (cfg.peak_flops * dist.world_size), wall_s=elapsed,
        resumed_from=resumed_from, params=n_params, trainable_params=n_trainable, engine_name=engine_name,
        engine=engine, final_stats=step_stats, final_val_stats=val_stats, records={"run_fingerprint.json": fingerprint,
                                **({"train_config.json": config_record} if config_record is not None else {})})


def _metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a blank or torn (crashed mid-write) line."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


