"""Sequence packing for SFT: several conversations share one row, and none sees another.

Padding a micro-batch of conversations to its longest one wastes the padded positions; packing
puts several conversations end to end in rows of ``pack_len`` positions instead. Two things keep
a packed row exactly equivalent to running each conversation alone:

* attention is block-diagonal causal: a token attends to the earlier tokens of its own
  conversation only (a 4D boolean mask ``[batch, 1, seq, seq]``, True = may attend, which
  transformers passes to SDPA as is), and
* position ids restart at 0 for every conversation, so rotary embeddings see the same positions.

Targets are shifted per conversation before packing: a conversation of n tokens contributes its
first n - 1 tokens as inputs and its last n - 1 labels as targets, so no position ever predicts
the first token of the next conversation, and the set of (context, target) pairs is the one the
padded collate produces. The summed NLL, and hence the loss, is the same.

SFT packs each micro-batch on its own (``pack_batch``): the micro-batch holds the same
conversations as without packing, so data order, step count, loss and gradients are unchanged and
only the layout differs; resuming and multi-process runs need nothing new. Rows are filled
first-fit, longest conversation first (ties in the given order), which is deterministic.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE = -100


def packed_length(example: dict) -> int:
    """Positions an example takes in a packed row (its last token is only a target)."""
    return len(example["input_ids"]) - 1


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit bin packing: each item, in the given order, goes into the first row with
    room for it, or opens a new row. Returns rows as lists of item indices, in order."""
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    if not lengths:
        return []
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} items are longer than a packed row ({max(too_long)} > {capacity})")
    smallest = min(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    # Rows that can still take the shortest item, in row order. A row leaves this list when even
    # the shortest item no longer fits, so scanning it finds the same row a scan of all rows
    # would, without the scan growing with the data set.
    open_rows: list[int] = []
    for i, n in enumerate(lengths):
        j = next((r for r in open_rows if room[r] >= n), None)
        if j is None:
            rows.append([])
            room.append(capacity)
            j = len(rows) - 1
            open_rows.append(j)
        rows[j].append(i)
        room[j] -= n
        if room[j] < smallest:
            open_rows.remove(j)
    return rows


def pack_examples(examples: list[dict], pack_len: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Rows of example indices, first-fit in ``order`` (default: as given); each row's examples
    take at most ``pack_len`` positions together."""
    order = list(range(len(examples))) if order is None else [int(i) for i in order]
    lengths = [packed_length(examples[i]) for i in order]
    if any(n < 1 for n in lengths):
        raise ValueError("every example needs at least 2 tokens (one input, one target)")
    return [[order[k] for k in row] for row in first_fit(lengths, pack_len)]


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, seq, seq]`` bool: query q may attend key k iff both are in the same segment
    and k <= q. Every row attends at least to itself, so no softmax row is all-masked."""
    t = segments.size(1)
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def collate_packed(rows: list[list[dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """A micro-batch of packed rows, each row a list of examples (``input_ids``, ``labels``).

    Returns ``input_ids``, ``targets`` (already shifted), ``position_ids`` (restarting per
    conversation), ``attention_mask`` (the 4D block-causal mask) and ``num_tokens`` (non-padding
    input positions, for throughput: the 4D mask does not say which positions are padding).
    Rows are right-padded to the longest row; padding is a segment of its own with -100 targets.
    """
    if not rows or any(not row for row in rows):
        raise ValueError("collate_packed needs non-empty rows")
    width = max(sum(packed_length(e) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    n_tokens = 0
    for b, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row):
            n = packed_length(e)
            ids[b, at:at + n] = torch.tensor(e["input_ids"][:-1])
            targets[b, at:at + n] = torch.tensor(e["labels"][1:])
            positions[b, at:at + n] = torch.arange(n)
            segments[b, at:at + n] = s
            at += n
        positions[b, at:] = torch.arange(width - at)  # padding: its own segment, harmless positions
        n_tokens += at
    return {"input_ids": ids, "targets": targets, "position_ids": positions,
            "attention_mask": block_causal_mask(segments), "num_tokens": torch.tensor(n_tokens)}


def pack_batch(examples: list[dict], pack_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of conversations as packed rows of at most ``pack_len`` positions:
    first-fit decreasing (longest first, a stable sort), then ``collate_packed``."""
    if not examples:
        raise ValueError("pack_batch needs at least one example")
    order = sorted(range(len(examples)), key=lambda i: -packed_length(examples[i]))
    rows = pack_examples(examples, pack_len, order)
    return collate_packed([[examples[i] for i in row] for row in rows], pad_id)
