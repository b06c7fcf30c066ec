"""Build chat-format SFT data: JSONL rows of ``{"messages": [{"role", "content"}, ...]}``.

    lmforge sft-data --from-docs documents.parquet --out sft.jsonl [--limit 2000]
    lmforge sft-data --from-qa gsm8k/train.jsonl --out sft.jsonl [--limit 1000]
    lmforge sft-data --from-hub HuggingFaceH4/no_robots --split train --out sft.jsonl   (online)

Three sources:

``sft_data_from_benchmark`` / ``sft_data_from_qa``: question/answer pairs of a benchmark split
(``lmforge.benchmarks``), or of a GSM8K-format file ``{"question", "answer"}``, through the
benchmark's reader. For GSM8K the user turn is the question; the assistant turn keeps the worked
reasoning (the lines before ``#### N``, with the calculator annotations ``<<48/2=24>>`` removed)
and ends with ``The answer is N.`` (thousands separators dropped from N), the form the GSM8K
evaluation extracts the answer from (``lmforge/benchmarks/gsm8k/reader.py``).

``sft_data_from_documents``: instruction data derived OFFLINE from the crawled corpus, the pydoc
pages of the local Python documentation server (each document has ``url``, ``title``, ``text``).
Every answer is copied from the page it was derived from, so it can be checked against it; which
questions a page yields (``module_summary``, ``signature``, ``function_purpose``, ``classes``,
``exports``) and how each answer is found is the page parsing of ``pydoc_chats``.
Pages that yield nothing (no module name, no prose) are counted in the stats, not silently lost.
``kinds`` keeps only the named kinds (the pipeline trains the SFT model on the descriptive kinds and
the ``signatures`` adapter on ``signature``). All candidates are shuffled with ``seed`` and the
first ``max_examples`` kept.

``sft_data_from_hub``: any Hub data set with a ``messages`` column, or question/answer,
instruction/(input)/output or prompt/completion columns; needs network (not used by tests).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

from lmforge.benchmarks import get as get_benchmark
from lmforge.benchmarks.gsm8k.reader import chat as gsm8k_chat
from lmforge.curate.text import InputError, check_input_file, input_schema
from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, check_output, read_parquet_rows
from lmforge.train.pydoc_chats import DOCUMENT_KINDS, document_examples, module_name

ROLES = ("system", "user", "assistant")


@dataclass
class ChatFileStats:
    """What a chat JSONL file was built from and holds."""

    source: str
    out_path: str
    examples: int = 0
    mean_turns: float = 0.0  # messages per conversation
    mean_chars: float = 0.0  # characters of content per conversation
    mean_assistant_chars: float = 0.0
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows that gave no example
    by_task: dict[str, int] = field(default_factory=dict)  # task kind -> examples

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)


def validate_conversation(messages: Any) -> None:
    """Raise ValueError unless ``messages`` is a non-empty list of {role, content} turns that
    contains a user turn and ends with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be {{'role', 'content'}}, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: role {m['role']!r} is not one of {ROLES}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise ValueError(f"message {i}: content must be a non-empty string")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("no user turn")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last turn must be the assistant's")


class NoConversations(InputError):
    """The source gave no conversation at all: nothing is written (an earlier output stays)."""


def _write_conversations(out_path: str | os.PathLike, examples: Iterable[tuple[str, list[dict]]],
                         stats: ChatFileStats, require_examples: bool = False) -> ChatFileStats:
    """Validate and write (task, messages) pairs as JSONL, atomically; fill in the stats. With
    ``require_examples``, a source that gives none raises :class:`NoConversations` and leaves
    ``out_path`` as it was."""
    n = turns = chars = assistant_chars = 0
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for task, messages in examples:
            validate_conversation(messages)
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            n += 1
            turns += len(messages)
            chars += sum(len(m["content"]) for m in messages)
            assistant_chars += sum(len(m["content"]) for m in messages if m["role"] == "assistant")
            stats.by_task[task] = stats.by_task.get(task, 0) + 1
        if require_examples and n == 0:
            raise NoConversations(f"{stats.source}: gave no conversations "
                                  f"(skipped: {stats.skipped or 'none'})")
    stats.examples = n
    stats.mean_turns = round(turns / max(n, 1), 3)
    stats.mean_chars = round(chars / max(n, 1), 1)
    stats.mean_assistant_chars = round(assistant_chars / max(n, 1), 1)
    return stats


