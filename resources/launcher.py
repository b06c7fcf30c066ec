"""How training processes are started: a local process, torchrun, or the deepspeed launcher.

Training never runs inside the Dagster process: the launcher starts the engine's module
(``python -m lmforge.train.pretrain --config ...``) through Dagster Pipes, which streams the
process's progress lines into the run's logs and its final figures into the materialization.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field

from lmforge.io import write_json
from lmforge.train import launch


class TrainingLauncher(dg.ConfigurableResource):
    launcher: Literal["python", "torchrun", "deepspeed"] = Field(
        default="python",
        description="python: one process; torchrun / deepspeed: one process per device.",
    )
    nproc: int = Field(default=1, description="Processes per node (GPUs per node).")
    hostfile: Optional[str] = Field(
        default=None, description="deepspeed launcher hostfile for several nodes."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the training processes."
    )

    def run(self, context: dg.AssetExecutionContext, module: str, config: dict[str, Any],
            config_path: Path) -> dg.MaterializeResult:
        """Write ``config`` beside ``config_path`` under this run's id, start ``module`` on it,
        return its result. Each run has its own config file (removed when the process ends; the
        config travels in the run's Pipes extras and the engine keeps it with its outputs), so a
        failed or concurrent run never leaves a config that does not describe the model beside it."""
        run_config = Path(config_path).with_name(
            f"{Path(config_path).stem}.{context.run_id[:8]}.json")
        write_json(run_config, config)
        errors = run_config.with_suffix(".errors")
        errors.unlink(missing_ok=True)
        try:
            command = launch.command(module, str(run_config), nproc=self.nproc,
                                     launcher=self.launcher, hostfile=self.hostfile)
            context.log.info("launching: %s", " ".join(command))
            env = {"HF_HUB_OFFLINE": "1", **os.environ, **self.env}
            if not self.hostfile:  # every process on this machine: it ends when this step does
                env["LMFORGE_LAUNCHER_PID"] = str(os.getpid())
            env["LMFORGE_ERROR_FILE"] = str(errors)
            client = dg.PipesSubprocessClient()
            try:
                invocation = client.run(context=context, command=command, env=env,
                                        extras={"config": json.loads(json.dumps(config, default=str))})
            except DagsterPipesExecutionError as e:
                said = errors.read_text().strip().splitlines() if errors.exists() else []
                if said:  # the process's own one-line error, not only "failed with code 2"
                    raise dg.Failure(description=said[-1]) from e
                raise
            return invocation.get_materialize_result()
        finally:
            run_config.unlink(missing_ok=True)
            errors.unlink(missing_ok=True)
