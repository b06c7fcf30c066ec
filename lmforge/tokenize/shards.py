"""Tokenize the documents into flat, memory-mapped token arrays for pretraining.

    lmforge tokenize documents.parquet tokens/ --tokenizer tokenizer/          one shard set
    lmforge tokenize corpus/ shards/ --tokenizer tokenizer/ --days days/       one set per day

One shard set (a directory):

    train.bin   val.bin     every document's token ids followed by the eos id, concatenated:
                            a flat little-endian uint16 array (uint32 when the vocabulary has
                            65536 ids or more), read with ``load_tokens`` (np.memmap, no copy)
    train.json  val.json    header: {"dtype", "num_tokens", "num_documents", "vocab_size",
                            "eos_id", "tokenizer", "tokenizer_sha256"}
    val.parquet             the held-out documents (id, url, text), for bits-per-byte evaluation
    stats.json              the ShardStats of the run
    manifest.json           written last (day shard sets): what it was made from (``key``)

A curated corpus grows by one day each night, so ``tokenize_days`` keeps one shard set per day
in ``days_dir/<tokenizer hash>/<day>/<input key>/`` and tokenizes only the days it has no set
for: a day's set is reused while the tokenizer (the SHA-256 of ``tokenizer.json``), the split
settings and the day's input (its ``_manifest.json`` and its files' sizes and times) are the
same. Its output directory then holds no tokens, only the list of the day sets it covers:

    shards.json             {"format", "dtype", "vocab_size", "eos_id", "tokenizer_sha256",
                            "days": [{"day", "dir" (relative to shards.json), "train_tokens",
                            "val_tokens", "train_documents", "val_documents"}, ...]}
    train.json  val.json    the headers of the whole list (num_tokens summed over the days)
    val.parquet             the first ``eval_documents`` held-out documents, oldest day first
                            (what the evaluation's bits per byte reads; lm-eval's ``limit``
                            takes the first documents, so these are the ones it scores)

``lmforge.train.data`` reads either layout.

The split is by a hash of the document id (``bpe.heldout_ids``, the rule the tokenizer used to
hold documents out, applied to each day), so it is the same on every run and every machine, and
adding a day never moves an old document between splits. Text goes through the Rust tokenizer in
batches (``encode_batch_fast``, parallel over documents); Python touches whole arrays, never one
token. Special-token strings inside document text (say a page quoting "<|endoftext|>") are
encoded as plain text, so a document can never inject an eos or a chat marker.

Every directory is written atomically: a crash leaves the previous output (or nothing).
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

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and pyarrow load where the work happens
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

from pydantic import BaseModel, Field

from lmforge.config import add_config_arguments, config_from_args
from lmforge.curate.text import InputError, MissingInputError, input_schema
from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, check_output, parquet_files, sha256_file
from lmforge.tokenize.bpe import EOS_TOKEN, error_line, heldout_ids
from lmforge.tokenize.corpus import corpus_days, input_fingerprint

SPLITS = ("train", "val")
DAY_MANIFEST = "manifest.json"
SHARD_LIST = "shards.json"
SHARD_LIST_FORMAT = "lmforge-day-shards/1"


def _val_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("url", pa.string()), ("text", pa.string())])


class ShardConfig(BaseModel):
    """How to split and tokenize. Defaults are the ``tiny`` preset."""

    val_fraction: float = Field(0.05, ge=0.0, lt=1.0,
                                description="fraction of documents (by id hash) in the val split")
    seed: int = Field(0, description="salt of the id hash; keep equal to the tokenizer's seed")
    batch_rows: int = Field(1000, ge=1, description="documents tokenized per encode_batch call")
    eval_documents: int = Field(1000, ge=1,
                                description="held-out documents (oldest day first) copied into a "
                                "day list's val.parquet for the bits-per-byte evaluation, which "
                                "scores the first `limit` of them (the standard suite: 1000); the "
                                "whole held-out split stays in the day shards")


@dataclass
class ShardStats:
    train_tokens: int
    val_tokens: int
    train_documents: int
    val_documents: int
    skipped_empty_documents: int
    bytes_per_token: float  # UTF-8 bytes of text per token (eos not counted)
    tokens_per_second: float  # of the tokens this run encoded
    seconds: float
    dtype: str
    vocab_size: int
    eos_id: int
    out_dir: str
    text_bytes: int = 0  # UTF-8 bytes of the documents' text
    days: int = 1  # day shard sets the output covers
    days_tokenized: int = 1  # of which this run tokenized (the others were reused)

    def to_metadata(self) -> dict:
        return asdict(self)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids < 65536 and halves the bytes read per step; larger vocabularies need uint32."""
    import numpy as np

    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def _load_fast_tokenizer(tokenizer_dir: Path):
    """The raw ``tokenizers.Tokenizer`` from ``tokenizer.json`` and its eos id."""
    from tokenizers import Tokenizer

    if not tokenizer_dir.is_dir():
        raise MissingInputError(f"no tokenizer directory at {tokenizer_dir}")
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise MissingInputError(f"no tokenizer.json in {tokenizer_dir}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type for a malformed file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"{path} is not a tokenizer file: {first}") from None
    eos = EOS_TOKEN
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():  # a tokenizer trained elsewhere may name its eos differently
        try:
            settings = json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{config}: not JSON ({e})") from None
        if not isinstance(settings, dict):
            raise InputError(f"{config}: expected a JSON object of settings")
        eos_entry = settings.get("eos_token", EOS_TOKEN)
        eos = eos_entry.get("content", EOS_TOKEN) if isinstance(eos_entry, dict) else eos_entry
    eos_id = tok.token_to_id(eos) if isinstance(eos, str) else None
    if eos_id is None:
        raise InputError(f"{path}: eos token {eos!r} is not in the vocabulary")
    tok.encode_special_tokens = True  # document text cannot produce special-token ids
    return tok, eos_id


def tokenize_documents(docs_path: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, cfg: ShardConfig | None = None,
                       manifest: dict | None = None, allow_empty: bool = False) -> ShardStats:
    """Tokenize ``docs_path`` (Parquet: id, url, text) into ``out_dir`` (see the module doc);
    ``manifest`` is written last into it, as ``manifest.json`` (with the stats added).
    ``allow_empty``: a day whose curation kept nothing gives an empty set, not an error."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = cfg or ShardConfig()
    # Refused before any tokenizing: an output over a directory lmforge did not make (its files
    # would be lost), a read-only place, an input that is not a document table.
    check_output(out_dir, "dir")
    input_schema(docs_path, required=("id", "text"))
    tokenizer_dir = Path(tokenizer_dir).resolve()
    tok, eos_id = _load_fast_tokenizer(tokenizer_dir)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    val_ids = heldout_ids(docs_path, cfg.val_fraction, cfg.seed)
    eos = np.array([eos_id], dtype=dtype)

    tokens = {s: 0 for s in SPLITS}
    docs = {s: 0 for s in SPLITS}
    n_bytes = skipped = 0
    t0 = time.perf_counter()
    with atomic_path(out_dir, "dir") as tmp:
        tmp.mkdir()
        last_report = t0
        # val.parquet is streamed too: 5 % of a large corpus is still too much text to hold.
        with open(tmp / "train.bin", "wb") as f_train, open(tmp / "val.bin", "wb") as f_val, \
                pq.ParquetWriter(tmp / "val.parquet", _val_schema()) as val_writer:
            files = {"train": f_train, "val": f_val}
            for file in parquet_files(docs_path):
                pf = pq.ParquetFile(file)
                missing = {"id", "text"} - set(pf.schema_arrow.names)
                if missing:
                    raise ValueError(f"{file}: missing column(s) {sorted(missing)}")
                has_url = "url" in pf.schema_arrow.names
                columns = ["id", "url", "text"] if has_url else ["id", "text"]
                for batch in pf.iter_batches(columns=columns, batch_size=cfg.batch_rows):
                    rows = batch.to_pydict()
                    ids = [str(i) for i in rows["id"]]
                    urls = rows["url"] if has_url else [""] * len(ids)
                    keep = [k for k, t in enumerate(rows["text"]) if t]
                    skipped += len(ids) - len(keep)
                    texts = [rows["text"][k] for k in keep]
                    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
                    chunks: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
                    val_rows = []
                    for k, text, enc in zip(keep, texts, encodings):
                        split = "val" if ids[k] in val_ids else "train"
                        chunks[split].append(np.asarray(enc.ids, dtype=dtype))
                        chunks[split].append(eos)
                        tokens[split] += len(enc.ids) + 1
                        docs[split] += 1
                        n_bytes += len(text.encode("utf-8"))
                        if split == "val":
                            val_rows.append({"id": ids[k], "url": urls[k] or "", "text": text})
                    for split in SPLITS:
                        if chunks[split]:
                            files[split].write(np.concatenate(chunks[split]).tobytes())
                    if val_rows:
                        val_writer.write_table(pa.Table.from_pylist(val_rows, schema=val_writer.schema))
                    if time.perf_counter() - last_report > 10:
                        last_report = time.perf_counter()
                        total = tokens["train"] + tokens["val"]
                        print(f"tokenize: {docs['train'] + docs['val']} docs, {total} tokens, "
                              f"{total / (last_report - t0):,.0f} tokens/s", file=sys.stderr)
        if docs["train"] + docs["val"] == 0 and not allow_empty:
            raise InputError(f"{docs_path}: no document with non-empty text")
        seconds = time.perf_counter() - t0
        tokenizer_hash = sha256_file(tokenizer_dir / "tokenizer.json")
        for split in SPLITS:
            (tmp / f"{split}.json").write_text(json.dumps({
                "dtype": dtype.name, "num_tokens": tokens[split], "num_documents": docs[split],
                "vocab_size": vocab_size, "eos_id": eos_id,
                "tokenizer": str(tokenizer_dir), "tokenizer_sha256": tokenizer_hash,
            }, indent=2) + "\n")
        total = tokens["train"] + tokens["val"]
        stats = ShardStats(
            train_tokens=tokens["train"], val_tokens=tokens["val"],
            train_documents=docs["train"], val_documents=docs["val"],
            skipped_empty_documents=skipped,
            bytes_per_token=round(n_bytes / max(total - docs["train"] - docs["val"], 1), 4),
            tokens_per_second=round(total / max(seconds, 1e-9), 1),
            seconds=round(seconds, 3), dtype=dtype.name, vocab_size=vocab_size, eos_id=eos_id,
            out_dir=str(Path(out_dir)), text_bytes=n_bytes,
        )
        (tmp / "stats.json").write_text(json.dumps(stats.to_metadata(), indent=2) + "\n")
        if manifest is not None:
            (tmp / DAY_MANIFEST).write_text(json.dumps({**manifest, "stats": stats.to_metadata()},
                                                       indent=2, sort_keys=True) + "\n")
    return stats


def day_key(tokenizer_sha256: str, cfg: ShardConfig, fingerprint: str) -> str:
    """What a day's shard set is made from: two sets with one key hold the same tokens."""
    made_of = {"format": SHARD_LIST_FORMAT, "tokenizer_sha256": tokenizer_sha256,
               "val_fraction": cfg.val_fraction, "seed": cfg.seed, "input": fingerprint}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()


def _finished_day(day_dir: Path, key: str) -> dict | None:
    """The manifest of a finished day set made from ``key`` (its files as its headers say), or
    None: a set from other input, a half-written one, or one whose files were damaged."""
    try:
        manifest = json.loads((day_dir / DAY_MANIFEST).read_text())
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            return None
        for split in SPLITS:
            load_tokens(day_dir, split)  # checks the .bin's size against its header
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def tokenize_days(corpus: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                  days_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: ShardConfig | None = None) -> ShardStats:
    """Give every day of ``corpus`` a shard set in ``days_dir`` (tokenizing only the days that
    have none for this tokenizer and input) and write their list into ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = cfg or ShardConfig()
    out = check_output(out_dir, "dir").resolve()
    days = corpus_days(corpus)
    if not days:
        raise MissingInputError(f"{corpus}: no curated day to tokenize")
    tokenizer_dir = Path(tokenizer_dir).resolve()
    _, eos_id = _load_fast_tokenizer(tokenizer_dir)
    tokenizer_hash = sha256_file(tokenizer_dir / "tokenizer.json")
    root = Path(days_dir).resolve() / tokenizer_hash[:16]
    t0 = time.perf_counter()
    entries, sets = [], []
    encoded = tokenized = 0
    for day, path in days:
        key = day_key(tokenizer_hash, cfg, input_fingerprint(path))
        day_dir = root / day / key[:16]
        manifest = _finished_day(day_dir, key)
        if manifest is None:
            print(f"tokenize: day {day} ({path})", file=sys.stderr)
            tokenize_documents(path, tokenizer_dir, day_dir, cfg, allow_empty=True,
                               manifest={"format": SHARD_LIST_FORMAT, "key": key, "day": day,
                                         "source": str(path)})
            manifest = json.loads((day_dir / DAY_MANIFEST).read_text())
            tokenized += 1
            encoded += manifest["stats"]["train_tokens"] + manifest["stats"]["val_tokens"]
        day_stats = manifest["stats"]
        sets.append((day_dir, day_stats))
        entries.append({"day": day, "dir": os.path.relpath(day_dir, out),
                        **{k: day_stats[k] for k in ("train_tokens", "val_tokens",
                                                     "train_documents", "val_documents")}})

    def total(field: str) -> int:
        return sum(int(st[field]) for _, st in sets)

    if total("train_documents") + total("val_documents") == 0:
        raise InputError(f"{corpus}: no document with non-empty text in {len(days)} day(s)")
    first = sets[0][1]
    seconds = time.perf_counter() - t0
    with atomic_path(out, "dir") as tmp:
        tmp.mkdir()
        left = cfg.eval_documents
        with pq.ParquetWriter(tmp / "val.parquet", _val_schema()) as writer:
            for day_dir, _ in sets:
                if left <= 0:
                    break
                for batch in pq.ParquetFile(day_dir / "val.parquet").iter_batches(batch_size=1000):
                    table = pa.Table.from_batches([batch], schema=writer.schema).slice(0, left)
                    writer.write_table(table)
                    left -= table.num_rows
                    if left <= 0:
                        break
        for split in SPLITS:
            (tmp / f"{split}.json").write_text(json.dumps({
                "dtype": first["dtype"], "num_tokens": total(f"{split}_tokens"),
                "num_documents": total(f"{split}_documents"), "vocab_size": first["vocab_size"],
                "eos_id": eos_id, "tokenizer": str(tokenizer_dir),
                "tokenizer_sha256": tokenizer_hash, "shards": SHARD_LIST,
            }, indent=2) + "\n")
        text_tokens = (total("train_tokens") + total("val_tokens") - total("train_documents")
                       - total("val_documents"))
        stats = ShardStats(
            train_tokens=total("train_tokens"), val_tokens=total("val_tokens"),
            train_documents=total("train_documents"), val_documents=total("val_documents"),
            skipped_empty_documents=total("skipped_empty_documents"),
            bytes_per_token=round(total("text_bytes") / max(text_tokens, 1), 4),
            tokens_per_second=round(encoded / max(seconds, 1e-9), 1), seconds=round(seconds, 3),
            dtype=first["dtype"], vocab_size=first["vocab_size"], eos_id=eos_id,
            out_dir=str(Path(out_dir)), text_bytes=total("text_bytes"), days=len(sets),
            days_tokenized=tokenized)
        (tmp / "stats.json").write_text(json.dumps(stats.to_metadata(), indent=2) + "\n")
        (tmp / SHARD_LIST).write_text(json.dumps({
            "format": SHARD_LIST_FORMAT, "dtype": first["dtype"],
            "vocab_size": first["vocab_size"], "eos_id": eos_id,
            "tokenizer_sha256": tokenizer_hash, "days": entries}, indent=2) + "\n")
    return stats


def read_header(out_dir: str | os.PathLike, split: str) -> dict:
    """The JSON header of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    path = Path(out_dir) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {split}.json in {out_dir}: not a token shard directory")
    return json.loads(path.read_text())


def load_tokens(out_dir: str | os.PathLike, split: str) -> np.memmap:
    """The tokens of ``split`` ('train' or 'val') as a read-only memory map (dtype from the header).

    An empty split comes back as an empty read-only array (a zero-byte file cannot be mapped).
    """
    import numpy as np

    header = read_header(out_dir, split)
    dtype = np.dtype(header["dtype"])
    path = Path(out_dir) / f"{split}.bin"
    expected = header["num_tokens"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, header says {expected}")
    if header["num_tokens"] == 0:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty  # type: ignore[return-value]
    return np.memmap(path, dtype=dtype, mode="r", shape=(header["num_tokens"],))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge tokenize", description=__doc__.split("\n")[0])
    p.add_argument("docs", help="documents Parquet file or directory (columns id, url, text)")
    p.add_argument("out_dir", help="directory to write train/val .bin + .json and val.parquet into")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (from train-tokenizer)")
    p.add_argument("--days", metavar="DIR", default=None,
                   help="keep one shard set per day of DOCS (a curated corpus) in DIR, tokenize "
                   "only the days it lacks, and write their list (shards.json) into OUT_DIR")
    add_config_arguments(p, ShardConfig)
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(ShardConfig, args)
        if args.days:
            stats = tokenize_days(args.docs, args.tokenizer, args.days, args.out_dir, cfg)
        else:
            stats = tokenize_documents(args.docs, args.tokenizer, args.out_dir, cfg)
    except (LmforgeError, ValueError, OSError) as e:
        print(f"lmforge tokenize: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(f"tokens: train {stats.train_tokens} ({stats.train_documents} docs), val {stats.val_tokens} "
          f"({stats.val_documents} docs), {stats.bytes_per_token:.2f} bytes/token, "
          f"{stats.tokens_per_second:,.0f} tokens/s -> {args.out_dir}", file=sys.stderr)
    print(json.dumps(stats.to_metadata(), indent=2))
    return 0


if __name__ == "__main__":
    from lmforge.cli import run
    sys.exit(run('tokenize', main, sys.argv[1:]))
