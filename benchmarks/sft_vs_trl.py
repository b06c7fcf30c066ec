"""lmforge SFT against TRL's SFTTrainer, and LoRA against full fine-tuning, on one model and data set.

    python benchmarks/sft_vs_trl.py [--conversations 256] [--max-len 512] [--micro-batch 8]
                                    [--steps 12] [--warmup 3] [--threads 1] [--device cpu]
                                    [--compile] [--rank 8]

Setup (as ``sft_packing.py``): GSM8K train problems from the local benchmark mirror
(``lmforge.paths.benchmarks_dir()``) as conversations (system prompt, question, worked answer);
a byte-level BPE tokenizer (vocab 1024) trained here on GSM8K text, with lmforge's ChatML template
(``lmforge.tokenize.bpe.CHAT_TEMPLATE``: the assistant reply and its ``<|im_end|>`` inside
``{% generation %}``); the ``tiny`` preset model, initialised once and saved as the base every run
starts from. Every run trains on assistant tokens only, for ``--warmup + --steps`` optimizer steps
of ``--micro-batch`` conversations, with the same conversations in the same order:

* ``lmforge sft``: ``lmforge.train.sft.sft`` with ``packing`` off (each micro-batch padded to its
  longest conversation) and on (block-diagonal packed rows of ``--max-len``);
* ``trl SFTTrainer``: ``assistant_only_loss=True`` (masks from the template's ``{% generation %}``),
  ``packing=False``, ``padding_free=False`` (padded to the longest of the batch, like lmforge's
  padding row), ``gradient_checkpointing=False`` (TRL's default is on; lmforge does not
  checkpoint), fp32 on CPU and bf16 autocast on GPU (as lmforge), fed the conversations in
  lmforge's order through a sequential sampler;
* ``lmforge lora``: ``lmforge.train.lora.train_lora`` (rank ``--rank`` on all projections),
  packing on, against the packed ``sft`` row.

Each run is its own subprocess, so peak memory is its own: ``torch.cuda.max_memory_allocated`` on
GPU, the process's max RSS (``resource.getrusage``) on CPU, beside the RSS after imports. The
first ``--warmup`` steps are not timed; the wall time of the others is taken from lmforge's own
per-step metrics (``log_every=1``) and from a TRL callback at each step end. Trained tokens are
the assistant targets of the timed steps, total tokens their inputs (a conversation of n tokens
feeds n - 1); both are counted from the batches each framework built, and must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IGNORE = -100
RUNS = ("lmforge-sft-padding", "trl-sft-padding", "lmforge-sft-packing", "lmforge-lora-packing")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# shared setup (parent process): tokenizer, base model, conversations in training order


def prepare_workdir(args, work: Path) -> dict:
    """Write base/ (model + tokenizer) and two copies of the conversations: data.jsonl in the given
    order for lmforge (which shuffles with its seed) and trl.jsonl already in lmforge's order."""
    import numpy as np

    from lmforge.train.model import build_model, model_config
    from lmforge.train.sft import ExampleOrder, build_examples

    # The same data and tokenizer as the packing benchmark. Imported here, in the parent only:
    # the workers' memory figures must not include that module's imports.
    from sft_packing import gsm8k_rows, train_tokenizer

    rows = gsm8k_rows()
    base = work / "base"
    tok = train_tokenizer(rows[:3000], base)
    cfg = model_config("tiny", len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, args.max_len)
    build_model(cfg, seed=0).save_pretrained(base)

    n_steps = args.warmup + args.steps
    need = n_steps * args.micro_batch
    if args.conversations < need:
        sys.exit(f"--conversations {args.conversations} < {need} (steps x micro-batch): each conversation once")
    chats = [[{"role": "system", "content": "Solve the problem step by step."},
              {"role": "user", "content": r["question"]},
              {"role": "assistant", "content": r["answer"]}] for r in rows[3000:3000 + args.conversations]]
    examples, stats = build_examples(tok, chats, args.max_len)
    if stats.kept != len(chats):
        sys.exit(f"{len(chats) - stats.kept} conversations have no assistant token after truncation")
    with open(work / "data.jsonl", "w") as f:
        f.writelines(json.dumps({"messages": c}) + "\n" for c in chats)
    # lmforge's epoch-0 order (sft.prepare: val_fraction 0 keeps every conversation for training).
    order = ExampleOrder(len(examples), args.seed)
    steps = [order.indices(s, 0, args.micro_batch, 1, 0, 1) for s in range(n_steps)]
    with open(work / "trl.jsonl", "w") as f:
        f.writelines(json.dumps({"messages": chats[i]}) + "\n" for step in steps for i in step)
    timed = [i for step in steps[args.warmup:] for i in step]
    return {"conversations": len(chats), "truncated": stats.truncated, "vocab": len(tok),
            "params": int(sum(p.numel() for p in build_model(cfg, seed=0).parameters())),
            "timed_trained": sum(sum(1 for x in examples[i]["labels"][1:] if x != IGNORE) for i in timed),
            "timed_total": sum(len(examples[i]["input_ids"]) - 1 for i in timed),
            "mean_len": float(np.mean([len(e["input_ids"]) for e in examples]))}


