"""The training loop shared by pretraining, SFT and LoRA.

One plain loop, readable top to bottom: set the learning rate for the step, run the micro-batches,
step, log, evaluate, checkpoint. The loop drives an *engine* through a few calls (``engine(...)``,
``engine.backward``, ``engine.step``, checkpoint save/load), and two engines implement them:

* ``PlainEngine``, plain PyTorch for one process without ZeRO: autograd, clipping, AdamW (fused
  on CUDA). On one GPU this is the fast path: DeepSpeed's engine adds per-call hooks, timers and
  bookkeeping and buys nothing there (baselines given to this project, a 135M Llama-style model on
  one H100, not measured by this repository: ~174-226K tokens/s through a DeepSpeed engine against
  ~393-421K for a plain compiled loop).
* DeepSpeed's engine, for what differs between one device and many: ZeRO partitioning of
  optimizer state, gradients and parameters, and the gradient all-reduce across ranks.

``engine="auto"`` picks the plain engine on one process with ``zero_stage=0`` and no extra
DeepSpeed config, DeepSpeed otherwise. Both give the same losses: the plain engine implements
DeepSpeed's stage-0 semantics as the loop uses them (see ``PlainEngine``).

The loss of a step is the mean NLL over every target token of the step, across micro-batches and
ranks (not a mean of per-micro-batch means), so a step's loss does not depend on how the batch is
split, and SFT's loss is exactly the mean over assistant tokens.

Checkpoints are DeepSpeed checkpoints (model, optimizer and ZeRO partitions; the plain engine
writes DeepSpeed's stage-0 layout) plus the step, the token count and every rank's RNG state
(``rng_rank<r>.safetensors``: tensors, and Python's state as JSON in its metadata). Data order is
a function of (seed, step), so the step is the whole data position. A checkpoint is written to a
staging directory (named so that ``lmforge.io.sweep_stale`` removes it once its process is gone)
and renamed into place, and ``checkpoints/latest`` is replaced last, so a crash mid-save leaves
the previous checkpoint. A run directory may be shared, so nothing in it may run code when read:
every ``.pt`` file of a checkpoint is read with ``torch.load(weights_only=True)`` (DeepSpeed's own
loads included), and one that needs more than tensors and plain data is refused.

A checkpoint is resumed only if the run's config and input files are those it was trained from
(``checkpoints/run_fingerprint.json``): after an upstream change the same command trains again from
scratch. The exported model (``model/``) carries the ``train_config.json`` and
``run_fingerprint.json`` it was trained from, written inside it and committed with it by one
rename; so a run that is killed leaves the previous model whole, beside the record of what it
was trained from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import errno
import pickle
import re

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from lmforge.errors import LmforgeError, OutputError
from lmforge.io import atomic_path, sweep_stale, temp_name_prefix, write_json
from lmforge.train.model import (ATTENTION_BACKENDS, attention_context, causal_lm_parts, check_attention_backend,
                                 count_params,
                                 linear_cross_entropy)
from lmforge.train.plots import loss_curve_metadata
from lmforge.train.telemetry import Telemetry

Batch = dict[str, torch.Tensor]


class TrainConfig(BaseModel):
    """Optimisation settings shared by every training stage; defaults are the ``tiny`` CPU demo."""

    max_steps: int = Field(150, ge=1)
    micro_batch: int = Field(16, ge=1, description="sequences per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr")
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: share of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(50, ge=0, description="val loss every N steps (0: only at the end)")
    eval_batches: int = Field(8, ge=0)
    log_every: int = Field(10, ge=1)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool | None = Field(None, description="torch.compile the model (default: on GPU only)")
    engine: Literal["auto", "deepspeed", "plain"] = Field(
        "auto", description="auto: plain PyTorch on one process with zero_stage 0 and no extra "
        "deepspeed config (fastest on one GPU), the DeepSpeed engine otherwise")
    loss_chunk: int = Field(0, ge=0, description="compute the output projection and cross-entropy "
                            "this many tokens at a time, so the [tokens x vocab] fp32 logits never "
                            "exist at once (0: all at once)")
    attention_backend: Literal[ATTENTION_BACKENDS] = Field(
        "auto", description="SDPA kernel: auto (PyTorch picks per call), cudnn, flash, efficient or "
        "math; on CPU only auto, flash and math run")
    cpu_threads: int = Field(1, ge=1, description="torch threads per process on CPU: tiny models run "
                             "several times faster on one thread than with OpenMP across busy cores")
    peak_flops: float = Field(989e12, gt=0, description="per-device peak FLOP/s for MFU (H100 bf16)")
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="extra DeepSpeed config, merged last")


# ---------------------------------------------------------------------------------------------
# processes


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                                   init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        rank, world, local_rank = 0, 1, 0
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def _all_reduce_sum(values: list, dist: Dist) -> list[float]:
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


# ---------------------------------------------------------------------------------------------
# schedule and optimizer


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay, or warmup-stable-decay (WSD), or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
    # WSD: hold the peak, then decay linearly over the last decay_fraction of the run, which lets
    # a run be extended from any pre-decay checkpoint.
    decay_start = max(cfg.warmup_steps, cfg.max_steps - int(round(cfg.decay_fraction * cfg.max_steps)))
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start) / max(1, cfg.max_steps - decay_start)
    return cfg.lr - (cfg.lr - min_lr) * min(1.0, progress)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not norms, biases), as in GPT-2/nanoGPT. ``fused``:
    one kernel for the whole update (CUDA; the plain engine's choice there)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    seen: set[int] = set()
    decay, no_decay = [], []
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             **({"fused": True} if fused else {}))


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        # AdamW from torch is fine under ZeRO; DeepSpeed only vouches for its own optimizers.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    ds.update(cfg.deepspeed)
    return ds


# ---------------------------------------------------------------------------------------------
# engines

# The keys DeepSpeed writes beside ``module`` and ``optimizer`` in a stage-0 checkpoint; what is
# left of a loaded checkpoint without them is the loop's client state.
_DEEPSPEED_CHECKPOINT_KEYS = frozenset({
    "module", "optimizer", "buffer_names", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config",
    "ds_version"})


def _global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all of ``grads`` as DeepSpeed's stage-0 clipping computes it
    (``deepspeed.runtime.utils.clip_grad_norm_``): the square root of the summed squares of the
    per-tensor norms. ``torch.nn.utils.clip_grad_norm_`` takes the norm of the stacked norms
    instead, which rounds differently (one float32 ulp apart in about 4 steps out of 10); the clip
    coefficient then differs, AdamW amplifies that where a weight's gradients nearly cancel, and
    after two steps the weights were 1.2e-6 apart from DeepSpeed's."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm([g.float() for g in grads])
    return torch.stack(norms).pow(2.0).sum().pow(0.5)


class PlainEngine:
    """The part of DeepSpeed's engine that ``train`` uses, in plain PyTorch, for one process.

    It follows DeepSpeed's stage-0 semantics exactly as the loop drives them, so both engines
    give the same trajectory: ``backward(loss)`` back-propagates ``loss / grad_accum``; ``step()``
    is called after every micro-batch and acts only on the last one of a step (the accumulation
    boundary): clip the global L2 norm of the gradients (summed as DeepSpeed sums it) to
    ``grad_clip`` (coefficient ``grad_clip / (norm + 1e-6)``, capped at 1), optimizer step,
    gradients set to None. On CPU the weights come out bit-identical to DeepSpeed's.

    Checkpoints have DeepSpeed's stage-0 layout: ``<dir>/<tag>/mp_rank_00_model_states.pt`` with
    the module's state under ``module``, the optimizer's under ``optimizer``, and the client state
    at the top level. So ``latest_checkpoint``, resume and pruning work unchanged, and a run can
    resume under the other engine.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_accum: int = 1,
                 grad_clip: float = 0.0):
        self.module, self.optimizer = module, optimizer
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.micro_steps = self.global_steps = 0
        self._grad_norm: torch.Tensor | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    forward = __call__

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def zero_optimization_stage(self) -> int:
        return 0

    def compile(self, **kwargs) -> None:
        # In place (``nn.Module.compile``), as DeepSpeed does: the module keeps its class and
        # state-dict names, so checkpoints and ``save_pretrained`` see the same model.
        self.module.compile(**kwargs)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        loss = loss / self.grad_accum
        loss.backward()
        return loss

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum == 0

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            # The pre-clipping norm stays a device tensor: the loop reads it once per step.
            self._grad_norm = _global_grad_norm(grads)
            if self.grad_clip > 0:
                # DeepSpeed's coefficient, tensor by tensor (a float over a tensor would be
                # computed as a reciprocal times the float, another rounding).
                coef = torch.tensor(float(self.grad_clip), device=self._grad_norm.device) / (self._grad_norm + 1e-6)
                torch._foreach_mul_(grads, torch.clamp(coef, max=1.0))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_steps += 1
        self.micro_steps += 1

    def get_global_grad_norm(self) -> torch.Tensor | None:
        """The last step's gradient norm before clipping (a 0-dim tensor), None before any step."""
        return self._grad_norm

    def _checkpoint_file(self, root: str | Path, tag: str) -> Path:
        return Path(root) / tag / "mp_rank_00_model_states.pt"

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict | None = None,
                        save_latest: bool = False, exclude_frozen_parameters: bool = False) -> None:
        # ``save_latest`` is accepted for DeepSpeed's signature; ``save_checkpoint`` below
        # writes the ``latest`` pointer itself, after the rename.
        module = self.module.state_dict()
        if exclude_frozen_parameters:
            # remove_duplicate=False: a frozen tied weight is in the state dict under both names.
            for name, p in self.module.named_parameters(remove_duplicate=False):
                if not p.requires_grad:
                    module.pop(name, None)
        state = {"module": module, "optimizer": self.optimizer.state_dict(), "lr_scheduler": None,
                 "global_steps": self.global_steps, "skipped_steps": 0, "dp_world_size": 1,
                 "mp_world_size": 1, **(client_state or {})}
        path = self._checkpoint_file(save_dir, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)

    def load_checkpoint(self, load_dir: str, tag: str, load_module_strict: bool = True,
                        load_optimizer_states: bool = True, load_lr_scheduler_states: bool = False):
        """``(path, client_state)`` as DeepSpeed returns them; ``(None, None)`` if there is no
        stage-0 checkpoint under ``tag``."""
        path = self._checkpoint_file(load_dir, tag)
        if not path.exists():
            return None, None
        state = safe_torch_load(path)
        if load_optimizer_states and state.get("optimizer") is None:
            raise RuntimeError(f"{path} holds no optimizer state: it was written by DeepSpeed ZeRO "
                               "(stage >= 1); resume it with engine='deepspeed' and the same zero_stage")
        result = self.module.load_state_dict(state["module"], strict=load_module_strict)
        trainable = {n for n, p in self.module.named_parameters(remove_duplicate=False) if p.requires_grad}
        missing = sorted(trainable & set(result.missing_keys))
        if missing:
            raise RuntimeError(f"{path} lacks trainable parameters {missing[:5]}")
        if load_optimizer_states:
            self.optimizer.load_state_dict(state["optimizer"])
        self.global_steps = int(state.get("global_steps", 0))
        return str(path), {k: v for k, v in state.items() if k not in _DEEPSPEED_CHECKPOINT_KEYS}


