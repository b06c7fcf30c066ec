"""Preference pairs: what DPO and the reward model train on.

    lmforge preferences --from-jsonl PAIRS.jsonl --out pairs.jsonl
    lmforge preferences --from-hub HuggingFaceH4/ultrafeedback_binarized --split train_prefs --out pairs.jsonl
    lmforge preferences --on-policy SFT_MODEL_DIR --problems arithmetic --out pairs.jsonl

A pair is one JSON object per line: ``{"prompt": str, "chosen": str, "rejected": str}`` (plus an
optional ``id`` and ``source``). ``prompt`` is the user's message; ``chosen`` and ``rejected`` are
assistant replies to it. Three sources:

- a JSONL file of such pairs (checked line by line; a bad line is one error naming file:line);
- the Hugging Face hub when online (a binarized feedback set whose ``chosen``/``rejected`` are
  conversations: the last assistant turn is the reply, the user turns before it the prompt);
- on-policy pairs built offline: the SFT model samples answers to training problems with a
  verifiable answer (``lmforge.align.problems``); an answer the problem's reward scores 0 is
  ``rejected`` and the reference answer (scored 1 by the same reward) is ``chosen``. The model
  learns against its own mistakes, which is what DPO corrects best.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from lmforge.align.generate import render_prompt
from lmforge.errors import InputError, LmforgeError

PAIR_KEYS = ("prompt", "chosen", "rejected")


def check_pair(row: Any, where: str) -> dict[str, Any]:
    """A valid pair (three non-empty strings, chosen != rejected) or an InputError naming ``where``."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: a preference pair is a JSON object, got {type(row).__name__}")
    for key in PAIR_KEYS:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise InputError(f"{where}: a preference pair needs a non-empty string {key!r} "
                             "(prompt, chosen, rejected)")
    if row["chosen"] == row["rejected"]:
        raise InputError(f"{where}: chosen and rejected are the same text")
    return row


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Pairs from a JSONL file; a bad record is an InputError naming the file and line."""
    from lmforge.io import iter_jsonl

    pairs = [check_pair(row, f"{path}:{lineno}") for lineno, row in iter_jsonl(path)]
    if not pairs:
        raise InputError(f"{path}: no preference pairs (an empty file?)")
    return pairs


def write_pairs(pairs: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write pairs as JSONL, atomically; every record is checked first."""
    from lmforge.io import atomic_path

    rows = [check_pair(p, f"pair {i}") for i, p in enumerate(pairs)]
    if not rows:
        raise LmforgeError(f"no preference pairs to write to {path}")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# pairs -> token ids (shared by DPO and the reward model)


def tokenize_pair(tokenizer, pair: dict[str, Any], max_len: int, max_prompt_len: int,
                  eot: str | None = None) -> tuple[dict[str, list[int]], bool]:
    """``prompt_ids`` (the rendered prompt with the generation prompt), ``chosen_ids`` and
    ``rejected_ids`` (each reply followed by the end-of-turn token: the model learns to answer and
    to stop, as in SFT), and whether anything was cut. The three are tokenized separately, so the
    completion's tokens are exactly what the model generates after the prompt. A prompt longer
    than ``max_prompt_len`` keeps its end; a reply is cut to ``max_len`` tokens with its prompt."""
    from lmforge.train.sft import end_of_turn_token

    eot = eot or end_of_turn_token(tokenizer)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt_ids = ids(render_prompt(tokenizer, pair["prompt"]))
    cut = len(prompt_ids) > max_prompt_len
    prompt_ids = prompt_ids[-max_prompt_len:]
    room = max(0, max_len - len(prompt_ids))
    out = {"prompt_ids": prompt_ids}
    for side in ("chosen", "rejected"):
        completion = ids(pair[side] + eot)
        cut = cut or len(completion) > room
        out[f"{side}_ids"] = completion[:room]
    return out, cut


