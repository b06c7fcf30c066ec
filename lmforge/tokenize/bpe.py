"""Train a byte-level BPE tokenizer on the curated documents, with a ChatML chat template.

    lmforge train-tokenizer documents.parquet tokenizer/ --vocab-size 4096

The tokenizer is GPT-2 style: text is split by the GPT-2 regex, every byte maps to one of 256
printable symbols (so any UTF-8 string round-trips exactly, no unknown token), and BPE merges are
learned on top. It is trained with Hugging Face ``tokenizers`` from an iterator that streams the
Parquet ``text`` column in batches, so the corpus never has to fit in memory as one string.

It trains on a sample, not the corpus: at most ``sample_bytes`` of text, shared evenly between
the corpus's days (a day with less leaves its share to the later ones), each day's documents in
their order. The same corpus gives the same sample, and training time stays the same however
many days there are; the pipeline trains it once per deployment and then keeps it frozen.

Special tokens (ids 0..3, in this order):

    <|endoftext|>   bos and eos: separates documents in the pretraining token stream
    <|pad|>         padding for batched SFT / evaluation
    <|im_start|>    opens a chat turn:  <|im_start|>user\\n ... <|im_end|>\\n
    <|im_end|>      ends a chat turn; a chat model stops generating when it emits it

No bos is prepended by the tokenizer (as GPT-2): the pretraining stream is
``doc <|endoftext|> doc <|endoftext|> ...``, so every document but the first already follows one.

The directory is saved with ``transformers.PreTrainedTokenizerFast.save_pretrained``:
``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``, and loads with
``AutoTokenizer.from_pretrained(out_dir)`` with bos/eos/pad and the chat template set. The config
is written in a spelling transformers 4.x loads too (see ``_make_config_portable``).

The held-out documents (``heldout_ids``: a hash of the document id, per day) are left out of
training and used to measure compression (bytes per token, tokens per word, on at most 10 MB of
them). ``tokenize.shards`` uses the same rule for its validation split, so with the default
fraction and seed the tokenizer has never seen the documents that bits-per-byte is measured on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # numpy and pyarrow load where the work happens
    import pyarrow.parquet as pq

from pydantic import BaseModel, Field

from lmforge.config import add_config_arguments, config_from_args
from lmforge.curate.text import InputError, input_schema
from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, check_output, parquet_files
from lmforge.tokenize.corpus import corpus_days

# The special tokens, importable by the training and evaluation modules.
BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
EOT_TOKEN = IM_END_TOKEN  # end of a chat turn: the stop token of a chat model
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN]  # ids 0, 1, 2, 3

# ChatML. The assistant's content and its closing <|im_end|> sit inside {% generation %}, so
# ``apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)`` marks exactly
# the tokens an SFT loss should train on (the model must learn to emit <|im_end|> to stop).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TokenizerConfig(BaseModel):
    """How to train the tokenizer. Defaults are the ``tiny`` preset."""

    vocab_size: int = Field(4096, ge=len(SPECIAL_TOKENS) + 256,
                            description="total vocabulary: 256 bytes + merges + special tokens")
    min_frequency: int = Field(2, ge=1, description="a pair must occur this often to be merged")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0,
                                    description="documents kept out of training to measure compression")
    seed: int = Field(0, description="salt of the document-id hash that picks held-out documents")
    batch_rows: int = Field(1000, ge=1, description="documents per batch read from Parquet")
    sample_bytes: int = Field(100_000_000, ge=1,
                              description="UTF-8 bytes of text to train on: a deterministic "
                              "sample shared evenly between the corpus's days (each day's "
                              "documents in order), so training does not grow with the corpus")
    model_max_length: int = Field(2048, ge=1, description="written to tokenizer_config.json")


@dataclass
class TokenizerStats:
    vocab_size: int
    train_documents: int
    train_chars: int
    heldout_documents: int
    heldout_bytes: int
    heldout_tokens: int
    bytes_per_token: float  # UTF-8 bytes of held-out text per token: higher compresses better
    tokens_per_word: float  # tokens per whitespace-separated word of held-out text
    training_seconds: float
    special_tokens: dict[str, int]
    out_dir: str

    def to_metadata(self) -> dict:
        return asdict(self)


# --- the held-out split, shared with tokenize.shards ----------------------------------------------

def _hash_unit(doc_id: str, seed: int) -> float:
    """A deterministic number in [0, 1) for a document id: the same on every machine and run."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def heldout_ids(docs_path: str | os.PathLike, fraction: float, seed: int = 0) -> set[str]:
    """The ids of the held-out documents: those whose id hashes below ``fraction``.

    Reads only the ``id`` column. With two documents or more, at least one is held out and at
    least one is not, so a tiny corpus still has a validation split.
    """
    import pyarrow.parquet as pq

    ids: list[str] = []
    for file in parquet_files(docs_path):
        pf = pq.ParquetFile(file)
        if "id" not in pf.schema_arrow.names:
            raise ValueError(f"{file}: no 'id' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=["id"], batch_size=65536):
            ids.extend(str(x) for x in batch.column(0).to_pylist())
    unique = sorted(set(ids))
    if fraction <= 0 or len(unique) < 2:
        return set()
    scored = sorted((_hash_unit(i, seed), i) for i in unique)
    held = {i for h, i in scored if h < fraction}
    if not held:
        held = {scored[0][1]}
    if len(held) == len(unique):
        held.discard(scored[-1][1])
    return held


def iter_texts(docs_path: str | os.PathLike, batch_rows: int = 1000,
               exclude: set[str] | None = None, only: set[str] | None = None) -> Iterator[list[str]]:
    """Batches of document texts from Parquet, streamed; empty or missing texts are skipped."""
    import pyarrow.parquet as pq

    for file in parquet_files(docs_path):
        pf = pq.ParquetFile(file)
        if "text" not in pf.schema_arrow.names:
            raise ValueError(f"{file}: no 'text' column (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=["id", "text"], batch_size=batch_rows):
            ids = batch.column(0).to_pylist()
            texts = batch.column(1).to_pylist()
            out = [t for i, t in zip(ids, texts)
                   if t and (exclude is None or str(i) not in exclude) and (only is None or str(i) in only)]
            if out:
                yield out


def sample_texts(docs_path: str | os.PathLike, sample_bytes: int, fraction: float, seed: int,
                 batch_rows: int = 1000) -> Iterator[list[str]]:
    """The training sample: batches of non-held-out texts, at most ``sample_bytes`` of UTF-8 in
    all, shared evenly between the days of ``docs_path`` (unused shares pass to later days)."""
    days = corpus_days(docs_path)
    left = sample_bytes
    for i, (_, path) in enumerate(days):
        share, used = left // (len(days) - i), 0
        held = heldout_ids(path, fraction, seed)
        for texts in iter_texts(path, batch_rows, exclude=held):
            batch = []
            for text in texts:
                if used >= share:
                    break
                batch.append(text)
                used += len(text.encode("utf-8"))
            if batch:
                yield batch
            if used >= share:
                break
        left -= used


# --- training ------------------------------------------------------------------------------------

def build_tokenizer_object():
    """An untrained GPT-2-style byte-level BPE ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Offsets must point at the original characters (not include the byte-level space marker):
    # the assistant-token mask of apply_chat_template is computed from them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _wrap_fast(tok, cfg: TokenizerConfig):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=cfg.model_max_length,
        clean_up_tokenization_spaces=False,  # decode(encode(x)) == x, exactly
    )


def train_tokenizer(docs_path: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg: TokenizerConfig | None = None) -> TokenizerStats:
    """Train byte-level BPE on ``docs_path`` (Parquet with ``id``, ``text``) into ``out_dir``."""
    from tokenizers import pre_tokenizers, trainers

    cfg = cfg or TokenizerConfig()
    # Refused before the training: an output over a directory lmforge did not make (its files
    # would be lost), a read-only place, an input that is not a document table.
    check_output(out_dir, "dir")
    input_schema(docs_path, required=("id", "text"))
    counts = {"docs": 0, "chars": 0}

    def training_text() -> Iterator[list[str]]:
        for texts in sample_texts(docs_path, cfg.sample_bytes, cfg.heldout_fraction, cfg.seed,
                                  cfg.batch_rows):
            counts["docs"] += len(texts)
            counts["chars"] += sum(map(len, texts))
            yield texts

    tok = build_tokenizer_object()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols are in the vocabulary even if the corpus lacks some, so no input
        # can ever fall outside it.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t0 = time.perf_counter()
    tok.train_from_iterator(training_text(), trainer=trainer)
    seconds = time.perf_counter() - t0
    if counts["docs"] == 0:
        raise InputError(f"{docs_path}: no non-empty training text")
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, f"special token {s} has id {tok.token_to_id(s)}, expected {i}"

    # Compression on (at most 10 MB of) the held-out documents, day by day; on the training ones
    # when no day holds any out (a corpus of one document).
    n_bytes = n_tokens = n_words = n_docs = 0
    any_held = False
    for held_only in (True, False):
        for _, path in corpus_days(docs_path):
            held = heldout_ids(path, cfg.heldout_fraction, cfg.seed) if held_only else None
            if held_only and not held:
                continue
            any_held = any_held or held_only
            for texts in iter_texts(path, cfg.batch_rows, only=held):
                for text, enc in zip(texts, tok.encode_batch_fast(texts, add_special_tokens=False)):
                    n_bytes += len(text.encode("utf-8"))
                    n_words += len(text.split())
                    n_tokens += len(enc.ids)
                n_docs += len(texts)
                if n_bytes >= 10_000_000:
                    break
            if n_bytes >= 10_000_000:
                break
        if n_docs:
            break

    fast = _wrap_fast(tok, cfg)
    with atomic_path(out_dir, "dir") as tmp:
        fast.save_pretrained(str(tmp))
        _make_config_portable(tmp)
        (tmp / "training_stats.json").write_text(json.dumps({
            "train_documents": counts["docs"], "train_chars": counts["chars"],
            "heldout_documents": n_docs if any_held else 0, "config": cfg.model_dump(),
        }, indent=2) + "\n")

    stats = TokenizerStats(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        train_documents=counts["docs"],
        train_chars=counts["chars"],
        heldout_documents=n_docs if any_held else 0,
        heldout_bytes=n_bytes,
        heldout_tokens=n_tokens,
        bytes_per_token=round(n_bytes / max(n_tokens, 1), 4),
        tokens_per_word=round(n_tokens / max(n_words, 1), 4),
        training_seconds=round(seconds, 3),
        special_tokens={s: tok.token_to_id(s) for s in SPECIAL_TOKENS},
        out_dir=str(Path(out_dir)),
    )
    return stats


def _make_config_portable(tok_dir: Path) -> None:
    """Make tokenizer_config.json loadable by transformers 4.x as well as 5.x.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (a class 4.x lacks), a list under
    ``extra_special_tokens`` (4.x expects a dict there) and the template only in
    ``chat_template.jinja`` (older 4.x read it from the config). 5.x loads the portable spelling
    identically; the test suite checks that.
    """
    path = tok_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    config.setdefault("chat_template", CHAT_TEMPLATE)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """The saved tokenizer as ``transformers`` loads it (AutoTokenizer, offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


# --- CLI ---------------------------------------------------------------------------------------

def error_line(e: Exception) -> str:
    """One line that says what was wrong, for the CLI (pydantic errors name the field)."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        except Exception:  # not a pydantic error after all
            pass
    return (str(e).splitlines() or [type(e).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge train-tokenizer", description=__doc__.split("\n")[0])
    p.add_argument("docs", help="documents Parquet file or directory (columns id, text)")
    p.add_argument("out_dir", help="directory to write the Hugging Face tokenizer into")
    add_config_arguments(p, TokenizerConfig)
    args = p.parse_args(argv)
    try:
        stats = train_tokenizer(args.docs, args.out_dir, config_from_args(TokenizerConfig, args))
    except (LmforgeError, ValueError, OSError) as e:  # pydantic's ValidationError is a ValueError
        print(f"lmforge train-tokenizer: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(f"tokenizer: vocab {stats.vocab_size}, {stats.bytes_per_token:.2f} bytes/token, "
          f"{stats.tokens_per_word:.2f} tokens/word on {stats.heldout_documents} held-out docs, "
          f"trained in {stats.training_seconds:.1f}s -> {args.out_dir}", file=sys.stderr)
    print(json.dumps(stats.to_metadata(), indent=2))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('train-tokenizer', main, sys.argv[1:]))
