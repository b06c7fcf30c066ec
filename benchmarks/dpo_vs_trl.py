"""lmforge DPO against TRL's DPOTrainer on one model and one set of preference pairs.

    python benchmarks/dpo_vs_trl.py [--pairs 256] [--micro-batch 8] [--steps 12] [--warmup 3]
                                    [--beta 0.1] [--lr 1e-3] [--threads 1] [--lora] [--rank 8]
                                    [--repeats 3]

Setup: the byte-level BPE tokenizer (vocab 1024) and ChatML template of the SFT benchmark
(``sft_packing.train_tokenizer``), trained here on GSM8K text; the ``tiny`` preset model,
initialised once and saved as the base (and reference) of both runs; preference pairs over GSM8K's
calculator annotations (``lmforge.align.problems.arithmetic_problems``: the prompt ``48/2=``, the
right result ``chosen``, a wrong one ``rejected``).

Both run ``--warmup + --steps`` optimizer steps of ``--micro-batch`` pairs, the same pairs in the
same order (TRL reads them in lmforge's order through a sequential sampler), with the same
settings: DPO's sigmoid loss with ``--beta``, AdamW (betas 0.9/0.95, eps 1e-8, no weight decay),
constant ``--lr`` with no warmup, gradient clipping at 1.0, fp32 on the CPU, no dropout, one torch
thread. TRL's reference is a second copy of the base (``ref_model``), computed in every step;
lmforge's is computed once per pair before training (its reference log-probs are precomputed).
TRL tokenizes the pairs itself: it is given the prompt rendered with the chat template and the
generation prompt, and a tokenizer whose EOS is ``<|im_end|>`` (so the EOS it appends to each reply
is the end-of-turn token lmforge appends); its token ids are checked against lmforge's.

Printed: the per-step losses of both and their largest relative difference, and the speed of the
timed steps (pairs/s; the first ``--warmup`` steps are not timed) with the ratio, also with
lmforge's reference pass charged to the timed pairs. Each framework runs in its own subprocess,
``--repeats`` rounds alternating, and each one's fastest round counts (a busy machine slows
whichever runs at the time). ``run_trl`` and ``run_lmforge`` are also what the test
``tests/align_dpo/test_dpo_vs_trl.py`` compares.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def step_order(n_pairs: int, micro_batch: int, steps: int, seed: int) -> list[list[int]]:
    """Which pairs each step of an lmforge DPO run reads (``val_fraction=0``: all of them)."""
    from lmforge.train.sft import ExampleOrder

    order = ExampleOrder(n_pairs, seed)
    return [order.indices(s, 0, micro_batch, 1, 0, 1) for s in range(steps)]


def run_lmforge(base: Path, pairs_jsonl: Path, out: Path, *, steps: int, micro_batch: int, beta: float,
                lr: float, seed: int = 0, threads: int = 1, lora: bool = False, rank: int = 8,
                max_len: int = 256) -> dict:
    """Per-step losses (metrics.jsonl) and per-step wall times of ``lmforge.align.dpo.dpo``."""
    from lmforge.align.dpo import DPOConfig, dpo

    cfg = DPOConfig(base=str(base), data=str(pairs_jsonl), out_dir=str(out), max_steps=steps,
                    micro_batch=micro_batch, beta=beta, lr=lr, warmup_steps=0, schedule="constant",
                    weight_decay=0.0, grad_clip=1.0, beta1=0.9, beta2=0.95, val_fraction=0.0,
                    eval_batches=0, log_every=1, seed=seed, device="cpu", precision="fp32",
                    cpu_threads=threads, compile=False, max_len=max_len, max_prompt_len=max_len,
                    lora=lora, rank=rank, alpha=2.0 * rank, dropout=0.0)
    t0 = time.perf_counter()
    stats = dpo(cfg)
    total = time.perf_counter() - t0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps_ = [m for m in lines if "tokens_per_s" in m]
    # With log_every=1 each line's tokens_per_s is that step's input tokens over its wall time.
    walls, prev = [], 0
    for m in steps_:
        walls.append((m["tokens"] - prev) / m["tokens_per_s"])
        prev = m["tokens"]
    return {"losses": [m["loss"] for m in steps_], "step_s": walls, "process_s": total,
            "reference_s": stats["reference_s"],
            "accuracy": [m.get("accuracy") for m in steps_], "trainable_params": stats["trainable_params"]}


def run_trl(base: Path, pairs_in_order: list[dict], out: Path, *, steps: int, micro_batch: int, beta: float,
            lr: float, seed: int = 0, threads: int = 1, lora: bool = False, rank: int = 8,
            max_len: int = 256) -> dict:
    """Per-step losses and wall times of TRL's DPOTrainer, reading ``pairs_in_order`` as they come,
    and the token ids TRL built (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)."""
    import torch
    import trl
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lmforge.align.preferences import render_prompt
    from lmforge.train.sft import end_of_turn_token

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    # TRL appends the tokenizer's EOS to each reply of a plain-text pair: make that the
    # end-of-turn token lmforge appends.
    tok.eos_token = end_of_turn_token(tok)
    data = Dataset.from_list([{"prompt": render_prompt(tok, p["prompt"]), "chosen": p["chosen"],
                               "rejected": p["rejected"]} for p in pairs_in_order])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    ref_model = None if lora else AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                                       local_files_only=True)
    peft_config = None
    if lora:
        from peft import LoraConfig

        from lmforge.train.config import LLAMA_PROJECTIONS

        peft_config = LoraConfig(r=rank, lora_alpha=2.0 * rank, lora_dropout=0.0, target_modules=LLAMA_PROJECTIONS,
                                 task_type="CAUSAL_LM")

    losses: list[float] = []
    ends: list[float] = []

    class InOrder(DPOTrainer):
        """The pairs in the given order, and each training step's exact loss (the logged one is
        averaged over the logging window)."""

        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                losses.append(float((loss[0] if return_outputs else loss).detach()))
            return loss

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            ends.append(-time.perf_counter())

        def on_step_end(self, *a, **k):
            ends[-1] += time.perf_counter()

    args = DPOConfig(output_dir=str(out), beta=beta, loss_type=["sigmoid"], per_device_train_batch_size=micro_batch,
                     gradient_accumulation_steps=1, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
                     max_grad_norm=1.0, max_length=max_len, precompute_ref_log_probs=False, disable_dropout=True,
                     gradient_checkpointing=False, bf16=False, use_cpu=True, logging_steps=1, save_strategy="no",
                     report_to=[], dataloader_num_workers=0, seed=seed, disable_tqdm=True)
    trainer = InOrder(model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tok,
                      peft_config=peft_config, callbacks=[StepClock()])
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    ds = trainer.train_dataset
    return {"losses": losses, "step_s": ends, "process_s": total, "trl_version": trl.__version__,
            "ids": {k: [list(x) for x in ds[k]] for k in ("prompt_ids", "chosen_ids", "rejected_ids")},
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


# ---------------------------------------------------------------------------------------------
# the benchmark


def prepare(work: Path, n_pairs: int, seed: int) -> dict:
    import random

    from lmforge.align.preferences import write_pairs
    from lmforge.align.problems import arithmetic_problems
    from lmforge.train.model import build_model, model_config
    from sft_packing import gsm8k_rows, train_tokenizer

    base = work / "base"
    tok = train_tokenizer(gsm8k_rows()[:3000], base)
    cfg = model_config("tiny", len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    build_model(cfg, seed=0).save_pretrained(base)
    rng = random.Random(seed)
    problems = arithmetic_problems("train", seed=seed, max_value=100)
    if len(problems) < n_pairs:
        sys.exit(f"only {len(problems)} arithmetic problems in the mirror; ask for fewer --pairs")
    pairs = [{"prompt": p["prompt"], "chosen": p["answer"],
              "rejected": str(int(p["answer"]) + rng.choice([-3, -2, -1, 1, 2, 3, 10]))} for p in problems[:n_pairs]]
    write_pairs(pairs, work / "pairs.jsonl")
    return {"pairs": len(pairs), "vocab": len(tok)}


def worker(args) -> int:
    work = Path(args.work)
    kw = dict(steps=args.warmup + args.steps, micro_batch=args.micro_batch, beta=args.beta, lr=args.lr,
              seed=args.seed, threads=args.threads, lora=args.lora, rank=args.rank)
    if args.worker == "lmforge":
        res = run_lmforge(work / "base", work / "pairs.jsonl", work / "lmforge_run", **kw)
    else:
        from lmforge.align.preferences import read_pairs

        pairs = read_pairs(work / "pairs.jsonl")
        order = step_order(len(pairs), args.micro_batch, args.warmup + args.steps, args.seed)
        res = run_trl(work / "base", [pairs[i] for step in order for i in step], work / "trl_run", **kw)
        res.pop("ids")
    (work / f"{args.worker}.json").write_text(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=256, help="preference pairs (>= steps x micro-batch)")
    p.add_argument("--micro-batch", type=int, default=8, help="pairs per step (no grad accumulation)")
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--lora", action="store_true", help="both train a LoRA adapter (reference: adapter disabled)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; each framework's best counts")
    p.add_argument("--worker", choices=["lmforge", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    n_steps = args.warmup + args.steps
    if args.pairs < n_steps * args.micro_batch:
        sys.exit(f"--pairs {args.pairs} < {n_steps * args.micro_batch} (steps x micro-batch): each pair once")
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl.") as tmp:
        work = Path(tmp)
        setup = prepare(work, args.pairs, args.seed)
        print(f"{setup['pairs']} arithmetic preference pairs; tiny preset (vocab {setup['vocab']}); "
              f"{args.micro_batch} pairs per step, {args.warmup} untimed + {args.steps} timed steps; beta {args.beta}, "
              f"lr {args.lr}; CPU fp32, {args.threads} thread(s){'; LoRA r=%d' % args.rank if args.lora else ''}")
        results: dict[str, list[dict]] = {"lmforge": [], "trl": []}
        # Alternate the runs, --repeats rounds: a busy machine slows whichever runs at the time,
        # so each framework's best round is compared.
        for _ in range(args.repeats):
            for run in ("lmforge", "trl"):
                shutil.rmtree(work / f"{run}_run", ignore_errors=True)
                cmd = [sys.executable, __file__, "--worker", run, "--work", str(work), "--pairs", str(args.pairs),
                       "--micro-batch", str(args.micro_batch), "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--beta", str(args.beta), "--lr", str(args.lr), "--threads",
                       str(args.threads), "--rank", str(args.rank), "--seed", str(args.seed)] + (
                           ["--lora"] if args.lora else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                    print(f"\n{run} FAILED (exit {proc.returncode}):\n{tail}\n")
                    return 1
                results[run].append(json.loads((work / f"{run}.json").read_text()))
    timed = slice(args.warmup, None)
    for run in results:
        if any(r["losses"] != results[run][0]["losses"] for r in results[run]):
            print(f"note: {run}'s losses differ between rounds")
    results = {run: min(rounds, key=lambda r: sum(r["step_s"][timed])) for run, rounds in results.items()}
    ours, theirs = results["lmforge"], results["trl"]
    print(f"\n{'step':>4} {'lmforge loss':>14} {'TRL loss':>14} {'rel. diff':>10}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours["losses"], theirs["losses"]), 1):
        rel = abs(a - b) / abs(b)
        worst = max(worst, rel)
        print(f"{i:>4} {a:>14.8f} {b:>14.8f} {rel:>10.2e}")
    print(f"largest relative loss difference over {len(ours['losses'])} steps: {worst:.2e}")
    pairs_timed = args.steps * args.micro_batch
    rows = []
    for name, r in (("lmforge dpo", ours), (f"TRL {theirs['trl_version']} DPOTrainer", theirs)):
        walls = sorted(r["step_s"][timed])
        rows.append((name, pairs_timed / sum(walls), args.micro_batch / walls[len(walls) // 2]))
    # lmforge's reference pass (every pair once, before training), charged pro rata to the timed pairs
    ref_share = ours["reference_s"] * pairs_timed / args.pairs
    with_ref = pairs_timed / (sum(ours["step_s"][timed]) + ref_share)
    print(f"\nbest of {args.repeats} alternating rounds each; {args.steps} timed steps of {args.micro_batch} pairs")
    print(f"{'':<24} {'pairs/s (all timed)':>20} {'pairs/s (median step)':>22}")
    for name, total, median in rows:
        print(f"{name:<24} {total:>20.1f} {median:>22.1f}")
    print(f"{'lmforge + reference pass':<24} {with_ref:>20.1f} {'':>22}   (its one no-grad pass over "
          f"{args.pairs} pairs took {ours['reference_s']:.2f} s; TRL runs the reference in every step)")
    print(f"lmforge / TRL: {rows[0][1] / rows[1][1]:.2f}x pairs/s over the timed steps "
          f"({rows[0][2] / rows[1][2]:.2f}x by median step), {with_ref / rows[1][1]:.2f}x with lmforge's "
          f"reference pass included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
