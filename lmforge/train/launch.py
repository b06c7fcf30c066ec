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


def training_parser(prog: str, description: str | None, config_cls,
                    aliases: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of a training command: one flag per field of ``config_cls`` (help = its
    description and default), ``aliases`` (short flags for the paths: ``--data`` -> ``data``),
    ``--config FILE`` and the process flags ``--nproc`` / ``--launcher``."""
    from lmforge.config import add_config_arguments

    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, field in aliases.items():
        info = config_cls.model_fields[field]
        p.add_argument(flag, dest=field, default=None, help=info.description)
    add_config_arguments(p, config_cls, exclude=set(aliases.values()))
    p.add_argument("--nproc", type=int, default=1,
                   help="processes (ranks); > 1 re-launches under --launcher")
    p.add_argument("--launcher", choices=LAUNCHERS, default="torchrun", help="for --nproc > 1")
    return p


ERROR_FILE_ENV = "LMFORGE_ERROR_FILE"


def report_error(line: str) -> None:
    """Also write a process's one-line error to ``$LMFORGE_ERROR_FILE`` when its launcher set it
    (the Dagster launcher shows it as the step's failure, not only in the process's stderr)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            with open(path, "a") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError:
            pass


def run_cli(module: str, config_cls, fn, parser: argparse.ArgumentParser, argv) -> int:
    """Shared by pretrain / sft / lora: parse, validate, re-launch for --nproc > 1, or run here.
    A bad flag, config file or input is one line and exit status 2 (``lmforge.cli.run``)."""
    from lmforge.config import config_from_args
    from lmforge.errors import LmforgeError

    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(config_cls, args)
        if args.nproc > 1 and not in_launched_process():
            return relaunch(module, cfg.model_dump_json(), cfg.out_dir, args.nproc, args.launcher)
        fn(cfg)
    except (LmforgeError, FileNotFoundError, ValueError) as e:
        line = f"{parser.prog}: error: {' '.join(str(e).split())}"
        print(line, file=sys.stderr)
        report_error(line)
        return 2
    return 0