"""Pretraining data: random windows from memory-mapped token shards.

A shard is a flat array of token ids (``train.bin``) beside a small JSON header (``train.json``:
dtype, num_tokens, num_documents, vocab_size, eos_id). Documents are already joined with the EOS
token, so any window of ``seq_len + 1`` tokens is a training example: the first ``seq_len`` are
the input, the last ``seq_len`` the targets.

A data directory is one shard set, or a list of day shard sets (``shards.json``, written by
``lmforge.tokenize.shards.tokenize_days``): the days are memory-mapped one by one and read as one
array, oldest day first, so a window may run from one day into the next as it runs from one
document into the next.

Which windows a step reads is a pure function of ``(seed, step)``: the whole global batch of a
step is drawn at once, and rank ``r`` takes micro-batch ``m`` from rows ``(m * world + r) *
micro_batch``. So resuming at step ``s`` reads exactly what an uninterrupted run would have read,
and a run on two processes with one accumulation step sees the same tokens as a run on one
process with two; nothing about the position has to be saved except the step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError

SHARD_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
# The day list lmforge.tokenize.shards.tokenize_days writes (the training ranks do not import
# the tokenizing side).
SHARD_LIST = "shards.json"


def shard_dirs(data_dir: str | Path) -> list[Path]:
    """The shard sets a data directory stands for: the day sets its ``shards.json`` lists, in
    order, or the directory itself (one ``train.bin``)."""
    data_dir = Path(data_dir)
    listing = data_dir / SHARD_LIST
    if not listing.is_file():
        return [data_dir]
    try:
        days = json.loads(listing.read_text())["days"]
        dirs = [data_dir / str(d["dir"]) for d in days]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise LmforgeError(f"{listing}: not a token shard list ({type(e).__name__}: {e})") from None
    if not dirs:
        raise LmforgeError(f"{listing}: lists no day shards")
    return dirs


def shard_files(data_dir: str | Path) -> list[Path]:
    """Every file training reads from a data directory (to stage it elsewhere, e.g. local disk)."""
    data_dir = Path(data_dir)
    files = [data_dir / SHARD_LIST] if (data_dir / SHARD_LIST).is_file() else []
    for d in shard_dirs(data_dir):
        files += [d / f"{split}.{ext}" for split in ("train", "val") for ext in ("json", "bin")
                  if (d / f"{split}.{ext}").is_file()]
    return files


def read_header(data_dir: str | Path, split: str) -> dict:
    """The header of ``split``: of its one shard, or of the list's day shards together
    (``num_tokens`` and ``num_documents`` summed; dtype, vocabulary and eos must agree)."""
    dirs = shard_dirs(data_dir)
    if len(dirs) == 1 and dirs[0] == Path(data_dir):
        return _read_one_header(data_dir, split)
    headers = [_read_one_header(d, split) for d in dirs]
    first = headers[0]
    for d, h in zip(dirs, headers):
        for key in ("dtype", "vocab_size", "eos_id"):
            if h[key] != first[key]:
                raise LmforgeError(f"{d}: {key} {h[key]!r} differs from {dirs[0]}'s {first[key]!r}")
    return {**first, "num_tokens": sum(int(h["num_tokens"]) for h in headers),
            "num_documents": sum(int(h.get("num_documents", 0)) for h in headers)}


def _read_one_header(data_dir: str | Path, split: str) -> dict:
    path = Path(data_dir) / f"{split}.json"
    if not path.is_file():
        raise LmforgeError(f"no token shard header at {path} (expected {split}.bin + {split}.json)")
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmforgeError(f"{path}: not a token shard header (JSON): {e}") from None
    if not isinstance(header, dict):
        raise LmforgeError(f"{path}: not a token shard header (a JSON object)")
    missing = {"dtype", "num_tokens", "vocab_size", "eos_id"} - set(header)
    if missing:
        raise LmforgeError(f"{path}: header lacks {sorted(missing)}")
    if header["dtype"] not in SHARD_DTYPES:
        raise LmforgeError(f"{path}: dtype must be one of {sorted(SHARD_DTYPES)}, got {header['dtype']!r}")
    for key in ("num_tokens", "vocab_size", "eos_id"):
        if not isinstance(header[key], int) or isinstance(header[key], bool) or header[key] < 0:
            raise LmforgeError(f"{path}: {key} must be a non-negative integer, got {header[key]!r}")
    return header


def max_token_id(data_dir: str | Path, split: str, chunk: int = 1 << 24) -> int:
    """The largest token id in ``{split}.bin`` (-1 if empty), read in chunks of the memory map, so
    that ids beyond a model's vocabulary are found before training (where they would fail deep in
    the embedding, or on a GPU corrupt memory)."""
    tokens, _ = open_shard(data_dir, split)
    top = -1
    for part in getattr(tokens, "parts", [tokens]):
        for i in range(0, len(part), chunk):
            top = max(top, int(part[i:i + chunk].max()))
    return top


def check_vocabulary(data_dir: str | Path, vocab_size: int) -> None:
    """Every shard's header and token ids fit a model with ``vocab_size`` embeddings."""
    for split in ("train", "val"):
        if split == "val" and not all((d / "val.json").exists() for d in shard_dirs(data_dir)):
            continue
        header = read_header(data_dir, split)
        if int(header["vocab_size"]) > vocab_size:
            raise LmforgeError(f"{Path(data_dir) / split}.bin was written with vocab_size "
                               f"{header['vocab_size']} but the tokenizer has {vocab_size} tokens: "
                               "wrong --tokenizer?")
        top = max_token_id(data_dir, split)
        if top >= vocab_size:
            raise LmforgeError(f"{Path(data_dir) / split}.bin holds token id {top}, beyond the "
                               f"tokenizer's {vocab_size} tokens: wrong --tokenizer, or a corrupt shard")