def resolve_engine(cfg: TrainConfig, world_size: int) -> str:
    """``plain`` or ``deepspeed`` for this config on ``world_size`` processes."""
    plain_ok = world_size == 1 and cfg.zero_stage == 0 and not cfg.deepspeed
    if cfg.engine == "plain" and not plain_ok:
        raise ValueError(
            "engine='plain' trains one process without ZeRO or extra DeepSpeed config; this run has "
            f"{world_size} process(es), zero_stage={cfg.zero_stage}"
            + (f", deepspeed={cfg.deepspeed}" if cfg.deepspeed else "")
            + ": use engine='deepspeed' (or 'auto')")
    name = cfg.engine if cfg.engine != "auto" else ("plain" if plain_ok else "deepspeed")
    if cfg.loss_chunk and name == "deepspeed" and cfg.zero_stage > 0:
        # The chunked loss calls the model's decoder and head directly; under ZeRO the engine's
        # own forward must run (it sets up the partitioned backward), and that forward returns
        # the full logits.
        raise ValueError("loss_chunk works with the plain engine and with DeepSpeed at zero_stage 0; "
                         f"this run uses DeepSpeed ZeRO stage {cfg.zero_stage}: set loss_chunk=0")
    return name


def build_engine(model: torch.nn.Module, cfg: TrainConfig, dist: Dist):
    """``(engine, name)``: the model (already on its device) wrapped in the engine ``cfg`` asks for."""
    name = resolve_engine(cfg, dist.world_size)
    if name == "plain":
        optimizer = make_optimizer(model, cfg, fused=dist.device.type == "cuda")
        return PlainEngine(model, optimizer, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip), name
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(model, cfg),
                                           config=deepspeed_config(cfg, dist.world_size))
    return engine, name


