"""Supervised fine-tuning on chat data, with the loss on assistant tokens only.

    lmforge sft --base MODEL_DIR --data DATA.jsonl --out RUN_DIR

Each line of DATA.jsonl is ``{"messages": [{"role": ..., "content": ...}, ...]}``. A conversation
is rendered with the tokenizer's own chat template, and only the assistant replies, each with its
end-of-turn token (``<|im_end|>`` in ChatML), are trained: the model learns to answer and to stop,
not to imitate users or the template's scaffolding. Which characters are the replies is found by
rendering the conversation prefix by prefix, so any prefix-stable template works, not only ChatML.

The loss of a step is the mean NLL over all assistant tokens of the step (see ``loop.py``).
With ``packing`` (the default) the conversations of a micro-batch share rows of ``max_len``
positions without seeing each other (``packing.py``) instead of each being padded to the longest:
the same conversations per step and the same loss, with fewer padded positions to compute.
The run directory gets ``model/`` (HF + tokenizer files, with the ``train_config.json`` and
``run_fingerprint.json`` it was trained from, committed together by one rename), ``summary.json``,
``metrics.jsonl``, ``loss_curve.png``, ``checkpoints/`` (resume) and ``tensorboard/``. A run that
starts again from scratch (new data or config) leaves the previous ``model/`` in place until its
own is complete. The base model, the data and the destination are checked before any work.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError
from lmforge.io import check_output, claim_output_dir
# The config is plain data (the Dagster graph imports it to declare the asset); torch and
# transformers are imported by the functions that tokenize and train.
from lmforge.train.config import SFTConfig
from lmforge.train.sft_data import read_conversations

if TYPE_CHECKING:
    import numpy as np
    import torch

IGNORE = -100
ROLES = ("system", "user", "assistant", "tool")


# ---------------------------------------------------------------------------------------------
# one conversation -> input_ids + labels


def end_of_turn_token(tokenizer) -> str:
    """The token that closes a turn: ChatML's ``<|im_end|>`` when the vocabulary has it, else EOS."""
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        return "<|im_end|>"
    if tokenizer.eos_token is None:
        raise ValueError("tokenizer has neither <|im_end|> nor an EOS token to end assistant turns")
    return tokenizer.eos_token


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ValueError(f"bad message {str(m)[:80]!r}: need role in {ROLES} and string content")


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant replies.

    A reply's span starts where the template's generation prompt (``<|im_start|>assistant\\n``)
    ends and runs through the end-of-turn token; anything the template appends after it (a
    newline) is scaffolding.
    """
    _check_messages(messages)
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template (tokenizer_config.json: chat_template)")
    eot = end_of_turn_token(tokenizer)
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[:i + 1])
        if not (through.startswith(prompt) and full.startswith(through)):
            raise ValueError("the chat template is not prefix-stable (rendering a conversation "
                             "changes the text of earlier turns); cannot locate assistant replies")
        end = through.rfind(eot, len(prompt))
        spans.append((len(prompt), end + len(eot) if end >= 0 else len(through)))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict], max_len: int | None = None) -> dict[str, list[int]]:
    """``input_ids`` of the rendered conversation and ``labels`` that are the same ids on the
    assistant replies (with their end-of-turn token) and -100 everywhere else. Truncated to
    ``max_len`` tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tok, (start, end) in zip(ids, offsets):
        # A token belongs to a reply when it starts inside the reply's span; byte-level BPE never
        # merges across the template's special tokens, so replies start and end on token edges.
        trained = any(s <= start < e for s, e in spans) and end > start
        labels.append(tok if trained else IGNORE)
    if max_len is not None and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": list(ids), "labels": labels}


# ---------------------------------------------------------------------------------------------
# a data set of conversations


@dataclass
class TokenizedChatStats:
    """What became of a chat file's conversations once tokenized for training."""

    conversations: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_no_target: int = 0   # truncation left no assistant token (or none was there)
    tokens: int = 0
    trained_tokens: int = 0

    def to_metadata(self) -> dict:
        return asdict(self)


