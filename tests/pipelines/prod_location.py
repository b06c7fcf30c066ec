"""A small code location for tests/pipelines/test_production_instance.py: real assets, seconds long.

The daemon loads it from a workspace file and runs its jobs in subprocesses, like the project's
own location. What the assets write goes under $LMFORGE_PROD_TEST_DIR (the test sets it in the
daemon's environment; code servers and run workers inherit it).

`resumable_training` stands for pretraining: it launches a resumable training
(prod_training.py) in its own process through Dagster Pipes, as the project's training assets do.
"""

import os
import sys
import time
from pathlib import Path

import dagster as dg

ROOT_ENV = "LMFORGE_PROD_TEST_DIR"
TRAINING_SCRIPT = Path(__file__).with_name("prod_training.py")
RELEASE_TIMEOUT = 120.0


def _root() -> Path:
    return Path(os.environ[ROOT_ENV])


class TrainingConfig(dg.Config):
    name: str = "training"  # the folder under $LMFORGE_PROD_TEST_DIR: one per test


@dg.asset(pool="gpu")
def resumable_training(context: dg.AssetExecutionContext, config: TrainingConfig,
                       pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    out = _root() / config.name
    out.mkdir(parents=True, exist_ok=True)
    return pipes_subprocess_client.run(
        context=context, command=[sys.executable, str(TRAINING_SCRIPT), str(out)],
    ).get_materialize_result()


@dg.asset(pool="gpu")
def pooled_work() -> dg.MaterializeResult:
    """Holds the `gpu` pool's slot, as a training would, until the test lets go (the file
    $LMFORGE_PROD_TEST_DIR/release exists): the test decides how long the steps could overlap."""
    started = time.time()
    release = _root() / "release"
    time.sleep(0.5)
    while not release.exists() and time.time() - started < RELEASE_TIMEOUT:
        time.sleep(0.05)
    return dg.MaterializeResult(metadata={"pid": os.getpid(), "seconds": time.time() - started})


defs = dg.Definitions(
    assets=[resumable_training, pooled_work],
    jobs=[dg.define_asset_job("training", [resumable_training]),
          # In the run worker's process: the pool is the instance's, whichever the executor, and
          # a step process per run would only add seconds of start-up to the test.
          dg.define_asset_job("pooled", [pooled_work], executor_def=dg.in_process_executor)],
    resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
)
