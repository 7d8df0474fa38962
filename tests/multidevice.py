"""Training runs on simulated CPU devices, in a process of their own.

    python -m tests.multidevice JOBS.json RESULTS.json

With JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set,
several such processes form one multi-process JAX run (jax.distributed).

XLA_FLAGS must name the device count before JAX is imported (jax #6887),
so tests/test_parallel.py runs this module in a subprocess with 8 CPU
devices. Each job trains the CNN on synthetic digits on a mesh over the
first `devices` devices and records its history (or, a "step" job, one
step's update and an evaluation).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys


def job_config(job: dict):
    from tests.conftest import small_run_config

    return small_run_config(
        epochs=job["epochs"], data_placement=job["placement"], dtype=job.get("dtype", "float32")
    )


def step_job(job: dict) -> dict:
    """One plain-SGD step (learning rate 1, so the update is the gradient)
    from the initial state on a full batch and on a padded one, and the
    initial state's evaluation of the validation split: numbers that
    rounding cannot amplify, to compare across device counts tightly."""
    import jax
    import numpy as np

    from mnist_jax import parallel, pipeline, steps
    from tests.conftest import plain_sgd_cnn, synthetic_split

    mesh = parallel.data_mesh(jax.devices()[: job["devices"]])
    config, initial_state = plain_sgd_cnn(1.0, mesh)
    spec = config.step_config()
    split = synthetic_split(300, 0)
    batches = list(pipeline.iterate_batches(split.images, split.labels, config.batch_size))
    full, padded = batches[0], batches[-1]
    assert full["mask"].all() and 0 < padded["mask"].sum() < config.batch_size

    def flat(tree):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])

    step = steps.make_train_step(spec, mesh)
    result = {"steps": []}
    for batch in (full, padded):
        state = initial_state()
        before = flat(state.params)  # The step donates the state's buffers.
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
        result["steps"].append(
            {
                "metrics": {k: float(v) for k, v in jax.device_get(metrics).items()},
                "update": (before - flat(state.params)).tolist(),
            }
        )
    evaluation = steps.evaluate(
        initial_state(), synthetic_split(100, 1), config.eval_batch_size, spec, mesh
    )
    result["evaluation"] = {k: float(v) for k, v in evaluation.items() if k != "predictions"}
    return result


def run_job(job: dict) -> dict:
    """Trains as `job` says; returns its history, devices and the parameters' sharding."""
    if job.get("kind") == "step":
        return step_job(job)
    import jax

    from mnist_jax import models, parallel, train
    from mnist_jax.data import Splits
    from mnist_jax.options import RunOptions
    from tests.conftest import synthetic_split

    splits = Splits(
        train=synthetic_split(300, 0), val=synthetic_split(100, 1), test=synthetic_split(100, 2)
    )
    mesh = parallel.data_mesh(jax.devices()[: job["devices"]])
    result = train.train_and_evaluate(
        job_config(job),
        models.get_model("cnn"),
        splits,
        job["workdir"],
        RunOptions(
            experiment="multidevice", resume=job.get("resume", False), progress=False, mesh=mesh
        ),
    )
    return {
        "history": result["history"],
        "devices": result["devices"],
        "params_sharding": str(jax.tree.leaves(result["state"].params)[0].sharding),
    }


def main(jobs_path: str, results_path: str) -> None:
    from mnist_jax import parallel

    parallel.initialize_distributed()  # Where the test starts several processes.
    jobs = json.loads(pathlib.Path(jobs_path).read_text())
    results = [run_job(job) for job in jobs]
    with open(results_path, "w") as f:  # One file per process.
        json.dump(results, f)


if __name__ == "__main__":
    if "jax" in sys.modules:
        raise RuntimeError("tests.multidevice must set XLA_FLAGS before JAX is imported")
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    os.environ.setdefault("TQDM_DISABLE", "1")
    main(*sys.argv[1:])