# ---------------------------------------------------------------------------------------------
# workers (one subprocess each)


def _peak_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "memory": "cuda max_memory_allocated"}
    return {"peak_mib": rss_mib(), "memory": "max RSS"}


def worker_lmforge(args, work: Path, run: str) -> dict:
    import torch

    from lmforge.train.lora import LoraConfig, train_lora
    from lmforge.train.sft import SFTConfig, sft

    base_rss = rss_mib()
    common = dict(base=str(work / "base"), data=str(work / "data.jsonl"), out_dir=str(work / run),
                  max_len=args.max_len, micro_batch=args.micro_batch, packing=run.endswith("packing"),
                  max_steps=args.warmup + args.steps, val_fraction=0.0, eval_every=0, eval_batches=0,
                  log_every=1, warmup_steps=0, schedule="constant", seed=args.seed, device=args.device,
                  cpu_threads=args.threads, compile=args.compile)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if run.startswith("lmforge-lora"):
        stats = train_lora(LoraConfig(**common, rank=args.rank))
    else:
        stats = sft(SFTConfig(**common))
    if args.device == "cuda":
        torch.cuda.synchronize()
    # With log_every=1 each metrics line's tokens_per_s is that step's input tokens over its own
    # wall time (batch building included, logging excluded), so the window recovers the time.
    lines = [json.loads(x) for x in (work / run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "tokens_per_s" in m]
    wall, prev, total = 0.0, 0, 0
    for m in steps:
        if m["step"] > args.warmup:
            wall += (m["tokens"] - prev) / m["tokens_per_s"]
            total += m["tokens"] - prev
        prev = m["tokens"]
    return {"wall_s": wall, "loop_total_tokens": total, "final_loss": stats["final_loss"],
            "trainable_params": stats["trainable_params"], "params": stats["params"],
            "rss_after_import_mib": base_rss, **_peak_memory(args.device)}


def worker_trl(args, work: Path, run: str) -> dict:
    import torch
    import trl
    from datasets import load_dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    base_rss = rss_mib()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(work / "base")
    model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32)
    data = load_dataset("json", data_files=str(work / "trl.jsonl"), split="train")
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    counts: list[tuple[int, int]] = []
    ends: list[float] = []

    class InOrder(SFTTrainer):
        """Conversations in the file's order (lmforge's), and a count of each step's tokens."""

        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

        def training_step(self, model, inputs, *a, **k):
            # labels are unshifted (the model shifts); a row of n real tokens feeds n - 1 inputs.
            mask = inputs["attention_mask"]
            counts.append((int((inputs["labels"][:, 1:] != IGNORE).sum()),
                           int(mask.sum()) - int((mask.sum(1) > 0).sum())))
            return super().training_step(model, inputs, *a, **k)

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    cfg = SFTConfig(output_dir=str(work / run), max_length=args.max_len, per_device_train_batch_size=args.micro_batch,
                    max_steps=args.warmup + args.steps, assistant_only_loss=True, packing=False,
                    padding_free=False, gradient_checkpointing=False, bf16=cuda, use_cpu=not cuda,
                    learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.1,
                    max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to="none",
                    dataloader_num_workers=0, seed=args.seed, torch_compile=args.compile,
                    disable_tqdm=True)
    trainer = InOrder(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[StepClock()])
    out = trainer.train()
    if len(ends) != args.warmup + args.steps:
        raise RuntimeError(f"TRL ran {len(ends)} steps, expected {args.warmup + args.steps}")
    timed = counts[args.warmup:]
    return {"wall_s": ends[-1] - ends[args.warmup - 1] if args.warmup else ends[-1] - ends[0],
            "trained_tokens": sum(c[0] for c in timed), "total_tokens": sum(c[1] for c in timed),
            "final_loss": out.training_loss, "trl_version": trl.__version__,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters()),
            "rss_after_import_mib": base_rss, **_peak_memory(args.device)}