def _compile_enabled(cfg: TrainConfig, dist: Dist) -> bool:
    return cfg.compile if cfg.compile is not None else dist.device.type == "cuda"


def _compile(engine, cfg: TrainConfig) -> None:
    parts = causal_lm_parts(engine) if cfg.loss_chunk else None
    if parts is None:
        engine.compile()
    else:
        # The chunked loss calls the decoder directly, past the top module's forward, so the
        # decoder is what gets compiled (in place); the chunk kernel is compiled on first use.
        parts[0].compile()


# ---------------------------------------------------------------------------------------------
# checkpoints


def latest_checkpoint(out_dir: str | Path) -> str | None:
    """The tag of the newest complete checkpoint under ``out_dir/checkpoints``, if any."""
    latest = Path(out_dir) / "checkpoints" / "latest"
    if not latest.exists():
        return None
    tag = latest.read_text().strip()
    # An empty pointer (a crash before the write reached disk) must not name checkpoints/ itself.
    return tag if tag and (latest.parent / tag).is_dir() else None


def _metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a blank or torn (crashed mid-write) line."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


# The classes DeepSpeed stores in ZeRO optimizer states (its loss scaler, the stage as an int
# enum, a dataclass of two ints): data holders with no __setstate__ or __reduce__ of their own,
# so a weights-only load rebuilds them without running code of the file's choosing.
def _checkpoint_globals() -> list:
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpointError(LmforgeError):
    """A checkpoint file that only an unrestricted unpickler (which runs code) would read."""