def tokenize_pairs(tokenizer, pairs: list[dict[str, Any]], max_len: int,
                   max_prompt_len: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Every pair tokenized (``tokenize_pair``); pairs left without a reply token on either side
    are dropped, and counted."""
    from lmforge.train.sft import end_of_turn_token

    eot = end_of_turn_token(tokenizer)
    examples, stats = [], {"pairs": len(pairs), "kept": 0, "truncated": 0, "dropped": 0}
    for pair in pairs:
        ex, cut = tokenize_pair(tokenizer, pair, max_len, max_prompt_len, eot)
        stats["truncated"] += int(cut)
        if not ex["chosen_ids"] or not ex["rejected_ids"]:
            stats["dropped"] += 1
            continue
        examples.append(ex)
    stats["kept"] = len(examples)
    if not examples:
        raise LmforgeError(f"no preference pair has a reply token left after truncation to "
                           f"max_len {max_len} (prompts up to max_prompt_len {max_prompt_len})")
    return examples, stats


def collate_pairs(examples: list[dict], pad_id: int):
    """One right-padded micro-batch of 2B rows, the B chosen sequences then the B rejected ones
    (one forward for both): ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on the
    reply's tokens), plus ``ref_logps`` [2B] when the examples carry the reference's log-probs."""
    import torch

    rows = [(e["prompt_ids"], e[f"{side}_ids"]) for side in ("chosen", "rejected") for e in examples]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, :len(p) + len(c)] = 1
        completion[i, len(p):len(p) + len(c)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "completion_mask": completion}
    if "ref_chosen_logp" in examples[0]:
        batch["ref_logps"] = torch.tensor([e["ref_chosen_logp"] for e in examples]
                                          + [e["ref_rejected_logp"] for e in examples], dtype=torch.float32)
    return batch


# ---------------------------------------------------------------------------------------------
# the hub (online only)


def _reply_and_prompt(side: Any) -> tuple[str | None, str | None]:
    """(prompt, reply) of one side of a hub record: a conversation (list of messages) whose last
    turn is the assistant's, or a plain string (reply only)."""
    if isinstance(side, str):
        return None, side
    if isinstance(side, list) and side and all(isinstance(m, dict) for m in side):
        if side[-1].get("role") != "assistant":
            return None, None
        users = [m.get("content") for m in side[:-1] if m.get("role") == "user"]
        return (users[-1] if users else None), side[-1].get("content")
    return None, None


def hub_record_to_pair(record: dict[str, Any]) -> dict[str, Any] | None:
    """One hub row as a pair, or None when it is not a single-reply preference (the common
    binarized layouts: ``prompt`` + ``chosen``/``rejected`` as strings or conversations)."""
    p_c, chosen = _reply_and_prompt(record.get("chosen"))
    p_r, rejected = _reply_and_prompt(record.get("rejected"))
    prompt = record.get("prompt") if isinstance(record.get("prompt"), str) else (p_c or p_r)
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if not all(isinstance(v, str) and v.strip() for v in pair.values()) or chosen == rejected:
        return None
    return pair


def pairs_from_hub(name: str, split: str = "train_prefs", limit: int | None = None) -> list[dict[str, Any]]:
    """Preference pairs from a hub data set (e.g. ``HuggingFaceH4/ultrafeedback_binarized``,
    split ``train_prefs``). Needs the network; offline (``HF_HUB_OFFLINE=1`` or no connection)
    it is one clear error. Rows that are not single-reply preferences are skipped."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0"):
        raise LmforgeError(f"--from-hub {name}: the hub is offline here (HF_HUB_OFFLINE / "
                           "HF_DATASETS_OFFLINE is set); give --from-jsonl or --on-policy instead")
    try:
        from datasets import load_dataset

        data = load_dataset(name, split=split, streaming=limit is not None)
    except Exception as e:  # noqa: BLE001 - network, auth and unknown names alike: one line
        raise LmforgeError(f"--from-hub {name} (split {split}): cannot load it "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    pairs = []
    for i, row in enumerate(data):
        if limit is not None and len(pairs) >= limit:
            break
        pair = hub_record_to_pair(row)
        if pair is not None:
            pairs.append({**pair, "id": str(row.get("prompt_id", i)), "source": f"hub:{name}"})
    if not pairs:
        raise LmforgeError(f"--from-hub {name}: no prompt/chosen/rejected pairs in split {split}")
    return pairs


# ---------------------------------------------------------------------------------------------
# on-policy pairs


def on_policy_pairs(model_dir: str | os.PathLike, problems: list[dict[str, Any]], *, samples: int = 4,
                    max_new_tokens: int = 16, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                    adapter_dir: str | os.PathLike | None = None, pairs_per_problem: int = 1,
                    batch_size: int = 32, device: str = "cpu") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairs from the model's own mistakes: for each problem, ``samples`` sampled answers; up to
    ``pairs_per_problem`` distinct ones that the problem's reward scores 0 become ``rejected``,
    each against the reference answer (``problem["answer"]``, which the same reward must score 1)
    as ``chosen``. Problems the model always answers right give no pair. Returns the pairs and
    what happened (problems, samples, sample accuracy, pairs)."""
    from lmforge.align.generate import generate, load_policy
    from lmforge.align.rewards import score

    if samples < 1 or pairs_per_problem < 1:
        raise LmforgeError("samples and pairs_per_problem must be at least 1")
    model, tokenizer = load_policy(str(model_dir), adapter_dir=adapter_dir, device=device)
    completions = generate(model, tokenizer, [p["prompt"] for p in problems], n=samples, chat=True,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           seed=seed, batch_size=batch_size)
    pairs, n_correct, n_unverifiable, n_all_right = [], 0, 0, 0
    for problem, answers in zip(problems, completions):
        chosen = problem["answer"]
        if score(problem, chosen) != 1.0:  # the reference must be what the reward calls right
            n_unverifiable += 1
            continue
        rewards = [score(problem, a) for a in answers]
        n_correct += sum(1 for r in rewards if r == 1.0)
        wrong = list(dict.fromkeys(a for a, r in zip(answers, rewards) if r == 0.0 and a.strip() and a != chosen))
        if not wrong:
            n_all_right += 1
        for k, rejected in enumerate(wrong[:pairs_per_problem]):
            pairs.append({"prompt": problem["prompt"], "chosen": chosen, "rejected": rejected,
                          "id": f"{problem.get('id', len(pairs))}#{k}", "source": "on_policy"})
    sampled = samples * (len(problems) - n_unverifiable)
    stats = {"problems": len(problems), "samples": sampled, "sample_accuracy": n_correct / max(1, sampled),
             "problems_all_right": n_all_right, "problems_unverifiable": n_unverifiable, "pairs": len(pairs)}
    return pairs, stats


# ---------------------------------------------------------------------------------------------
# the command


def load_problems(arg: str, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The problems on-policy pairs sample: ``arithmetic`` (GSM8K's train-split calculations,
    shuffled with ``seed``) or a problems JSONL file; at most ``limit``."""
    from lmforge.align.problems import arithmetic_problems, read_problems

    if arg == "arithmetic":
        return arithmetic_problems("train", limit=limit, seed=seed)
    problems = read_problems(arg)
    return problems[:limit] if limit is not None else problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lmforge.io import check_output

    p = argparse.ArgumentParser(prog="lmforge preferences", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-jsonl", metavar="FILE", help="a JSONL file of prompt/chosen/rejected pairs")
    src.add_argument("--from-hub", metavar="NAME", help="a hub data set (needs the network)")
    src.add_argument("--on-policy", metavar="MODEL_DIR", help="the SFT model whose wrong answers are rejected")
    p.add_argument("--out", required=True, help="pairs JSONL to write")
    p.add_argument("--split", default="train_prefs", help="hub split [train_prefs]")
    p.add_argument("--problems", default="arithmetic",
                   help="on-policy: 'arithmetic' (GSM8K train calculations) or a problems JSONL [arithmetic]")
    p.add_argument("--adapter", default=None, help="on-policy: a PEFT adapter over MODEL_DIR")
    p.add_argument("--limit", type=int, default=None, help="at most this many problems / hub pairs")
    p.add_argument("--samples", type=int, default=4, help="on-policy: sampled answers per problem [4]")
    p.add_argument("--pairs-per-problem", type=int, default=1, help="on-policy: distinct wrong answers kept [1]")
    p.add_argument("--max-new-tokens", type=int, default=16, help="on-policy: tokens per answer [16]")
    p.add_argument("--temperature", type=float, default=1.0, help="on-policy: sampling temperature [1.0]")
    p.add_argument("--seed", type=int, default=0, help="problem order and sampling seed [0]")
    args = p.parse_args(argv)
    check_output(args.out, "file")
    if args.from_jsonl:
        pairs, stats = read_pairs(args.from_jsonl), {}
    elif args.from_hub:
        pairs, stats = pairs_from_hub(args.from_hub, args.split, args.limit), {}
    else:
        pairs, stats = on_policy_pairs(args.on_policy, load_problems(args.problems, args.limit, args.seed),
                                       samples=args.samples, max_new_tokens=args.max_new_tokens,
                                       temperature=args.temperature, seed=args.seed, adapter_dir=args.adapter,
                                       pairs_per_problem=args.pairs_per_problem)
    if not pairs:
        raise LmforgeError(f"no preference pairs ({json.dumps(stats)}): the model answered every "
                           "problem right; sample more (--samples) or at a higher --temperature")
    write_pairs(pairs, args.out)
    print(json.dumps({"pairs": len(pairs), "out": str(args.out), **stats}))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run("preferences", main, sys.argv[1:]))