def read_chat_jsonl(path: str | Path) -> list[list[dict]]:
    """Training conversations: any roles of ``ROLES`` in any order (multi-turn, tool turns),
    looser than what ``sft_data`` writes."""
    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no chat data at {path}")
    if not path.is_file():
        raise LmforgeError(f"{path} is not a file: give a chat JSONL file "
                           '(one {"messages": [...]} object per line)')
    try:
        conversations = list(read_conversations(path, validate=_check_messages))
    except UnicodeDecodeError:
        raise LmforgeError(f"{path} is not text: give a chat JSONL file") from None
    except ValueError as e:
        raise LmforgeError(f"{' '.join(str(e).split())[:300]}") from None
    if not conversations:
        raise LmforgeError(f"{path}: no conversations (an empty file?)")
    return conversations


def build_examples(tokenizer, conversations: list[list[dict]], max_len: int | None) -> tuple[list[dict], TokenizedChatStats]:
    stats = TokenizedChatStats(conversations=len(conversations))
    examples = []
    for messages in conversations:
        ex = tokenize_conversation(tokenizer, messages)
        if max_len is not None and len(ex["input_ids"]) > max_len:
            stats.truncated += 1
            ex = {k: v[:max_len] for k, v in ex.items()}
        # labels[0] is never a target (nothing predicts the first token), hence [1:].
        n_trained = sum(1 for x in ex["labels"][1:] if x != IGNORE)
        if n_trained == 0:
            stats.dropped_no_target += 1
            continue
        examples.append(ex)
        stats.kept += 1
        stats.tokens += len(ex["input_ids"])
        stats.trained_tokens += n_trained
    if not examples:
        raise ValueError("no conversation has an assistant token to train on (after truncation)")
    return examples, stats


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded micro-batch with targets shifted by one (the loop's convention)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], "targets": labels[:, 1:]}


class ExampleOrder:
    """Which example each slot of each step reads: a fresh permutation per epoch, seeded by
    (seed, epoch), sliced by (step, micro, rank) the same way as pretraining windows."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def _perm(self, epoch: int) -> np.ndarray:
        import numpy as np

        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._cache[epoch]

    def indices(self, step: int, micro: int, micro_batch: int, grad_accum: int, rank: int, world: int) -> list[int]:
        first = step * micro_batch * grad_accum * world + (micro * world + rank) * micro_batch
        return [int(self._perm(i // self.n)[i % self.n]) for i in range(first, first + micro_batch)]


def split_validation(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    import numpy as np

    n_val = int(len(examples) * fraction)
    if n_val == 0:
        return examples, []
    perm = np.random.default_rng([seed, 7]).permutation(len(examples))
    val = set(perm[:n_val].tolist())
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in sorted(val)]


# ---------------------------------------------------------------------------------------------
# the run


class RunStats(dict):
    """A run's summary (also in ``summary.json``); ``.model`` is the trained module."""

    model = None

    def to_metadata(self) -> dict:
        return dict(self)


def prepare(cfg: SFTConfig, tokenizer, world_size: int):
    """Tokenized train/val examples, the resolved step count, and the batch/eval functions."""
    from lmforge.train.packing import pack_batch

    conversations = read_chat_jsonl(cfg.data)
    examples, data_stats = build_examples(tokenizer, conversations, cfg.max_len)
    train_ex, val_ex = split_validation(examples, cfg.val_fraction, cfg.seed)
    per_step = cfg.micro_batch * cfg.grad_accum * world_size
    max_steps = cfg.max_steps or max(1, int(round(cfg.epochs * len(train_ex) / per_step)))
    order = ExampleOrder(len(train_ex), cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def make_batch(chunk: list[dict]):
        # Packing changes only the layout of a micro-batch's conversations, not which ones.
        return pack_batch(chunk, cfg.max_len, pad_id) if cfg.packing else collate(chunk, pad_id)

    def batch_fn(step, micro, rank, world):
        idx = order.indices(step, micro, cfg.micro_batch, cfg.grad_accum, rank, world)
        return make_batch([train_ex[i] for i in idx])

    def eval_fn(rank, world):
        n_batches = min(cfg.eval_batches, -(-len(val_ex) // cfg.micro_batch))
        n_batches = -(-n_batches // world) * world  # every rank runs the same number of forwards
        for b in range(rank, n_batches, world):
            chunk = val_ex[b * cfg.micro_batch:(b + 1) * cfg.micro_batch]
            if not chunk:  # a rank past the end re-reads the first batch and adds nothing
                batch = make_batch(val_ex[:1])
                batch["targets"].fill_(IGNORE)
                yield batch
            else:
                yield make_batch(chunk)

    return data_stats, train_ex, val_ex, max_steps, batch_fn, (eval_fn if val_ex else None)


# The weight files ``from_pretrained`` reads (safetensors, or PyTorch's, which transformers loads
# with weights_only=True), one file or sharded with an index.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_base_model(base: str | Path) -> None:
    base = Path(base)
    if not base.is_dir():
        raise LmforgeError(f"no model directory at {base}")
    if not (base / "config.json").is_file():
        raise LmforgeError(f"no Hugging Face model (config.json) in {base}")
    if not any((base / name).is_file() for name in WEIGHT_FILES):
        raise LmforgeError(f"{base} has a config.json but no weights ({', '.join(WEIGHT_FILES[::2])})")


def check_inputs(cfg) -> None:
    """The base model, the data and the destination, before any work: each problem is one line,
    and the run directory is not made or changed."""
    for name in ("base", "data", "out_dir"):
        if not getattr(cfg, name):
            raise LmforgeError(f"{name} is required")
    check_base_model(cfg.base)
    read_chat_jsonl(cfg.data)
    check_output(cfg.out_dir, "dir")


def sft(cfg: SFTConfig) -> RunStats:
    """Fine-tune ``cfg.base`` on ``cfg.data``; every rank calls this, rank 0 writes the outputs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before the tokenizer's first use
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.train.loop import init_distributed, report_run, save_hf_model, train
    from lmforge.train.model import flops_per_token
    from lmforge.train.telemetry import Telemetry

    check_inputs(cfg)
    dist = init_distributed(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, local_files_only=True)
    data_stats, train_ex, val_ex, max_steps, batch_fn, eval_fn = prepare(cfg, tokenizer, dist.world_size)
    run_cfg = cfg.model_copy(update={"max_steps": max_steps})
    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.float32, local_files_only=True)
    out = claim_output_dir(cfg.out_dir)

    with Telemetry(dist.rank, prefix="sft") as tel:
        tel.log(f"{data_stats.kept} conversations ({data_stats.dropped_no_target} dropped, "
                f"{data_stats.truncated} truncated), {len(val_ex)} held out; {max_steps} steps"
                + ("; packed micro-batches" if cfg.packing else ""))
        result = train(model, run_cfg, out, batch_fn=batch_fn, eval_fn=eval_fn, dist=dist, telemetry=tel,
                       flops_per_token=flops_per_token(model.config, cfg.max_len),
                       config_record=run_cfg.model_dump(), inputs=[cfg.base, cfg.data])
        save_hf_model(result.engine, out / "model", dist, tokenizer_dir=cfg.base, records=result.records)
        stats = RunStats(**result.to_metadata(), **{f"data_{k}": v for k, v in data_stats.to_metadata().items()},
                         val_conversations=len(val_ex), world_size=dist.world_size, zero_stage=cfg.zero_stage,
                         model_dir=str(out / "model"))
        stats["val_loss"] = stats.pop("final_val_loss")
        report_run(out, stats, dist, tel, title="SFT")
    stats.model = result.engine.module
    return stats


def main(argv: list[str] | None = None) -> int:
    from lmforge.train.launch import run_cli, training_parser

    p = training_parser("lmforge sft", __doc__, SFTConfig, {"--out": "out_dir"})
    return run_cli("lmforge.train.sft", SFTConfig, sft, p, argv)


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('sft', main, sys.argv[1:]))
