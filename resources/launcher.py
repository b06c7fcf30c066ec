"""How training processes are started: one process, torchrun agents, DeepSpeed's runner over ssh,
a Slurm job, or a Kubernetes indexed Job.

Training never runs inside the Dagster process: the launcher starts the engine's module
(``python -m lmforge.train.pretrain --config ...``) in a Dagster Pipes session that works from any
node. The context travels in the environment (``DAGSTER_PIPES_CONTEXT``), and the messages come
back through a file beside the run's config on the shared artifact store, which rank 0 writes
wherever it runs: its progress lines go to the run's logs, its final figures to the
materialization. Every rank gets the same environment: the Pipes variables, ``HF_HUB_OFFLINE``,
``LMFORGE_ERROR_FILE`` and ``env`` (through ``.deepspeed_env`` for DeepSpeed's runner, which
exports only a few variables of its own over pdsh). When the step is interrupted, every process
it started is ended (or the cluster job cancelled).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field

from lmforge.errors import LmforgeError
from lmforge.io import atomic_path, write_json
from lmforge.train import launch
from lmforge.train.telemetry import WATCH_PID_ENV


class TrainingLauncher(dg.ConfigurableResource):
    launcher: Literal["python", "torchrun", "deepspeed", "slurm", "k8s"] = Field(
        default="python",
        description="python: one process; torchrun: nnodes agents on this machine with a c10d "
        "rendezvous; deepspeed: DeepSpeed's runner (over ssh/pdsh with a hostfile); slurm: one "
        "batch job, a torchrun agent per node; k8s: an indexed Job, a torchrun agent per pod.",
    )
    nproc: int = Field(default=1, ge=1, description="Processes per node (GPUs per node).")
    nnodes: int = Field(default=1, ge=1, description="Nodes (torchrun agents). deepspeed takes its "
                        "nodes from the hostfile (nnodes > 1: the first nnodes hosts).")
    rdzv_endpoint: Optional[str] = Field(
        default=None, description="host:port of the c10d rendezvous (torchrun) or the master "
        "(deepspeed). Default: 127.0.0.1 and a free port on this machine; the hostfile's first "
        "host, port 29500, for deepspeed; the job's first node, port 29400 (or this one's port), "
        "for slurm and k8s.")
    rdzv_id: Optional[str] = Field(default=None, description="Rendezvous id; default: the Dagster run id.")
    hostfile: Optional[str] = Field(
        default=None, description="deepspeed: DeepSpeed hostfile (`host slots=N`) for several nodes.")
    ssh_args: list[str] = Field(
        default_factory=list, description="deepspeed with a hostfile: extra ssh options for pdsh "
        "(PDSH_SSH_ARGS_APPEND), e.g. ['-p', '2222', '-i', '/path/key'].")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for every training process.")
    terminate_timeout_s: float = Field(
        default=20.0, description="On interruption: how long processes get to end after SIGTERM "
        "before SIGKILL.")
    slurm_partition: Optional[str] = Field(default=None, description="slurm: the partition.")
    slurm_time_limit: Optional[str] = Field(default=None, description="slurm: --time, e.g. 04:00:00.")
    slurm_args: list[str] = Field(default_factory=list,
                                  description="slurm: further sbatch options, e.g. ['--gres=gpu:8'].")
    k8s_image: Optional[str] = Field(default=None, description="k8s: the container image (with lmforge).")
    k8s_namespace: str = Field(default="default", description="k8s: the namespace.")
    k8s_gpus_per_node: int = Field(default=0, ge=0, description="k8s: nvidia.com/gpu per pod.")
    k8s_cpu: Optional[str] = Field(default=None, description="k8s: CPU request per pod, e.g. '32'.")
    k8s_memory: Optional[str] = Field(default=None, description="k8s: memory per pod, e.g. '512Gi'.")
    k8s_service_account: Optional[str] = Field(default=None, description="k8s: the pods' service account.")
    k8s_python: str = Field(default="python", description="k8s: the Python interpreter in the image "
                            "(the argv's first word; this machine's own path means nothing in a pod).")
    k8s_volumes: dict[str, str] = Field(
        default_factory=dict, description="k8s: mount path -> PersistentVolumeClaim. The artifact "
        "store must be mounted where this step sees it: the pods read the run's config and write "
        "its Pipes messages there.")

    def run(self, context: dg.AssetExecutionContext, module: str, config: dict[str, Any],
            config_path: Path) -> dg.MaterializeResult:
        """Write ``config`` beside ``config_path`` under this run's id, start ``module`` on it,
        return its result. Each run has its own config file (removed when the processes end; the
        config travels in the run's Pipes extras and the engine keeps it with its outputs), so a
        failed or concurrent run never leaves a config that does not describe the model beside it.
        The run's other files (errors, Pipes messages, DeepSpeed's environment, the cluster job's
        log) sit beside it, on the store every node sees."""
        run_config = Path(config_path).with_name(
            f"{Path(config_path).stem}.{context.run.run_id[:8]}.json")
        side = {name: run_config.with_name(f"{run_config.stem}.{name}")
                for name in ("errors", "messages.jsonl", "deepspeed_env", "log")}
        errors = side["errors"]
        errors.unlink(missing_ok=True)
        write_json(run_config, config)
        try:
            with dg.open_pipes_session(
                    context=context, extras={"config": json.loads(json.dumps(config, default=str))},
                    context_injector=dg.PipesEnvContextInjector(),
                    message_reader=dg.PipesFileMessageReader(str(side["messages.jsonl"]))) as session:
                ranks_env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **self.env,
                             launch.ERROR_FILE_ENV: str(errors), **session.get_bootstrap_env_vars()}
                job = self._start(context, module, run_config, ranks_env, side)
                code = self._wait(context, job)
            if code != 0:
                said = errors.read_text().strip().splitlines() if errors.exists() else []
                if said:  # the process's own one-line error, not only "failed with code 2"
                    raise dg.Failure(description=said[-1])
                raise DagsterPipesExecutionError(f"External execution process failed with code {code}")
            return dg.PipesClientCompletedInvocation(session).get_materialize_result()
        finally:
            for path in (run_config, errors, side["deepspeed_env"]):
                path.unlink(missing_ok=True)

    def commands(self, module: str, run_config: Path, run_id: str) -> list[list[str]]:
        """The argv of each process this step starts on this machine, or (slurm, k8s) the one
        argv every node of the cluster job runs: a torchrun agent that meets the others at the
        rendezvous on the job's first node (``$MASTER_ADDR``, which the job sets on every node)."""
        rdzv_id = self.rdzv_id or run_id
        try:
            if self.launcher in ("slurm", "k8s"):
                port = (launch.parse_endpoint(self.rdzv_endpoint)[1] if self.rdzv_endpoint
                        else launch.RDZV_PORT)
                return [launch.command(module, run_config, self.nproc, "torchrun", self.hostfile,
                                       nnodes=self.nnodes, rdzv_endpoint=f"$MASTER_ADDR:{port}",
                                       rdzv_id=rdzv_id)]
            if self.launcher == "deepspeed" and self.hostfile:
                endpoint = self.rdzv_endpoint or f"{launch.hostfile_hosts(self.hostfile)[0]}:{launch.DEEPSPEED_PORT}"
                return [launch.command(module, run_config, self.nproc, "deepspeed", self.hostfile,
                                       nnodes=self.nnodes, rdzv_endpoint=endpoint)]
            endpoint = self.rdzv_endpoint
            if self.launcher == "torchrun" and self.nnodes > 1 and not endpoint:
                endpoint = f"127.0.0.1:{launch.free_port()}"
            argv = launch.command(module, run_config, self.nproc, self.launcher, self.hostfile,
                                  nnodes=self.nnodes, rdzv_endpoint=endpoint, rdzv_id=rdzv_id)
        except ValueError as e:
            raise LmforgeError(f"launcher: {e}") from None
        # torchrun: this step starts all nnodes agents here (one machine split into several
        # nodes, or a test); across machines, slurm and k8s start one agent per node.
        return [argv] * (self.nnodes if self.launcher == "torchrun" else 1)

    def local_env(self, ranks_env: dict[str, str], deepspeed_env: Path) -> dict[str, str]:
        """The environment of the processes this step starts on this machine. Ranks started by
        DeepSpeed's runner over ssh get ``ranks_env`` through ``deepspeed_env`` (written here);
        every other process is on this machine and ends when this step's process does."""
        env = {**os.environ, **ranks_env}
        if self.launcher == "deepspeed" and self.hostfile:
            if any(not a or any(c.isspace() for c in a) for a in self.ssh_args):
                raise LmforgeError("launcher: an ssh_args item is empty or holds a space (pdsh "
                                   "splits PDSH_SSH_ARGS_APPEND at spaces)")
            try:
                text = launch.deepspeed_env_text(ranks_env)
            except ValueError as e:
                raise LmforgeError(f"launcher: {e}") from None
            with atomic_path(deepspeed_env) as tmp:
                tmp.touch(0o600)  # it holds the run's context (and whatever `env` holds)
                tmp.write_text(text)
            # DeepSpeed's runner reads the file named by DS_ENV_FILE in its working directory and
            # in the home directory; an absolute name is this run's file in both places.
            env["DS_ENV_FILE"] = str(deepspeed_env.resolve())
            if self.ssh_args:
                env["PDSH_SSH_ARGS_APPEND"] = " ".join(self.ssh_args)
        else:
            env[WATCH_PID_ENV] = str(os.getpid())
        return env

    def _start(self, context: dg.AssetExecutionContext, module: str, run_config: Path,
               ranks_env: dict[str, str], side: dict[str, Path]):
        """The started job: a :class:`launch.LocalJob`, or a Slurm or Kubernetes job."""
        run_id = context.run.run_id
        argvs = self.commands(module, run_config, run_id)
        if self.launcher == "slurm":
            from lmforge.train import slurm

            job = slurm.submit(argvs[0], ranks_env, nodes=self.nnodes, ntasks_per_node=self.nproc,
                               workdir=run_config.parent, log_path=side["log"],
                               partition=self.slurm_partition, time_limit=self.slurm_time_limit,
                               extra=self.slurm_args)
        elif self.launcher == "k8s":
            from lmforge.train import k8s

            if not self.k8s_image:
                raise LmforgeError("launcher: k8s needs k8s_image (an image with lmforge installed)")
            argv = [self.k8s_python if argvs[0][0] == sys.executable else argvs[0][0], *argvs[0][1:]]
            # A step retry in the same run makes a new Job (the old one's name may still exist).
            specs = k8s.render_job(argv, ranks_env, name=f"lmforge-{run_id[:8]}-{context.retry_number}",
                                   image=self.k8s_image, nnodes=self.nnodes, nproc_per_node=self.nproc,
                                   namespace=self.k8s_namespace, gpus_per_node=self.k8s_gpus_per_node,
                                   cpu=self.k8s_cpu, memory=self.k8s_memory,
                                   service_account=self.k8s_service_account,
                                   volumes=self.k8s_volumes or None)
            job = k8s.submit(specs, self.k8s_namespace)
        else:
            job = launch.LocalJob(argvs, self.local_env(ranks_env, side["deepspeed_env"]))
        for argv in argvs:
            context.log.info("launched (%s %s): %s", self.launcher, job.id, " ".join(argv))
        return job

    def _wait(self, context: dg.AssetExecutionContext, job) -> int:
        """Wait for ``job``, its output lines into the run's logs; cancel it when the step is
        interrupted (or anything else goes wrong here)."""
        try:
            while True:
                code = job.poll()
                for line in job.read_new_log_lines():
                    context.log.info(line)
                if code is not None:
                    return code
                time.sleep(0.5)
        except BaseException:
            context.log.info("ending the training processes (job %s)", job.id)
            if isinstance(job, launch.LocalJob):
                job.cancel(grace=self.terminate_timeout_s)
            else:
                job.cancel()
            raise

