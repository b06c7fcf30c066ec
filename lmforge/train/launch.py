"""The command lines that start a training process: one process, torchrun, or the DeepSpeed launcher.

The Dagster asset hands this argv to ``PipesSubprocessClient``; the CLI's ``--nproc N`` runs it
itself. Every training module accepts ``--config PATH`` (a JSON dump of its config class), so the
launched processes read exactly the configuration the caller wrote.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

LAUNCHERS = ("python", "torchrun", "deepspeed")


def command(module: str, config_path: str | os.PathLike, nproc: int = 1,
            launcher: str = "torchrun", hostfile: str | None = None) -> list[str]:
    """argv that runs ``python -m module --config config_path`` on ``nproc`` processes.

    ``python`` is a single process (``nproc`` must be 1); ``torchrun`` starts ``nproc`` local
    ranks on a loopback rendezvous; ``deepspeed`` uses DeepSpeed's launcher (which also reads a
    hostfile for multi-node runs).
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; choose one of {LAUNCHERS}")
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if hostfile and launcher != "deepspeed":
        raise ValueError("a hostfile (several nodes) needs the deepspeed launcher")
    script = ["-m", module, "--config", str(config_path)]
    if launcher == "python":
        if nproc != 1:
            raise ValueError("the python launcher runs one process; use torchrun or deepspeed for nproc > 1")
        return [sys.executable, *script]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", *script]
    # The DeepSpeed launcher would append --local_rank to our argv; the env var is enough.
    nodes = [f"--hostfile={hostfile}"] if hostfile else []
    return [sys.executable, "-m", "deepspeed.launcher.runner", *nodes, f"--num_gpus={nproc}",
            "--no_local_rank", "--module", module, "--config", str(config_path)]


def in_launched_process() -> bool:
    """True inside a rank started by torchrun / deepspeed (they set WORLD_SIZE and MASTER_ADDR)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def relaunch(module: str, config_json: str, out_dir: str | os.PathLike, nproc: int,
             launcher: str = "torchrun") -> int:
    """Write the config beside the run and start ``nproc`` processes on it; returns their exit code."""
    from lmforge.errors import LmforgeError
    from lmforge.io import atomic_path, claim_output_dir

    if not str(out_dir):
        raise LmforgeError("out_dir is required")
    out_dir = claim_output_dir(out_dir)
    path = out_dir / "launch_config.json"
    with atomic_path(path) as tmp:
        tmp.write_text(config_json)
    argv = command(module, path, nproc, launcher)
    print(f"[lmforge] launching: {' '.join(argv)}", file=sys.stderr, flush=True)
    return subprocess.call(argv)


def read_config(cls, value: str | None, overrides: dict):
    """A config of class ``cls`` from ``--config`` (a JSON file or an inline JSON object), with the
    command line's explicit flags (``overrides``, None = not given) applied on top."""
    import json

    data: dict = {}
    if value:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("--config must hold a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return cls.model_validate(data)


def run_cli(module: str, config_cls, fn, parser: argparse.ArgumentParser, argv) -> int:
    """Shared by pretrain / sft / lora: parse, validate, re-launch for --nproc > 1, or run here."""
    from lmforge.errors import LmforgeError

    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "nproc", "launcher")}
    try:
        cfg = config_cls.model_validate(read_config(config_cls, args.config, overrides).model_dump())
    except Exception as e:  # noqa: BLE001 - one line for any bad input, not a traceback
        print(f"{parser.prog}: error: {' '.join(str(e).split())[:400]}", file=sys.stderr)
        return 2
    try:
        if args.nproc > 1 and not in_launched_process():
            return relaunch(module, cfg.model_dump_json(), cfg.out_dir, args.nproc, args.launcher)
        fn(cfg)
    except (LmforgeError, FileNotFoundError, ValueError) as e:
        print(f"{parser.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0