def read_conversations(path: str | os.PathLike,
                       validate: Callable[[Any], None] = validate_conversation) -> Iterator[list[dict]]:
    """The ``messages`` of each row of a chat JSONL file, each checked by ``validate`` (which
    raises ValueError)."""
    with open(check_input_file(path, "chat JSONL file", allow_empty=True), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                validate(messages)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}:{lineno}: not a chat row: {e}") from None
            yield messages


def sft_data_from_jsonl(jsonl_path: str | os.PathLike, out_path: str | os.PathLike,
                        limit: int | None = None, require_examples: bool = False) -> ChatFileStats:
    """A chat JSONL file -> chat JSONL: the first ``limit`` rows, each validated."""
    check_output(out_path)
    check_input_file(jsonl_path, "chat JSONL file", allow_empty=True)
    stats = ChatFileStats(source=f"jsonl:{jsonl_path}", out_path=str(out_path))

    def examples() -> Iterator[tuple[str, list[dict]]]:
        for i, messages in enumerate(read_conversations(jsonl_path)):
            if limit is not None and i >= limit:
                return
            stats.rows_read += 1
            yield "jsonl", messages

    return _write_conversations(out_path, examples(), stats, require_examples)


# --- benchmark question/answer (lmforge.benchmarks: GSM8K and any benchmark with a chat form) -----

def qa_to_messages(question: str, answer: str) -> list[dict]:
    """One GSM8K-format row as a user/assistant conversation (see the module doc); ValueError
    when the answer has no ``#### N`` line."""
    pair = gsm8k_chat({"question": question, "answer": answer})
    if pair is None:
        raise ValueError("answer has no '#### N' line")
    return [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]


def sft_data_from_benchmark(name: str, out_path: str | os.PathLike, split: str = "train",
                            limit: int | None = None, require_examples: bool = False,
                            benchmarks_dir: str | os.PathLike | None = None,
                            path: str | os.PathLike | None = None) -> ChatFileStats:
    """A benchmark split's (question, answer) pairs -> chat JSONL, through the benchmark's reader
    (``chat_pairs``); items without an answer are counted as skipped. ``path`` reads a file in
    the benchmark's format instead of the mirror's split."""
    check_output(out_path)
    bench = get_benchmark(name)
    if path is not None:
        check_input_file(path, f"{name}-format file", allow_empty=True)
    stats = ChatFileStats(source=f"qa:{path}" if path else f"benchmark:{name}/{split}",
                         out_path=str(out_path))
    pairs = bench.chat_pairs(split, benchmarks_dir=benchmarks_dir, path=path)

    def examples() -> Iterator[tuple[str, list[dict]]]:
        n = 0
        for pair in pairs:
            if limit is not None and n >= limit:
                return
            stats.rows_read += 1
            if pair is None:
                stats.skipped["no_final_answer"] = stats.skipped.get("no_final_answer", 0) + 1
                continue
            n += 1
            yield name, [{"role": "user", "content": pair[0]},
                         {"role": "assistant", "content": pair[1]}]

    return _write_conversations(out_path, examples(), stats, require_examples)


def sft_data_from_qa(jsonl_path: str | os.PathLike, out_path: str | os.PathLike,
                     limit: int | None = None, require_examples: bool = False) -> ChatFileStats:
    """GSM8K-format JSONL (``question``, ``answer`` with a ``#### N`` line) -> chat JSONL."""
    return sft_data_from_benchmark("gsm8k", out_path, "train", limit, require_examples,
                                   path=jsonl_path)


# --- instruction data derived from the crawled pydoc pages (parsing: ``pydoc_chats``) ---------

