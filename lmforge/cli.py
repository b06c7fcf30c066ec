"""The ``lmforge`` command: one sub-command per engine stage.

Each sub-command is the ``main(argv)`` of the module that implements the stage, so
``lmforge dedup IN OUT`` and ``python -m lmforge.curate.dedup IN OUT`` are the same program.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "crawl": ("lmforge.crawl.crawler", "crawl a site politely into WARC files"),
    "serve-docs": ("lmforge.crawl.local_site", "serve this Python's documentation on loopback"),
    "extract": ("lmforge.curate.extract", "WARC files -> main text as Parquet documents"),
    "filter": ("lmforge.curate.filter", "language ID and quality filters over Parquet documents"),
    "dedup": ("lmforge.curate.dedup", "exact and MinHash LSH near-duplicate removal"),
    "quality": ("lmforge.curate.quality",
                "train a fastText quality classifier (DCLM-style) or score documents with it"),
    "decontaminate": ("lmforge.curate.decontaminate",
                      "remove documents sharing 13-grams with MMLU, GSM8K or HumanEval"),
    "train-tokenizer": ("lmforge.tokenize.bpe", "train a byte-level BPE tokenizer with a chat template"),
    "tokenize": ("lmforge.tokenize.shards", "Parquet documents -> memory-mapped token shards"),
    "pretrain": ("lmforge.train.pretrain", "pretrain a Llama-style model (DeepSpeed ZeRO)"),
    "sft-data": ("lmforge.train.sft_data", "build chat-format SFT data from documents or Q/A sets"),
    "sft": ("lmforge.train.sft", "supervised fine-tuning with prompt-masked loss"),
    "lora": ("lmforge.train.lora", "train a LoRA adapter with PEFT"),
    "eval": ("lmforge.evaluate.harness", "evaluate a model with lm-evaluation-harness"),
    "humaneval-exec": ("lmforge.evaluate.sandbox", "run HumanEval completions in a sandbox, print pass@k"),
    "report": ("lmforge.report.report", "write the markdown report of a pipeline run"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lmforge COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`lmforge COMMAND --help` describes each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lmforge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
