"""What a training step minimises: the loop (``loop.py``) is the same for every stage, the
objective is not.

An objective says two things about a micro-batch (a dict of tensors):

- ``count(batch)``: how many units the step's loss is a mean over (target tokens for the NLL,
  preference pairs for DPO, completion tokens for GRPO), counted on the host before the batch is
  copied to the device;
- ``loss(model, batch)``: the *summed* loss of the micro-batch and a dict of summed statistics
  (``{"accuracy": correct_pairs, ...}``).

The loop adds both over the step's micro-batches and ranks and divides by the step's total count,
so a step's loss and statistics do not depend on how the batch is split; the statistics are
logged beside the loss (``metrics.jsonl``, TensorBoard, telemetry) and, from the held-out batches,
as ``val_<name>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

IGNORE = -100


class Objective(Protocol):
    name: str

    def count(self, batch: dict) -> int: ...

    def loss(self, model, batch: dict) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]: ...


class TokenNLL:
    """The mean negative log-likelihood of ``batch['targets']`` (already shifted; -100 = not
    trained): pretraining, SFT and LoRA."""

    name = "nll"

    def __init__(self, loss_chunk: int = 0, compiled: bool = False):
        self.loss_chunk, self.compiled = loss_chunk, compiled

    def count(self, batch: dict) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model, batch: dict):
        from lmforge.train.loop import forward_nll

        return forward_nll(model, batch, self.loss_chunk, self.compiled), {}
