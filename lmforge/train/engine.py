"""What the loop drives: the learning-rate schedule, the optimizer, and the two engines.

The loop calls an *engine* through a few methods (``engine(...)``, ``engine.backward``,
``engine.step``, checkpoint save/load), and two engines implement them:

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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lmforge.train.checkpoint import safe_torch_load
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import Dist
from lmforge.train.model import causal_lm_parts

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


def compile_enabled(cfg: TrainConfig, dist: Dist) -> bool:
    return cfg.compile if cfg.compile is not None else dist.device.type == "cuda"


def compile_engine(engine, cfg: TrainConfig) -> None:
    parts = causal_lm_parts(engine) if cfg.loss_chunk else None
    if parts is None:
        engine.compile()
    else:
        # The chunked loss calls the decoder directly, past the top module's forward, so the
        # decoder is what gets compiled (in place); the chunk kernel is compiled on first use.
        parts[0].compile()

