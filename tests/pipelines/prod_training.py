"""The training that tests/pipelines/prod_location.py launches through Dagster Pipes, as the
project's pretraining asset launches `lmforge.train.pretrain`: its own process, numpy only.

A seeded SGD loop on a fixed least-squares problem that saves a checkpoint after every step
(weights, the sampler's RNG state, the step) and starts from the latest one, so a training killed
in the middle and started again ends with exactly the weights of an uninterrupted one.

    python prod_training.py <out dir>    # under Pipes: reports the result as the materialization
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

TRAINING_STEPS = 12
STEP_SECONDS = 0.4


def read_checkpoint(path: Path) -> dict | None:
    """The latest checkpoint: {"step", "weights", "rng"}, or None before the first one."""
    if not Path(path).exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return {"step": int(f["step"]), "weights": f["weights"].copy(),
                "rng": json.loads(str(f["rng"]))}


def _write_checkpoint(path: Path, step: int, weights: np.ndarray, rng: np.random.Generator) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, step=np.int64(step), weights=weights, rng=np.str_(json.dumps(rng.bit_generator.state)))
    os.replace(tmp, path)  # a kill leaves either the last checkpoint or the new one, never half


def train(checkpoint: Path, steps: int = TRAINING_STEPS, step_seconds: float = 0.0) -> dict:
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


def main(out: Path) -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        result = train(out / "checkpoint.npz", step_seconds=STEP_SECONDS)
        (out / "result.json").write_text(json.dumps(result))
        pipes.log.info(f"trained steps {result['resumed_from_step']}..{result['steps']}")
        pipes.report_asset_materialization(metadata={
            "resumed_from_step": result["resumed_from_step"], "loss": result["loss"]})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