def sft_data_from_documents(docs_path: str | os.PathLike, out_path: str | os.PathLike,
                            max_examples: int = 2000, seed: int = 0,
                            max_per_page: int = 3,
                            kinds: Iterable[str] | None = None,
                            require_examples: bool = False) -> ChatFileStats:
    """Instruction data derived from crawled pydoc pages (see the module doc) -> chat JSONL."""
    if max_examples < 1:
        raise ValueError("max_examples must be >= 1")
    wanted = set(DOCUMENT_KINDS if kinds is None else kinds)
    unknown = wanted - set(DOCUMENT_KINDS)
    if unknown or not wanted:
        raise ValueError(f"unknown example kinds {sorted(unknown)}; known: {', '.join(DOCUMENT_KINDS)}"
                         if unknown else "kinds must name at least one example kind")
    check_output(out_path)
    input_schema(docs_path, required=("text",))
    stats = ChatFileStats(source=f"documents:{docs_path}", out_path=str(out_path))
    candidates: list[tuple[str, list[dict]]] = []
    for doc in read_parquet_rows(docs_path, columns=None):
        stats.rows_read += 1
        # One generator per page, seeded by the page, so adding a page changes no other example.
        rng = random.Random(f"{seed}:{doc.get('id') or doc.get('url')}")
        examples = [e for e in document_examples(doc, rng, max_per_page) if e[0] in wanted]
        if not examples:
            reason = "no_module_name" if module_name(doc) is None else "nothing_derivable"
            stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
        candidates.extend(examples)
    random.Random(seed).shuffle(candidates)
    if len(candidates) > max_examples:
        stats.skipped["over_max_examples"] = len(candidates) - max_examples
    return _write_conversations(out_path, candidates[:max_examples], stats, require_examples)


# --- any data set on the Hugging Face Hub (online) -----------------------------------------------

def _row_to_messages(row: dict, messages_field: str) -> list[dict]:
    if messages_field in row:
        return [{"role": m["role"], "content": m["content"]} for m in row[messages_field]]
    if "question" in row and "answer" in row:
        if "####" in str(row["answer"]):
            return qa_to_messages(row["question"], row["answer"])
        return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    if "instruction" in row and "output" in row:
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    if "prompt" in row and "completion" in row:
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    raise ValueError(f"unknown row format: columns {sorted(row)}; expected '{messages_field}', "
                     "question/answer, instruction/output or prompt/completion")


def sft_data_from_hub(name: str, out_path: str | os.PathLike, split: str = "train",
                      config: str | None = None, limit: int | None = None,
                      messages_field: str = "messages", require_examples: bool = False
                      ) -> ChatFileStats:
    """A Hugging Face Hub data set -> chat JSONL. Needs network (or the data set in the HF cache)."""
    check_output(out_path)
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, gated, ...: say so in one line
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise RuntimeError(f"could not load {name!r} split {split!r} from the Hugging Face Hub{offline}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Offline, use "
                           "--from-docs or --from-qa instead.") from e
    stats = ChatFileStats(source=f"hub:{name}:{split}", out_path=str(out_path))

    def examples() -> Iterator[tuple[str, list[dict]]]:
        for i, row in enumerate(ds):
            if limit is not None and i >= limit:
                return
            stats.rows_read += 1
            messages = _row_to_messages(row, messages_field)
            try:
                validate_conversation(messages)
            except ValueError:
                stats.skipped["invalid_conversation"] = stats.skipped.get("invalid_conversation", 0) + 1
                continue
            yield "hub", messages

    return _write_conversations(out_path, examples(), stats, require_examples)


# --- CLI -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge sft-data", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-docs", metavar="DOCS", help="pydoc documents Parquet (id, url, title, text)")
    src.add_argument("--from-qa", metavar="QA_JSONL", help="GSM8K-format JSONL (question, answer)")
    src.add_argument("--from-hub", metavar="NAME", help="Hugging Face Hub data set name (needs network)")
    p.add_argument("--out", required=True, help="chat JSONL to write")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many examples (--from-docs default: 2000; others: all)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed for --from-docs (default 0)")
    p.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k], default=None,
                   help=f"--from-docs: comma-separated example kinds to keep (default all: "
                   f"{','.join(DOCUMENT_KINDS)})")
    p.add_argument("--split", default="train", help="data set split for --from-hub (default train)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print("lmforge sft-data: error: --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        # A file of no conversations trains nothing: an error, and an earlier output stays.
        if args.from_docs:
            stats = sft_data_from_documents(args.from_docs, args.out, args.limit or 2000, args.seed,
                                            kinds=args.kinds, require_examples=True)
        elif args.from_qa:
            stats = sft_data_from_qa(args.from_qa, args.out, args.limit, require_examples=True)
        else:
            stats = sft_data_from_hub(args.from_hub, args.out, args.split, limit=args.limit,
                                      require_examples=True)
    except (LmforgeError, ValueError, OSError, RuntimeError) as e:
        print(f"lmforge sft-data: error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2
    print(f"sft-data: {stats.examples} conversations, {stats.mean_turns} turns and "
          f"{stats.mean_chars:.0f} characters on average -> {args.out}", file=sys.stderr)
    print(json.dumps(stats.to_metadata(), indent=2))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('sft-data', main, sys.argv[1:]))
