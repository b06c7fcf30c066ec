"""Checkpoints, and what a run directory was trained from.

A checkpoint is a DeepSpeed checkpoint (model, optimizer and ZeRO partitions; the plain engine
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
scratch.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from _pickle import UnpicklingError  # what weights_only=True raises for a refused global
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch

from lmforge.errors import LmforgeError, OutputError
from lmforge.io import atomic_path, sweep_stale, temp_name_prefix, write_json
from lmforge.train.distributed import Dist, barrier, broadcast_name

if TYPE_CHECKING:
    from lmforge.train.telemetry import Telemetry


def latest_checkpoint(out_dir: str | Path) -> str | None:
    """The tag of the newest complete checkpoint under ``out_dir/checkpoints``, if any."""
    latest = Path(out_dir) / "checkpoints" / "latest"
    if not latest.exists():
        return None
    tag = latest.read_text().strip()
    # An empty pointer (a crash before the write reached disk) must not name checkpoints/ itself.
    return tag if tag and (latest.parent / tag).is_dir() else None


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
    except UnpicklingError as e:
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
    staging = ckpt_dir / broadcast_name(f"{temp_name_prefix(tag)}staging.tmp", dist)
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


def start_fresh_if_changed(out_dir: Path, fingerprint: dict, config_record: dict | None, dist: Dist,
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