def worker(args) -> int:
    work = Path(args.work)
    run = args.worker
    res = worker_trl(args, work, run) if run.startswith("trl") else worker_lmforge(args, work, run)
    (work / f"{run}.json").write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------------
# driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=256, help="GSM8K conversations (>= steps x micro-batch)")
    p.add_argument("--max-len", type=int, default=512, help="truncation length (and packed row length)")
    p.add_argument("--micro-batch", type=int, default=8, help="conversations per step (no grad accumulation)")
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (lmforge's CPU default is 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile in every run (lmforge does on GPU)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    p.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="sft_vs_trl.") as tmp:
        work = Path(tmp)
        setup = prepare_workdir(args, work)
        print(f"{setup['conversations']} GSM8K conversations ({setup['truncated']} truncated to {args.max_len}, "
              f"mean {setup['mean_len']:.0f} tokens); tiny preset ({setup['params']:,} params, vocab "
              f"{setup['vocab']}); micro-batch {args.micro_batch}, {args.warmup} untimed + {args.steps} timed "
              f"steps; {args.device}, {args.threads} thread(s){', compiled' if args.compile else ''}")
        print(f"timed steps: {setup['timed_trained']:,} trained (assistant) tokens, {setup['timed_total']:,} "
              f"input tokens")
        results: dict[str, dict] = {}
        for run in args.runs:
            cmd = [sys.executable, __file__, "--worker", run, "--work", str(work), "--max-len", str(args.max_len),
                   "--micro-batch", str(args.micro_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--device", args.device, "--rank", str(args.rank),
                   "--seed", str(args.seed)] + (["--compile"] if args.compile else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                print(f"\n{run} FAILED (exit {proc.returncode}):\n{tail}\n")
                continue
            res = json.loads((work / f"{run}.json").read_text())
            res["process_s"] = time.perf_counter() - t0
            # Tokens of the timed steps: the conversations every run trains on are the same, so
            # these are the parent's counts; TRL's own count (from its batches) must agree.
            if run.startswith("trl") and (res["trained_tokens"], res["total_tokens"]) != (
                    setup["timed_trained"], setup["timed_total"]):
                print(f"note: TRL's batches held {res['trained_tokens']:,} trained / {res['total_tokens']:,} input "
                      f"tokens in the timed steps, lmforge's {setup['timed_trained']:,} / {setup['timed_total']:,}")
            if run.startswith("lmforge") and run.endswith("packing") and res["loop_total_tokens"] != setup["timed_total"]:
                print(f"note: lmforge's loop counted {res['loop_total_tokens']:,} input tokens, expected "
                      f"{setup['timed_total']:,}")
            res["trained_tok_s"] = res.get("trained_tokens", setup["timed_trained"]) / res["wall_s"]
            res["total_tok_s"] = res.get("total_tokens", setup["timed_total"]) / res["wall_s"]
            results[run] = res

    if not results:
        return 1
    mem = next(iter(results.values()))["memory"]
    print()
    print(f"{'run':<22} {'trainable':>10} {'wall s':>7} {'trained tok/s':>14} {'total tok/s':>12} "
          f"{'peak MiB':>9} {'RSS@import':>10}")
    for run, r in results.items():
        print(f"{run:<22} {r['trainable_params']:>10,} {r['wall_s']:>7.2f} {r['trained_tok_s']:>14,.0f} "
              f"{r['total_tok_s']:>12,.0f} {r['peak_mib']:>9,.0f} {r['rss_after_import_mib']:>10,.0f}")
    print(f"(peak MiB: {mem}; RSS@import: max RSS after importing the framework, before any model)")
    if "trl-sft-padding" in results:
        print(f"TRL version {results['trl-sft-padding']['trl_version']}")
    print()

    def ratio(a: str, b: str, label: str) -> None:
        if a in results and b in results:
            ra, rb = results[a], results[b]
            print(f"{label}: tokens/s {ra['total_tok_s'] / rb['total_tok_s']:.2f}x, "
                  f"peak memory {ra['peak_mib'] / rb['peak_mib']:.2f}x")

    ratio("lmforge-sft-padding", "trl-sft-padding", "lmforge sft (padding) / TRL SFTTrainer (padding)")
    ratio("lmforge-sft-packing", "trl-sft-padding", "lmforge sft (packing) / TRL SFTTrainer (padding)")
    ratio("lmforge-sft-packing", "lmforge-sft-padding", "lmforge packing / padding")
    ratio("lmforge-lora-packing", "lmforge-sft-packing", "lmforge LoRA / full fine-tuning (packing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
