"""The processes of a run: joining (or creating) the process group, and the few collectives the
loop uses (sums, barriers, one broadcast).

torchrun and the deepspeed launcher set RANK/WORLD_SIZE/MASTER_*; a plain ``python -m`` run gets
a one-process group on loopback, so the same code trains on one process and on many.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from lmforge.train.launch import free_port


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(device: str = "auto") -> Dist:
    """Join (or, for a single process, create) the process group DeepSpeed runs on.

    torchrun and the deepspeed launcher set RANK/WORLD_SIZE/MASTER_*; a plain ``python -m`` run
    gets a one-process group on loopback; calling this again in the same process reuses it. On a
    CPU-only machine DeepSpeed needs its CPU accelerator (``DS_ACCELERATOR=cpu``) chosen before it
    is imported, and gloo as the backend.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ

    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if device == "cpu":
        # DeepSpeed's CPU all-reduce kernel is a C++ extension compiled on first use (~40 s of
        # g++); gloo is as fast for the small models a CPU trains, so skip the build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "gloo" if device == "cpu" else "nccl"
    if launched:
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    else:
        # One process: a private group on a free loopback port. Only LOCAL_RANK (which DeepSpeed
        # asserts) goes into os.environ: a child process must not mistake itself for a rank.
        os.environ.setdefault("LOCAL_RANK", "0")
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                                   init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        rank, world, local_rank = 0, 1, 0
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_reduce_sum(values: list, dist: Dist) -> list[float]:
    """Sums over ranks of numbers or 0-dim tensors, as Python floats (float64 throughout).
    Reading a device tensor waits for the device: the loop calls this once per step."""
    if dist.world_size == 1:
        return [float(v) for v in values]
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=dist.device) for v in values])
    torch.distributed.all_reduce(t)
    return t.tolist()


def barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def broadcast_name(name: str, dist: Dist) -> str:
    """Rank 0's ``name`` on every rank (a staging directory all ranks must write into)."""
    if dist.world_size == 1:
        return name
    box = [name]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]

