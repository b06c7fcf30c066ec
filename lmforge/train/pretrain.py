"""Pretraining: a Llama-style model on memory-mapped token shards.

    lmforge pretrain --preset tiny --data TOKENS_DIR --tokenizer TOKENIZER_DIR --out RUN_DIR

Running the same command on the same RUN_DIR resumes from its newest checkpoint. ``--nproc N``
re-launches itself under torchrun with N ranks (DeepSpeed ZeRO shards across them).

The run directory holds ``model/`` (Hugging Face ``save_pretrained`` + tokenizer files: loads with
``AutoModelForCausalLM`` / ``AutoTokenizer``; with the ``train_config.json`` and
``run_fingerprint.json`` it was trained from), ``checkpoints/`` (DeepSpeed layout, for resume, with
the config of the run in progress), ``metrics.jsonl`` (one line per logged step),
``loss_curve.png``, ``summary.json`` and ``tensorboard/``. The materialization metadata shows the
loss curve. ``--out`` must be new, empty, or a run directory lmforge made (it holds
``.lmforge-output``); the shards, the tokenizer and the destination are checked before any of it
is touched.

On one process the plain PyTorch engine trains (``--engine``, see ``engine.py``); ``--loss-chunk``
and ``--attention-backend`` are the speed knobs of ``model.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.io import check_output, claim_output_dir
from lmforge.train import launch
# The config is plain data (the Dagster graph imports it to declare the asset); torch,
# transformers and DeepSpeed are imported by the functions that train.
from lmforge.train.config import PretrainConfig

__all__ = ["PretrainConfig", "PretrainStats", "pretrain", "build_parser", "main"]


class PretrainStats(dict):
    """The run's summary (also written to ``summary.json``); ``.model`` is the trained model."""

    model = None

    def to_metadata(self) -> dict:
        return dict(self)


def _check(cfg: PretrainConfig):
    """Everything that can be wrong with the inputs and the destination, before any work and
    before the run directory is made or changed. Returns the tokenizer."""
    from transformers import AutoTokenizer

    from lmforge.train.data import check_vocabulary, read_header
    from lmforge.train.model import model_config

    for name in ("data_dir", "tokenizer_dir", "out_dir"):
        if not getattr(cfg, name):
            raise LmforgeError(f"{name} is required")
    try:
        shape = cfg.model_shape()
        model_config(shape, 1)  # the head layout is checked here
    except ValueError as e:
        raise LmforgeError(str(e)) from None
    if not Path(cfg.tokenizer_dir, "tokenizer.json").is_file():
        raise LmforgeError(f"no tokenizer.json in {cfg.tokenizer_dir}")
    read_header(cfg.data_dir, "train")
    check_output(cfg.out_dir, "dir")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a broken tokenizer directory, whatever the library says
        raise LmforgeError(f"cannot load the tokenizer in {cfg.tokenizer_dir}: {' '.join(str(e).split())[:200]}") from None
    check_vocabulary(cfg.data_dir, len(tokenizer))
    return tokenizer


def _load_initial_weights(model, source: str) -> None:
    """Continued pretraining: the weights of ``source`` (same shape and vocabulary), in place. A
    checkpoint in the run directory still wins (resume), since training loads it afterwards."""
    from transformers import AutoModelForCausalLM

    try:
        src = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a missing or broken model directory
        raise LmforgeError(f"init_from {source}: cannot load the model: {' '.join(str(e).split())[:200]}") from None
    try:
        model.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as e:
        raise LmforgeError(f"init_from {source}: not the same shape or vocabulary as this run: "
                           f"{' '.join(str(e).split())[:200]}") from None


def pretrain(cfg: PretrainConfig) -> PretrainStats:
    """Train (or resume) one run; every rank calls this, rank 0 writes the outputs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before the tokenizer's first use
    from lmforge.train.data import TokenWindows
    from lmforge.train.loop import init_distributed, report_run, save_hf_model, train
    from lmforge.train.model import build_model, chinchilla_tokens, flops_per_token, model_config
    from lmforge.train.telemetry import Telemetry

    tokenizer = _check(cfg)
    shape = cfg.model_shape()
    seq_len = shape.seq_len
    train_windows = TokenWindows(cfg.data_dir, "train", seq_len, seed=cfg.seed)
    val_windows = (TokenWindows(cfg.data_dir, "val", seq_len, seed=cfg.seed)
                   if Path(cfg.data_dir, "val.json").exists() else None)
    out = claim_output_dir(cfg.out_dir)
    dist = init_distributed(cfg.device)
    mconf = model_config(shape, len(tokenizer), bos_id=tokenizer.bos_token_id,
                         eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seq_len=seq_len)
    model = build_model(mconf, seed=cfg.seed)
    if cfg.init_from:
        _load_initial_weights(model, cfg.init_from)

    def batch_fn(step, micro, rank, world):
        return train_windows.batch(step, micro, cfg.micro_batch, cfg.grad_accum, rank, world)

    def eval_fn(rank, world):
        return val_windows.eval_batches(cfg.eval_batches, cfg.micro_batch, rank, world)

    with Telemetry(dist.rank, prefix="pretrain") as tel:
        tel.log(f"preset {cfg.preset}: {sum(p.numel() for p in model.parameters()):,} params, "
                f"{dist.world_size} process(es) on {dist.device}, ZeRO {cfg.zero_stage}, "
                f"{cfg.micro_batch * cfg.grad_accum * dist.world_size * seq_len:,} tokens/step")
        result = train(model, cfg, out, batch_fn=batch_fn, eval_fn=eval_fn if val_windows else None,
                       dist=dist, telemetry=tel, flops_per_token=flops_per_token(mconf, seq_len),
                       config_record=cfg.model_dump(), inputs=[cfg.data_dir, cfg.tokenizer_dir])
        save_hf_model(result.engine, out / "model", dist, tokenizer_dir=cfg.tokenizer_dir,
                      records=result.records)
        stats = PretrainStats(
            preset=cfg.preset, params=result.params, steps=result.steps,
            first_loss=result.first_loss, final_loss=result.final_loss, val_loss=result.final_val_loss,
            tokens=result.tokens, tokens_per_s=result.tokens_per_s, mfu=result.mfu,
            wall_s=result.wall_s, world_size=dist.world_size, zero_stage=cfg.zero_stage,
            engine=result.engine_name, loss_chunk=cfg.loss_chunk, attention_backend=cfg.attention_backend,
            seq_len=seq_len, vocab_size=len(tokenizer), chinchilla_tokens=chinchilla_tokens(result.params),
            resumed_from=result.resumed_from, device=str(dist.device), model_dir=str(out / "model"))
        report_run(out, stats, dist, tel, title=f"pretrain {cfg.preset}")
    stats.model = result.engine.module
    return stats


def build_parser() -> argparse.ArgumentParser:
    return launch.training_parser("lmforge pretrain", __doc__, PretrainConfig,
                                  {"--data": "data_dir", "--tokenizer": "tokenizer_dir",
                                   "--out": "out_dir"})


def main(argv: list[str] | None = None) -> int:
    return launch.run_cli("lmforge.train.pretrain", PretrainConfig, pretrain, build_parser(), argv)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('pretrain', main, sys.argv[1:]))