def _refusal(path: str | Path, e: Exception) -> LmforgeError:
    why = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \S+", str(e))
    detail = f" (it needs {why.group(1) or why.group(0)})" if why else ""
    return UnsafeCheckpointError(f"refusing to load {path}: it is not a checkpoint of tensors and plain data"
                        f"{detail}, and loading it could run code; remove it (or its checkpoint "
                        "directory) to go on")


def safe_torch_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` that cannot run code: ``weights_only=True``, with DeepSpeed's few data-only
    classes allowed. A file that needs anything else is refused with a one-line error, and so is
    one that is not a torch file at all (torn by a crash, or garbage)."""
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise LmforgeError(f"cannot read checkpoint file {path}: {' '.join(str(e).split())[:200]}") from None


class _SafeLoads:
    """DeepSpeed's checkpoint engine with its ``load`` replaced by :func:`safe_torch_load`: every
    file DeepSpeed reads for a checkpoint goes through it (its own ``load`` unpickles anything)."""

    def __init__(self, inner):
        self._inner = inner

    def load(self, path, map_location=None):
        return safe_torch_load(path, map_location=map_location)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def check_checkpoint_files(tag_dir: Path) -> None:
    """Refuse a checkpoint directory holding any ``.pt`` file that a weights-only load rejects,
    before any of it is read for real. Memory-mapped, so only the small pickles are read."""
    for f in sorted(tag_dir.rglob("*.pt")):
        try:
            safe_torch_load(f, mmap=True)
        except UnsafeCheckpointError:
            raise
        except LmforgeError:
            safe_torch_load(f)  # not a zip file (no mmap): a full weights-only load decides


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rng_state(path: Path) -> None:
    """This process's RNG states as data: byte tensors in safetensors, Python's and NumPy's
    scalars as JSON in its metadata."""
    from safetensors.torch import save_file

    state = _rng_state()
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    tensors = {"torch": state["torch"], "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    if "cuda" in state:
        tensors["cuda"] = state["cuda"].cpu()
    version, internal, gauss_next = state["python"]
    meta = {"python": json.dumps([version, list(internal), gauss_next]),
            "numpy": json.dumps([kind, int(pos), int(has_gauss), float(gauss)])}
    save_file(tensors, str(path), metadata=meta)


def load_rng_state(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        version, internal, gauss_next = json.loads(meta["python"])
        kind, pos, has_gauss, gauss = json.loads(meta["numpy"])
        keys = tensors["numpy_keys"].numpy().astype(np.uint32)
        state = {"python": (int(version), tuple(int(x) for x in internal), gauss_next),
                 "numpy": (str(kind), keys, int(pos), int(has_gauss), float(gauss)),
                 "torch": tensors["torch"]}
        if "cuda" in tensors:
            state["cuda"] = tensors["cuda"]
        _set_rng_state(state)
    except Exception as e:  # noqa: BLE001 - any malformed file is the same one-line problem
        raise LmforgeError(f"cannot read the RNG state {path}: {' '.join(str(e).split())[:200]}") from None


def _has_frozen(engine) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def _write_failed(e: BaseException, where: Path) -> LmforgeError:
    """One line for a failed checkpoint write. torch and safetensors report a full disk as a
    RuntimeError ("file write failed"), so the free space is asked too (before the staging
    directory is removed and frees it)."""
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        full = full or "No space left" in str(e) or shutil.disk_usage(where).free < 1 << 20
    except OSError:
        pass
    if full:
        return OutputError(f"no space left on the device writing a checkpoint in {where}")
    return OutputError(f"could not write a checkpoint in {where}: {' '.join(str(e).split())[:200]}")


def _broadcast_name(name: str, dist: Dist) -> str:
    if dist.world_size == 1:
        return name
    box = [name]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def sweep_checkpoints(out_dir: Path) -> None:
    """Remove what saves that never finished left in ``checkpoints/``: staging directories of
    processes that are gone, and those of older versions (``.staging-*``), which nothing swept."""
    ckpt_dir = out_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return
    sweep_stale(ckpt_dir)
    for p in ckpt_dir.glob(".staging-*"):
        shutil.rmtree(p, ignore_errors=True)
    (ckpt_dir / ".latest.tmp").unlink(missing_ok=True)


def save_checkpoint(engine, out_dir: Path, step: int, client_state: dict, dist: Dist,
                    keep: int = 2) -> Path:
    ckpt_dir = out_dir / "checkpoints"
    tag = f"step_{step:08d}"
    # Named after rank 0's process, so a killed save is swept by the next run (``sweep_stale``).
    staging = ckpt_dir / _broadcast_name(f"{temp_name_prefix(tag)}staging.tmp", dist)
    try:
        if dist.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier(dist)
        # Frozen weights (a LoRA run's base model) are not saved: they are re-read from the base.
        engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=_has_frozen(engine))
        save_rng_state(staging / tag / f"rng_rank{dist.rank}.safetensors")
        barrier(dist)
        if dist.rank == 0:
            final = ckpt_dir / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / tag, final)
            shutil.rmtree(staging, ignore_errors=True)
            with atomic_path(ckpt_dir / "latest") as tmp:
                tmp.write_text(tag + "\n")
    except BaseException as e:
        error = _write_failed(e, ckpt_dir) if isinstance(e, Exception) and not isinstance(e, LmforgeError) else None
        if dist.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        if error is not None:
            raise error from e
        raise
    if dist.rank == 0:
        old = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    barrier(dist)
    return ckpt_dir / tag


def load_checkpoint(engine, out_dir: Path, tag: str, dist: Dist) -> dict:
    ckpt_dir = out_dir / "checkpoints"
    check_checkpoint_files(ckpt_dir / tag)
    if hasattr(engine, "checkpoint_engine") and not isinstance(engine.checkpoint_engine, _SafeLoads):
        engine.checkpoint_engine = _SafeLoads(engine.checkpoint_engine)
    # Optimizer.load_state_dict takes every group setting from the checkpoint, ``fused`` and
    # ``foreach`` too: keep the ones this run built (a run resumed under the other engine).
    kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in engine.optimizer.param_groups]
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False,
                                                load_module_strict=not _has_frozen(engine))
    if path is None:
        raise LmforgeError(f"could not load checkpoint {ckpt_dir / tag}")
    for group, kept in zip(engine.optimizer.param_groups, kernels):
        group.update(kept)
    rng = ckpt_dir / tag / f"rng_rank{dist.rank}.safetensors"
    if rng.exists():  # absent when resuming on more ranks than saved: data order is still exact
        load_rng_state(rng)
    return client_state or {}


# ---------------------------------------------------------------------------------------------
# what a run directory was trained from

# Settings that change how a run goes, not what it computes: a checkpoint stays valid across them.
_RESUMABLE_ACROSS = frozenset({
    "save_every", "keep_checkpoints", "log_every", "eval_every", "nproc", "launcher", "hostfile",
    "cpu_threads", "engine", "compile", "attention_backend", "loss_chunk", "peak_flops", "device"})


def run_fingerprint(config_record: dict | None, inputs: Iterable[str | Path]) -> dict:
    """What a run directory's checkpoints were trained from: the config (less the settings in
    ``_RESUMABLE_ACROSS``) and the size and modification time of every input file. Stages write
    their outputs atomically (new files), so a re-materialized input changes it."""
    files = []
    for root in inputs:
        root = Path(root)
        for f in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
            st = f.stat()
            files.append([str(f), st.st_size, st.st_mtime_ns])
    config = {k: v for k, v in (config_record or {}).items() if k not in _RESUMABLE_ACROSS}
    return json.loads(json.dumps({"config": config, "inputs": files}, default=str))


def _start_fresh_if_changed(out_dir: Path, fingerprint: dict, config_record: dict | None, dist: Dist,
                            telemetry: Telemetry) -> None:
    """Resume only checkpoints trained from the same config and inputs. Otherwise (new data, a
    new base model, another learning rate) the run directory's checkpoints and logs are cleared,
    so materializing again after an upstream change trains again instead of re-exporting the
    old weights; checkpoints without a fingerprint count as changed.

    The fingerprint and config of the run in progress live in ``checkpoints/``, beside the state
    they describe: the previous run's ``model/`` keeps its own, so a run killed before its export
    leaves that model as it was, with the record of what it was trained from."""
    ckpt_dir = out_dir / "checkpoints"
    path = ckpt_dir / "run_fingerprint.json"
    tag = latest_checkpoint(out_dir)
    try:
        same = path.exists() and json.loads(path.read_text()) == fingerprint
    except (json.JSONDecodeError, UnicodeDecodeError):
        same = False
    barrier(dist)  # every rank has decided before rank 0 changes anything
    if tag is not None and not same:
        telemetry.log(f"the config or the inputs changed since checkpoint {tag}: training from scratch")
    if dist.rank == 0:
        sweep_checkpoints(out_dir)
        if not same:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
            ckpt_dir.mkdir(parents=True)
            if config_record is not None:
                write_json(ckpt_dir / "train_config.json", config_record)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(fingerprint, indent=1) + "\n")
    barrier(dist)


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    steps: int
    first_loss: float | None
    final_loss: float | None
    final_val_loss: float | None
    tokens: int
    tokens_per_s: float
    mfu: float
    wall_s: float
    resumed_from: int | None
    params: int
    trainable_params: int
    engine_name: str
    engine: Any = field(default=None, repr=False)
    # What the trained weights come from, to be exported with them (``save_hf_model(records=)``).
    records: dict = field(default_factory=dict, repr=False)

    def to_metadata(self) -> dict:
        meta = {k: v for k, v in self.__dict__.items() if k not in ("engine", "engine_name", "records")}
        return {**meta, "engine": self.engine_name}


def _uses_bf16(cfg: TrainConfig, dist: Dist) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and dist.device.type == "cuda")


def _autocast(cfg: TrainConfig, dist: Dist):
    """bf16 autocast over fp32 master weights (or nothing): matmuls in bf16, the optimizer and
    the weights in fp32."""
    if not _uses_bf16(cfg, dist):
        return nullcontext()
    return torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def input_tokens(batch: Batch) -> int:
    """Non-padding input positions of a micro-batch, for token counts and throughput. A packed
    batch (see ``packing.py``) says so in ``num_tokens``: its 4D attention mask marks no padding."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()


def forward_nll(model, batch: Batch, loss_chunk: int = 0, compiled: bool = False) -> torch.Tensor:
    """Summed NLL of ``batch['targets']`` (already shifted; -100 = not trained). ``position_ids``
    and a 4D ``attention_mask`` are passed through when present (packed SFT rows).

    ``loss_chunk > 0`` runs the decoder for the final hidden states and the output projection +
    cross-entropy ``loss_chunk`` tokens at a time (``model.linear_cross_entropy``), where the model
    splits that way (``causal_lm_parts``: Llama, Mistral, Qwen2/3, plain or LoRA-wrapped); other
    models take the standard path. ``compiled``: torch.compile the chunk kernel.
    """
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                  position_ids=batch.get("position_ids"), use_cache=False)
    parts = causal_lm_parts(model) if loss_chunk else None
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state
        return linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight,
                                    batch["targets"].reshape(-1), loss_chunk, compiled=compiled)
    logits = model(**inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["targets"].reshape(-1),
                           ignore_index=-100, reduction="sum")


def _targets(batch: Batch) -> int:
    return int((batch["targets"] != -100).sum())


def evaluate(engine, eval_batches: Iterable[Batch], cfg: TrainConfig, dist: Dist) -> float | None:
    engine.eval()
    nll = torch.zeros((), dtype=torch.float64, device=dist.device)
    n = 0
    with torch.no_grad(), _autocast(cfg, dist), attention_context(cfg.attention_backend):
        for batch in eval_batches:
            n += _targets(batch)  # on the host, before the copy: no wait for the device
            batch = _to(batch, dist.device)
            nll += forward_nll(engine, batch, cfg.loss_chunk, _compile_enabled(cfg, dist))
    engine.train()
    nll, n = _all_reduce_sum([nll, n], dist)
    return nll / n if n else None


def train(model: torch.nn.Module, cfg: TrainConfig, out_dir: str | Path, *,
          batch_fn: Callable[[int, int, int, int], Batch],
          eval_fn: Callable[[int, int], Iterable[Batch]] | None,
          dist: Dist, telemetry: Telemetry, flops_per_token: float = 0.0,
          config_record: dict | None = None, inputs: Iterable[str | Path] = ()) -> TrainResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps, resuming from ``out_dir`` if it holds
    a checkpoint.

    ``batch_fn(step, micro, rank, world_size)`` returns one micro-batch (``input_ids``,
    ``targets``, optionally ``attention_mask``, ``position_ids`` and ``num_tokens``);
    ``eval_fn(rank, world_size)`` yields the val batches. Rank 0 writes ``metrics.jsonl`` and
    TensorBoard logs under ``out_dir``. ``inputs`` are the files the run trains from: with
    ``config_record`` they decide whether a checkpoint in ``out_dir`` is resumed
    (``run_fingerprint``).
    """
    resolve_engine(cfg, dist.world_size)  # a bad combination fails before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    if not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit (QLoRA) base is placed at load
        model.to(dist.device)
    n_params, n_trainable = count_params(model), count_params(model, trainable_only=True)
    train_dtype = torch.bfloat16 if _uses_bf16(cfg, dist) else torch.float32
    if cfg.attention_backend != "auto":
        # Padded or packed rows (SFT) reach SDPA with a mask and repeated KV heads, unmasked ones
        # (pretraining) without: probe the way this run's batches will call it.
        masked = batch_fn(0, 0, dist.rank, dist.world_size).get("attention_mask") is not None
        check_attention_backend(cfg.attention_backend, model, dist.device, train_dtype, masked=masked)
    engine, engine_name = build_engine(model, cfg, dist)
    compile_ = _compile_enabled(cfg, dist)
    if compile_:
        _compile(engine, cfg)
    telemetry.log(f"engine {engine_name}" + (f", ZeRO {cfg.zero_stage}" if engine_name == "deepspeed" else "")
                  + f", attention {cfg.attention_backend}"
                  + (f", loss in chunks of {cfg.loss_chunk} tokens" if cfg.loss_chunk else "")
                  + (", torch.compile" if compile_ else ""))

    fingerprint = run_fingerprint(config_record, inputs)
    _start_fresh_if_changed(out_dir, fingerprint, config_record, dist, telemetry)
    start, tokens, first_loss, elapsed, resumed_from = 0, 0, None, 0.0, None
    saved_loss = saved_val_loss = None
    tag = latest_checkpoint(out_dir)
    if tag is not None:
        state = load_checkpoint(engine, out_dir, tag, dist)
        start = resumed_from = int(state["step"])
        tokens, first_loss, elapsed = int(state["tokens"]), state.get("first_loss"), float(state.get("elapsed", 0.0))
        saved_loss, saved_val_loss = state.get("loss"), state.get("val_loss")
        telemetry.log(f"resumed from {tag} (step {start}, {tokens:,} tokens)")

    writer = None
    metrics_path = out_dir / "metrics.jsonl"
    if dist.rank == 0:
        # A crash after the last checkpoint leaves lines for steps that will be re-run, and maybe
        # a last line cut off mid-write; rewrite the file atomically without either.
        if metrics_path.exists():
            kept = [line for line in metrics_path.read_text().splitlines()
                    if (line_step := _metrics_step(line)) is not None and line_step <= start]
            with atomic_path(metrics_path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        elif start == 0:
            metrics_path.write_text("")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log_metrics(record: dict) -> None:
        if dist.rank != 0:
            return
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and v is not None:
                writer.add_scalar(k, v, record["step"])

    def client_state(step: int) -> dict:
        return {"step": step, "tokens": tokens, "first_loss": first_loss, "elapsed": elapsed,
                "loss": loss, "val_loss": val_loss}

    loss, val_loss = saved_loss, saved_val_loss
    window_tokens, window_t0 = 0, time.perf_counter()
    engine.train()
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        batches = [batch_fn(step, m, dist.rank, dist.world_size) for m in range(cfg.grad_accum)]
        # Counted on the host before the copy: counting device tensors would wait for the device.
        n_local = sum(_targets(b) for b in batches)
        in_local = sum(input_tokens(b) for b in batches)
        batches = [_to(b, dist.device) for b in batches]
        n_targets, n_inputs = _all_reduce_sum([n_local, in_local], dist)
        # Both engines divide each micro-batch's loss by grad_accum and average gradients over
        # ranks; scaling by (grad_accum * world / n_targets) makes the step's gradient that of
        # the mean NLL over all of the step's target tokens.
        scale = cfg.grad_accum * dist.world_size / max(1.0, n_targets)
        # The step's NLL is summed on the device (in float64, so the sum is the one a Python
        # float would give) and read once per step: reading it after every micro-batch would make
        # the host wait for the GPU instead of queueing the next micro-batch's kernels.
        nll_sum, grad_norm = torch.zeros((), dtype=torch.float64, device=dist.device), None
        for m, batch in enumerate(batches):
            with attention_context(cfg.attention_backend):
                with _autocast(cfg, dist):
                    nll = forward_nll(engine, batch, cfg.loss_chunk, compile_)
                engine.backward(nll * scale)
            if m == len(batches) - 1 and engine_name == "deepspeed" and engine.zero_optimization_stage() == 0:
                # ZeRO reports the pre-clipping norm itself; without ZeRO DeepSpeed clips
                # but discards the norm, so take it here (gradients are all-reduced by now).
                grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            engine.step()
            nll_sum += nll.detach()
        if grad_norm is None:
            grad_norm = engine.get_global_grad_norm()
        (nll_total,) = _all_reduce_sum([nll_sum], dist)  # the step's one wait for the device
        grad_norm = None if grad_norm is None else float(grad_norm)
        loss = nll_total / max(1.0, n_targets)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step + 1}")
        if first_loss is None:
            first_loss = loss
        dt = time.perf_counter() - t0
        tokens += int(n_inputs)
        elapsed += dt
        window_tokens += int(n_inputs)
        done = step + 1

        if done % cfg.log_every == 0 or done == cfg.max_steps or done == start + 1:
            now = time.perf_counter()
            tps = window_tokens / max(1e-9, now - window_t0)
            step_mfu = tps * flops_per_token / (cfg.peak_flops * dist.world_size)
            log_metrics({"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                         "tokens": tokens, "tokens_per_s": tps, "mfu": step_mfu})
            telemetry.log(f"step {done}/{cfg.max_steps} loss {loss:.4f} lr {lr:.2e} "
                          f"grad_norm {grad_norm if grad_norm is None else round(grad_norm, 3)} "
                          f"tokens/s {tps:,.0f} MFU {100 * step_mfu:.3f}%")
            window_tokens, window_t0 = 0, time.perf_counter()

        last = done == cfg.max_steps
        if eval_fn is not None and cfg.eval_batches and ((cfg.eval_every and done % cfg.eval_every == 0) or last):
            val_loss = evaluate(engine, eval_fn(dist.rank, dist.world_size), cfg, dist)
            if val_loss is not None:
                log_metrics({"step": done, "val_loss": val_loss})
                telemetry.log(f"step {done} val_loss {val_loss:.4f}")
            window_t0 = time.perf_counter()
        if (cfg.save_every and done % cfg.save_every == 0) or last:
            save_checkpoint(engine, out_dir, done, client_state(done), dist, keep=cfg.keep_checkpoints)
            window_t0 = time.perf_counter()

    if writer is not None:
        writer.close()
    if start >= cfg.max_steps:
        telemetry.log(f"checkpoint is already at step {start} >= max_steps {cfg.max_steps}; nothing to train")
    tps = tokens / elapsed if elapsed > 0 else 0.0
    return TrainResult(
        steps=max(cfg.max_steps, start), first_loss=first_loss,
        final_loss=loss, final_val_loss=val_loss, tokens=tokens, tokens_per_s=tps,
        mfu=tps * flops_per_token / (cfg.peak_flops * dist.world_size), wall_s=elapsed,
        resumed_from=resumed_from, params=n_params, trainable_params=n_trainable, engine_name=engine_name,
        engine=engine, records={"run_fingerprint.json": fingerprint,
                                **({"train_config.json": config_record} if config_record is not None else {})})


def report_run(out_dir: Path, stats: dict, dist: Dist, telemetry: Telemetry, title: str) -> None:
    """The end of a run: rank 0 writes ``summary.json`` and ``loss_curve.png``; the figures and
    the curve go to ``telemetry`` (the materialization's metadata under Dagster)."""
    curve = {}
    if dist.rank == 0:
        write_json(out_dir / "summary.json", dict(stats))
        curve = loss_curve_metadata(out_dir, title=title)
    telemetry.report({**stats, **curve})


def gathered_module(engine):
    """A context in which every rank sees full parameters (ZeRO-3 gathers them; a no-op below,
    and for the plain engine)."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    return nullcontext()


def save_hf_model(engine, out: Path, dist: Dist, tokenizer_dir: str | Path | None = None,
                  records: dict[str, Any] | None = None, **save_kwargs) -> None:
    """Rank 0 writes ``engine.module`` with ``save_pretrained`` (plus the tokenizer's files and
    ``records``, JSON files such as ``TrainResult.records``: what the weights were trained from)
    to ``out`` and commits it by one rename, so the weights and their records change together;
    every rank must call this (ZeRO-3 gathers collectively)."""
    with gathered_module(engine):
        if dist.rank == 0:
            with atomic_path(out, "dir") as tmp:
                engine.module.save_pretrained(str(tmp), **save_kwargs)
                if tokenizer_dir is not None:
                    copy_tokenizer_files(tokenizer_dir, tmp)
                for name, obj in (records or {}).items():
                    (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    barrier(dist)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    found = False
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
            found = True
    if not found:
        raise FileNotFoundError(f"no tokenizer files in {src}")
