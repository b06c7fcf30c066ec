"""A small code location for tests/pipelines/test_production_instance.py: real assets, seconds long.

The daemon loads it from a workspace file and runs its jobs in subprocesses, like the project's
own location. What the assets write goes under $LMFORGE_PROD_TEST_DIR (the test sets it in the
daemon's environment; code servers and run workers inherit it).

`resumable_training` stands for pretraining: a seeded SGD loop that saves a checkpoint after
every step (weights, the sampler's RNG state, the step) and starts from the latest one, so a run
killed in the middle and resumed ends with exactly the weights of an uninterrupted run.
"""


import json
import os
import time
from pathlib import Path

import dagster as dg
import numpy as np

ROOT_ENV = "LMFORGE_PROD_TEST_DIR"
TRAINING_STEPS = 12
STEP_SECONDS = 0.4
RELEASE_TIMEOUT = 120.0


def _root() -> Path:
    return Path(os.environ[ROOT_ENV])


def read_checkpoint(path: Path) -> dict | None:
    """The latest checkpoint: {"step", "weights", "rng"}, or None before the first one."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return {"step": int(f["step"]), "weights": f["weights"].copy(),
                "rng": json.loads(str(f["rng"]))}


def _write_checkpoint(path: Path, step: int, weights: np.ndarray, rng: np.random.Generator) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, step=np.int64(step), weights=weights, rng=np.str_(json.dumps(rng.bit_generator.state)))
    os.replace(tmp, path)  # a kill leaves either the last checkpoint or the new one, never half


def train(checkpoint: Path, steps: int = TRAINING_STEPS, step_seconds: float = 0.0) -> dict:
    """SGD on a fixed least-squares problem, one minibatch drawn from a seeded RNG per step."""
    data_rng = np.random.default_rng(0)
    x = data_rng.normal(size=(256, 8))
    y = x @ data_rng.normal(size=8) + 0.1 * data_rng.normal(size=256)
    rng = np.random.default_rng(1)
    weights = np.zeros(8)
    start = 0
    state = read_checkpoint(checkpoint)
    if state is not None:
        start, weights = state["step"], state["weights"]
        rng.bit_generator.state = state["rng"]
    for step in range(start, steps):
        batch = rng.choice(len(x), size=32, replace=False)
        grad = 2 * x[batch].T @ (x[batch] @ weights - y[batch]) / len(batch)
        weights = weights - 0.05 * grad
        time.sleep(step_seconds)
        _write_checkpoint(checkpoint, step + 1, weights, rng)
    loss = float(np.mean((x @ weights - y) ** 2))
    return {"resumed_from_step": start, "steps": steps, "loss": loss, "weights": weights.tolist()}


class TrainingConfig(dg.Config):
    name: str = "training"  # the folder under $LMFORGE_PROD_TEST_DIR: one per test


@dg.asset(pool="gpu")
def resumable_training(context: dg.AssetExecutionContext, config: TrainingConfig) -> dg.MaterializeResult:
    out = _root() / config.name
    out.mkdir(parents=True, exist_ok=True)
    result = train(out / "checkpoint.npz", step_seconds=STEP_SECONDS)
    (out / "result.json").write_text(json.dumps(result))
    context.log.info(f"trained steps {result['resumed_from_step']}..{result['steps']}")
    return dg.MaterializeResult(metadata={"resumed_from_step": result["resumed_from_step"],
                                          "loss": result["loss"]})


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
)
