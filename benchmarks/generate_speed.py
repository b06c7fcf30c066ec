"""Batched sampling with the KV cache (lmforge.align.generate, what GRPO samples its groups with)
against Hugging Face's ``generate`` doing the same sampling, on one model and the same prompts.

    python benchmarks/generate_speed.py [--prompts 32] [--n 8] [--max-new-tokens 32]
        [--batch-size 64] [--threads 1] [--model DIR]

Setup: GSM8K test questions from the local benchmark mirror as one-turn chats; without
``--model`` a byte-level BPE tokenizer (vocab 1024) trained here on GSM8K train text and a freshly
initialised ``tiny`` model (it rarely ends its turn, so nearly every row runs to
``--max-new-tokens``: the cost of the loop, not of early stops). Both methods sample ``--n``
completions per prompt at temperature 1 from rows of ``--batch-size`` sequences (prompts
left-padded), stopping rows at ``<|im_end|>``/EOS; HF gets ``num_return_sequences=n`` and the same
rows. Generated tokens are counted up to each row's stop; tokens/s is the best of 2 passes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_model(work: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmforge.benchmarks import get
    from lmforge.tokenize.bpe import CHAT_TEMPLATE
    from lmforge.train.model import build_model as build, model_config

    rows = get("gsm8k").items("train")[:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["question"] + "\n" + r["answer"] for r in rows],
                            trainer=trainers.BpeTrainer(
                                vocab_size=1024, show_progress=False,
                                special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = CHAT_TEMPLATE
    model = build(model_config("tiny", len(hf), bos_id=hf.bos_token_id, eos_id=hf.eos_token_id,
                               pad_id=hf.pad_token_id), seed=0)
    model.save_pretrained(work)
    hf.save_pretrained(work)
    return work


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)

    import torch

    from lmforge.align.generate import generate_ids, load_policy, render_prompt, stop_ids
    from lmforge.benchmarks import get

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = load_policy(args.model or build_model(Path(tmp)))
        questions = [r["question"] for r in get("gsm8k").items("test")[:args.prompts]]
        rendered = [render_prompt(tok, q) for q in questions]
        stops = sorted(stop_ids(tok))
        per_call = max(1, args.batch_size // args.n)  # prompts per HF call: the same rows

        def ours():
            g = generate_ids(model, tok, rendered, n=args.n, max_new_tokens=args.max_new_tokens,
                             temperature=1.0, seed=0, batch_size=args.batch_size)
            return sum(len(c) for c in g.completion_ids)

        def hf():
            total = 0
            for i in range(0, len(rendered), per_call):
                enc = tok(rendered[i:i + per_call], add_special_tokens=False, return_tensors="pt",
                          padding=True)
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0,
                                     num_return_sequences=args.n, max_new_tokens=args.max_new_tokens,
                                     eos_token_id=stops, pad_token_id=tok.pad_token_id)
                for row in out[:, enc.input_ids.shape[1]:].tolist():
                    k = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
                    total += k
            return total

        results = {}
        with torch.no_grad():
            for name, fn in [("lmforge generate (batched, KV cache)", ours), ("HF generate (sampling)", hf)]:
                best, tokens = float("inf"), 0
                for _ in range(2):
                    t0 = time.perf_counter()
                    tokens = fn()
                    best = min(best, time.perf_counter() - t0)
                results[name] = (tokens, best)
    print(f"{len(rendered)} prompts x {args.n} samples, rows of {args.batch_size}, "
          f"up to {args.max_new_tokens} new tokens")
    print(f"{'method':40s} {'tokens':>8s} {'seconds':>8s} {'tokens/s':>10s}")
    for name, (tokens, t) in results.items():
        print(f"{name:40s} {tokens:8d} {t:8.2f} {tokens / t:10.1f}")
    (a_tok, a_t), (b_tok, b_t) = results.values()
    print(f"ratio lmforge / HF (tokens/s): {(a_tok / a_t) / (b_tok / b_t):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
