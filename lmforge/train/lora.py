"""LoRA adapters with PEFT: the SFT recipe, training only low-rank updates of the projections.

    lmforge lora --base MODEL_DIR --data DATA.jsonl --out ADAPTER_DIR [--rank 8] [--merge] [--qlora]

ADAPTER_DIR is a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``
+ the tokenizer files): ``PeftModel.from_pretrained(base_model, ADAPTER_DIR)`` loads it, so one
base model can serve one adapter per task. It also holds the run's ``summary.json``,
``metrics.jsonl``, ``tensorboard/`` and ``checkpoints/`` (adapter and optimizer state only; the
frozen base is re-read from MODEL_DIR on resume). ``--merge`` also writes ``ADAPTER_DIR/merged/``,
a plain Hugging Face model with the adapter folded into the weights. The adapter's
``train_config.json`` and ``run_fingerprint.json`` say what it was trained from: they are removed
before a new adapter's files replace the old ones and written after, so they never describe
another adapter (the run in progress keeps its own in ``checkpoints/``).

``--qlora`` loads the frozen base in 4-bit NF4 (bitsandbytes) and needs a CUDA GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from lmforge.io import atomic_path, claim_output_dir, temp_name_prefix
# The config is plain data (the Dagster graph imports it to declare the asset); torch,
# transformers and PEFT are imported by the functions that train.
from lmforge.train.config import LLAMA_PROJECTIONS, LoraConfig  # noqa: F401
from lmforge.train.sft import RunStats, check_inputs, prepare


def _load_base(cfg: LoraConfig):
    import torch
    from transformers import AutoModelForCausalLM

    if not cfg.qlora:
        return AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.float32, local_files_only=True)
    if not torch.cuda.is_available() or cfg.device == "cpu":
        raise ValueError("QLoRA needs a CUDA GPU with bitsandbytes (4-bit kernels); this machine has "
                         "no CUDA device. Use plain LoRA (drop --qlora) on CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("QLoRA needs a CUDA GPU with bitsandbytes: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(cfg.base, quantization_config=quant, local_files_only=True,
                                                 device_map={"": torch.cuda.current_device()})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _save_adapter(engine, out: Path, base: str, dist, records: dict | None = None) -> None:
    """Rank 0 writes the adapter files into ``out`` (beside the run's own files), each by rename.
    The adapter lies beside the run's files, so it cannot be swapped by one rename: its
    ``records`` are taken away first and put back last, so they never describe another adapter."""
    from lmforge.train.distributed import barrier
    from lmforge.train.export import copy_tokenizer_files, gathered_module

    records = records or {}
    with gathered_module(engine):
        if dist.rank == 0:
            tmp = Path(tempfile.mkdtemp(prefix=temp_name_prefix("adapter"), suffix=".tmp", dir=out))
            try:
                engine.module.save_pretrained(str(tmp))
                copy_tokenizer_files(base, tmp)
                for name, obj in records.items():
                    (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
                for name in records:
                    (out / name).unlink(missing_ok=True)
                for f in sorted(tmp.iterdir(), key=lambda f: f.name in records):
                    os.replace(f, out / f.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    barrier(dist)


def merge_adapter(base: str | Path, adapter_dir: str | Path, out: str | Path) -> None:
    """Fold a saved adapter into a fresh copy of the base and save it as a plain HF model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmforge.train.export import copy_tokenizer_files

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                                           local_files_only=True),
                                      str(adapter_dir))
    merged = model.merge_and_unload()
    with atomic_path(out, "dir") as tmp:
        merged.save_pretrained(str(tmp))
        copy_tokenizer_files(base, tmp)


def train_lora(cfg: LoraConfig) -> RunStats:
    """Train one adapter; every rank calls this, rank 0 writes the adapter and summary."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before the tokenizer's first use
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from lmforge.train.loop import init_distributed, report_run, train
    from lmforge.train.model import flops_per_token
    from lmforge.train.telemetry import Telemetry

    check_inputs(cfg)
    if cfg.qlora and (cfg.device == "cpu" or not torch.cuda.is_available()):
        _load_base(cfg)  # raises the clear error before any process group is set up
    dist = init_distributed(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, local_files_only=True)
    data_stats, train_ex, val_ex, max_steps, batch_fn, eval_fn = prepare(cfg, tokenizer, dist.world_size)
    run_cfg = cfg.model_copy(update={"max_steps": max_steps})

    base_model = _load_base(cfg)
    present = {name.rsplit(".", 1)[-1] for name, _ in base_model.named_modules()}
    missing = [t for t in cfg.targets if t not in present]
    if missing:
        raise ValueError(f"target modules {missing} are not in the base model")
    # LoRA's A matrices start random, drawn from the global RNG: seed it, or the same command
    # trains a different adapter depending on what ran before in the process.
    torch.manual_seed(cfg.seed)
    out = claim_output_dir(cfg.out_dir)
    model = get_peft_model(base_model, PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                      target_modules=cfg.targets, task_type="CAUSAL_LM"))

    with Telemetry(dist.rank, prefix="lora") as tel:
        result = train(model, run_cfg, out, batch_fn=batch_fn, eval_fn=eval_fn, dist=dist, telemetry=tel,
                       flops_per_token=flops_per_token(base_model.config, cfg.max_len),
                       config_record=run_cfg.model_dump(), inputs=[cfg.base, cfg.data])
        _save_adapter(result.engine, out, cfg.base, dist, records=result.records)
        if cfg.merge and dist.rank == 0:
            merge_adapter(cfg.base, out, out / "merged")
        stats = RunStats(**result.to_metadata(), **{f"data_{k}": v for k, v in data_stats.to_metadata().items()},
                         trainable_fraction=result.trainable_params / result.params, rank=cfg.rank,
                         alpha=cfg.alpha, targets=cfg.targets, qlora=cfg.qlora, world_size=dist.world_size,
                         adapter_dir=str(out), merged_dir=str(out / "merged") if cfg.merge else None)
        stats["val_loss"] = stats.pop("final_val_loss")
        report_run(out, stats, dist, tel, title=f"LoRA r={cfg.rank}")
    stats.model = result.engine.module
    return stats


def main(argv: list[str] | None = None) -> int:
    from lmforge.train.launch import run_cli, training_parser

    p = training_parser("lmforge lora", __doc__, LoraConfig, {"--out": "out_dir"})
    return run_cli("lmforge.train.lora", LoraConfig, train_lora, p, argv)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('lora', main, sys.argv[1:]))
