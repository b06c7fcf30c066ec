"""The ``lmforge`` command: one sub-command per engine stage.

Each sub-command is the ``main(argv)`` of the module that implements the stage, so
``lmforge dedup IN OUT`` and ``python -m lmforge.curate.dedup IN OUT`` are the same program. Both
go through :func:`run`: a bad input is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Callable

# sub-command -> (module with main(argv), one-line help). The curation stages' commands come from
# the stage list (lmforge.curate.stages), in chain order after `extract`.
_BEFORE_CURATION: dict[str, tuple[str, str]] = {
    "crawl": ("lmforge.crawl.crawler", "crawl a site politely into WARC files"),
    "serve-docs": ("lmforge.crawl.local_site", "serve this Python's documentation on loopback"),
    "extract": ("lmforge.curate.extract", "WARC files -> main text as Parquet documents"),
}
_AFTER_CURATION: dict[str, tuple[str, str]] = {
    "train-tokenizer": ("lmforge.tokenize.bpe", "train a byte-level BPE tokenizer with a chat template"),
    "tokenize": ("lmforge.tokenize.shards", "Parquet documents -> memory-mapped token shards"),
    "pretrain": ("lmforge.train.pretrain", "pretrain a Llama-style model (DeepSpeed ZeRO)"),
    "sft-data": ("lmforge.train.sft_data", "build chat-format SFT data from documents or Q/A sets"),
    "sft": ("lmforge.train.sft", "supervised fine-tuning with prompt-masked loss"),
    "lora": ("lmforge.train.lora", "train a LoRA adapter with PEFT"),
    "preferences": ("lmforge.align.preferences", "build preference pairs (JSONL, hub, or on-policy samples)"),
    "dpo": ("lmforge.align.dpo", "direct preference optimisation (full weights or LoRA)"),
    "reward-model": ("lmforge.align.reward_model", "train a Bradley-Terry reward model on preference pairs"),
    "grpo": ("lmforge.align.grpo", "GRPO: reinforcement learning with verifiable rewards"),
    "arena": ("lmforge.align.arena", "pit models against each other; Bradley-Terry ratings"),
    "scaling-sweep": ("lmforge.scaling.sweep", "train an IsoFLOP sweep of model sizes and token budgets"),
    "scaling-fit": ("lmforge.scaling.fit", "fit Chinchilla scaling laws to runs; compute-optimal size"),
    "eval": ("lmforge.evaluate.harness", "evaluate a model with lm-evaluation-harness"),
    "humaneval-exec": ("lmforge.evaluate.sandbox", "run HumanEval completions in a sandbox, print pass@k"),
    "report": ("lmforge.report.report", "write the markdown report of a pipeline run"),
}


def commands() -> dict[str, tuple[str, str]]:
    """Every sub-command, in pipeline order."""
    from lmforge.curate.stages import CURATION_STAGES

    stages = {s.command: (s.module, s.summary) for s in CURATION_STAGES}
    return {**_BEFORE_CURATION, **stages, **_AFTER_CURATION}


def _usage() -> str:
    table = commands()
    width = max(map(len, table))
    lines = ["usage: lmforge COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in table.items()]
    lines += ["", "`lmforge COMMAND --help` describes each command."]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return " ".join(lines) if len(lines) <= 3 else f"{lines[0]} ... {lines[-1]}"


def _terminate(signum, frame):  # noqa: ARG001
    # SIGTERM (a cancelled Dagster run, `kill`) unwinds like Ctrl-C, so every temporary is removed.
    raise SystemExit(128 + signum)


def run(name: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run one command's ``main(argv)`` the way users see it: a problem is one line on stderr
    (``lmforge NAME: error: ...``) and exit status 2, never a traceback (``LMFORGE_DEBUG=1`` shows
    it). argparse's own usage errors keep their form and status 2."""
    from lmforge.errors import LmforgeError

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    debug = os.environ.get("LMFORGE_DEBUG", "") not in ("", "0")
    try:
        return int(fn(argv) or 0)
    except KeyboardInterrupt:
        print(f"lmforge {name}: interrupted", file=sys.stderr)
        return 130
    except LmforgeError as e:
        if debug:
            raise
        return _error(f"lmforge {name}: error: {_one_line(e)}")
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return _error(f"lmforge {name}: error: {e.strerror or _one_line(e)}{where}")
    except Exception as e:  # noqa: BLE001 - the promise is one line, whatever went wrong
        if debug:
            raise
        return _error(f"lmforge {name}: error: {type(e).__name__}: {_one_line(e)} "
                      "(LMFORGE_DEBUG=1 shows the traceback)")


def _error(line: str) -> int:
    from lmforge.train.launch import report_error

    print(line, file=sys.stderr)
    report_error(line)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    table = commands()
    if name not in table:
        print(f"lmforge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return run(name, module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