class TokenSequence:
    """Day shards read as one array: ``len`` and slices (``tokens[a:b]``, a new array) across
    the days' memory maps, without joining them."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("TokenSequence takes contiguous slices only")
        start, stop, _ = index.indices(len(self))
        pieces = []
        i = max(int(np.searchsorted(self.starts, start, side="right")) - 1, 0)
        while start < stop and i < len(self.parts):
            lo = start - int(self.starts[i])
            take = min(stop, int(self.starts[i + 1])) - start
            pieces.append(self.parts[i][lo:lo + take])
            start += take
            i += 1
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)


def open_shard(data_dir: str | Path, split: str) -> tuple[np.memmap | TokenSequence, dict]:
    """Memory-map ``{split}.bin`` (of every day shard of a list); the OS pages tokens in as
    windows touch them."""
    dirs = shard_dirs(data_dir)
    if len(dirs) == 1 and dirs[0] == Path(data_dir):
        return _open_one(data_dir, split)
    header = read_header(data_dir, split)
    return TokenSequence([_open_one(d, split)[0] for d in dirs]), header


def _open_one(data_dir: str | Path, split: str) -> tuple[np.memmap, dict]:
    header = _read_one_header(data_dir, split)
    path = Path(data_dir) / f"{split}.bin"
    dtype = SHARD_DTYPES[header["dtype"]]
    expected = int(header["num_tokens"]) * np.dtype(dtype).itemsize
    if not path.is_file() or path.stat().st_size != expected:
        size = path.stat().st_size if path.is_file() else "missing"
        raise LmforgeError(f"{path}: size {size} does not match header ({header['num_tokens']} x {header['dtype']})")
    if expected == 0:
        return np.zeros(0, dtype=dtype), header  # numpy cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r"), header


class TokenWindows:
    """Deterministic random windows of ``seq_len + 1`` tokens from one split."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int, seed: int = 0):
        self.tokens, self.header = open_shard(data_dir, split)
        self.seq_len = seq_len
        self.seed = seed
        self.split = split
        if len(self.tokens) < seq_len + 2:
            raise LmforgeError(f"{split} shard has {len(self.tokens)} tokens, fewer than one window "
                             f"of {seq_len + 1}; lower seq_len or tokenize more text")

    @property
    def vocab_size(self) -> int:
        return int(self.header["vocab_size"])

    def _window(self, start: int) -> np.ndarray:
        return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64)

    def step_offsets(self, step: int, global_batch: int) -> np.ndarray:
        """Start offsets of every window of one optimizer step, across all ranks."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.seq_len - 1, size=global_batch)

    def batch(self, step: int, micro: int, micro_batch: int, grad_accum: int, rank: int = 0,
              world_size: int = 1) -> dict[str, torch.Tensor]:
        """Micro-batch ``micro`` of ``step`` for ``rank``: ``input_ids`` and shifted ``targets``."""
        offsets = self.step_offsets(step, micro_batch * grad_accum * world_size)
        row = (micro * world_size + rank) * micro_batch
        w = torch.from_numpy(np.stack([self._window(int(o)) for o in offsets[row:row + micro_batch]]))
        return {"input_ids": w[:, :-1].contiguous(), "targets": w[:, 1:].contiguous()}

    def eval_batches(self, n_batches: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """Fixed, evenly spaced windows (the same every evaluation, so val losses compare);
        each rank evaluates every ``world_size``-th batch, and all ranks run the same count."""
        n_batches = -(-n_batches // world_size) * world_size
        n_windows = n_batches * batch_size
        last = len(self.tokens) - self.seq_len - 1
        starts = np.linspace(0, last, num=n_windows).astype(np.int64)
        for b in range(rank, n_batches, world_size):
            w = torch.from_numpy(np.stack([self._window(int(s)) for s in starts[b * batch_size:(b + 1) * batch_size]]))
            yield {"input_ids": w[:, :-1].contiguous(), "targets": w[:, 1:].contiguous()}
