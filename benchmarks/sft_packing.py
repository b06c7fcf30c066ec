"""SFT throughput with sequence packing against padding, on the same model and conversations.

    python benchmarks/sft_packing.py [--conversations 384] [--max-len 512] [--micro-batch 8 16]
                                     [--threads 1] [--repeats 2] [--device cpu]

Conversations are GSM8K train problems (system prompt, question, worked answer) from the local
benchmark mirror (`lmforge.paths.benchmarks_dir()`); the tokenizer is a byte-level BPE (vocab
1024, ChatML) trained here on GSM8K train text; the model is the ``tiny`` preset, freshly
initialised with the same seed for both modes. Both modes train the same micro-batches of
``--micro-batch`` conversations (a seeded shuffle), each conversation exactly once (forward,
backward, AdamW step, with lmforge's own batch builders and ``forward_nll``), as ``lmforge sft``
does with ``packing`` off and on:

* padding: each conversation a row, right-padded to the longest of the micro-batch (``collate``);
* packing: the conversations first-fit (longest first) into rows of ``--max-len`` positions with
  block-diagonal attention (``pack_batch``).

Trained tokens are the assistant targets, total tokens the non-padding input positions; both are
the same for the two modes, so their tokens/s ratio is the inverse ratio of wall times. One
untimed warm-up micro-batch per mode; the order of the modes alternates over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lmforge.paths import benchmarks_dir  # noqa: E402
from lmforge.train.loop import forward_nll, input_tokens  # noqa: E402
from lmforge.tokenize.bpe import CHAT_TEMPLATE  # noqa: E402
from lmforge.train.model import build_model, model_config  # noqa: E402
from lmforge.train.packing import pack_batch  # noqa: E402
from lmforge.train.sft import build_examples, collate  # noqa: E402


def gsm8k_rows() -> list[dict]:
    root = benchmarks_dir()
    path = None if root is None else root / "gsm8k" / "train.jsonl"
    if path is None or not path.exists():
        sys.exit("GSM8K mirror not found: set LMFORGE_BENCHMARKS_DIR (see docs/ENGINE.md)")
    with open(path) as f:
        return [json.loads(line) for line in f]


def train_tokenizer(rows: list[dict], out_dir):
    """A byte-level BPE (vocab 1024) on GSM8K text, with our special tokens and chat template;
    shared with sft_vs_trl.py."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((r["question"] + "\n" + r["answer"] for r in rows), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHAT_TEMPLATE  # the pipeline's own ChatML template
    hf.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def run(mode: str, batches: list[dict], total: int, tok, device: torch.device) -> dict:
    model = build_model(model_config("tiny", len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                                     pad_id=tok.pad_token_id), seed=0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["targets"] != -100).sum())
        nll = forward_nll(model, batch)
        (nll / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return nll.item(), n

    step(batches[0])  # warm-up (allocator, kernels), not timed; weights reset below
    model = build_model(model.config, seed=0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    nll_sum, trained = 0.0, 0
    for batch in batches:
        nll, n = step(batch)
        nll_sum += nll
        trained += n
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    positions = sum(b["input_ids"].numel() for b in batches)
    return {"mode": mode, "micro_batches": len(batches), "wall_s": wall, "trained_tokens": trained,
            "total_tokens": total, "positions": positions, "trained_tok_s": trained / wall,
            "total_tok_s": total / wall, "mean_loss": nll_sum / trained}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=384)
    p.add_argument("--max-len", type=int, default=512, help="truncation length and packed row length")
    p.add_argument("--micro-batch", type=int, nargs="+", default=[8, 16], help="conversations per micro-batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (lmforge's CPU default is 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (best kept), alternating order")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows = gsm8k_rows()
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(rows[:3000], tmp)
    chats = [[{"role": "system", "content": "Solve the problem step by step."},
              {"role": "user", "content": r["question"]},
              {"role": "assistant", "content": r["answer"]}] for r in rows[3000:3000 + args.conversations]]
    examples, stats = build_examples(tok, chats, args.max_len)
    order = np.random.default_rng(args.seed).permutation(len(examples))
    pad_id = tok.pad_token_id

    # Every conversation of n tokens feeds n - 1 inputs (its last token is only a target); the
    # padded collate's own mask also counts the last token of all but the longest of a batch.
    total = sum(len(e["input_ids"]) - 1 for e in examples)
    print(f"{stats.kept} GSM8K conversations ({stats.truncated} truncated to {args.max_len}), "
          f"{stats.tokens:,} tokens ({total:,} inputs, {stats.trained_tokens:,} trained); tiny preset, "
          f"vocab {len(tok)}, {args.device}, {args.threads} thread(s), best of {args.repeats}")
    print()
    print(f"{'micro-batch':>11} {'mode':<8} {'rows':>5} {'positions':>10} {'filled':>7} {'wall s':>8} "
          f"{'trained tok/s':>14} {'total tok/s':>12} {'mean loss':>10}")
    ratios = []
    for mb in args.micro_batch:
        chunks = [[examples[i] for i in order[s:s + mb]] for s in range(0, len(order), mb)]
        batches = {"padding": [collate(c, pad_id) for c in chunks],
                   "packing": [pack_batch(c, args.max_len, pad_id) for c in chunks]}
        assert total == sum(input_tokens(b) for b in batches["packing"])
        best: dict[str, dict] = {}
        for r in range(args.repeats):
            for mode in (("padding", "packing") if r % 2 == 0 else ("packing", "padding")):
                res = run(mode, batches[mode], total, tok, device)
                if mode not in best or res["wall_s"] < best[mode]["wall_s"]:
                    best[mode] = res
        assert best["padding"]["trained_tokens"] == best["packing"]["trained_tokens"]
        for mode in ("padding", "packing"):
            res = best[mode]
            n_rows = sum(b["input_ids"].size(0) for b in batches[mode])
            print(f"{mb:>11} {mode:<8} {n_rows:>5} {res['positions']:>10,} "
                  f"{100 * total / res['positions']:>6.1f}% {res['wall_s']:>8.2f} "
                  f"{res['trained_tok_s']:>14,.0f} {res['total_tok_s']:>12,.0f} {res['mean_loss']:>10.4f}")
        ratios.append((mb, best["packing"]["total_tok_s"] / best["padding"]["total_tok_s"]))
    print()
    for mb, ratio in ratios:
        print(f"micro-batch {mb}: packing / padding tokens/s = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
