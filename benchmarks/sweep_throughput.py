"""K sweep trials trained together against one after another.

    python -m experiments.benchmark --sweep         # 8 sweep trials together vs one after another

Times K trials of a sweep (simple CNN; learning rate, dropout and seed
differ) for --steps steps each: one after another as ordinary runs (each
compiles its own step), then trained together in one jitted step
(mnist_jax.trial_group), unrolled and vmapped; wall time with compilation,
compile time, examples/s and the ratio to sequential.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models, optim, parallel, pipeline, sources, trial_group
from mnist_jax.config import TrainConfig
from mnist_jax.steps import create_train_state, make_train_step, run_keys

STRATEGIES = ("unroll", "vmap")


def sweep_trials(count: int, batch_size: int) -> list:
    """`count` simple-CNN trials in one group: learning rate, dropout and seed differ."""
    from mnist_jax.search_space import Choice, LogUniform, SweepConfig, make_trials

    base = TrainConfig(model="simple_cnn", batch_size=batch_size, weight_decay=0.0)
    space = {
        "learning_rate": LogUniform(3e-4, 3e-3),
        "model.dropout": Choice((0.1, 0.25, 0.5)),
        "seed": Choice(tuple(range(count))),
    }
    return make_trials(SweepConfig(base, space, num_trials=count))


class TrialBatches:
    """Each trial's first `steps` batches, shuffled as its run would (from its seed)."""

    def __init__(self, trials: list, steps: int, batch_size: int, images, labels):
        self.images, self.labels = images, labels
        self.orders = [
            pipeline.batch_indices(
                np.resize(
                    pipeline.epoch_order(run_keys(t.config.seed)[2], 0, len(labels)),
                    steps * batch_size,
                ),
                batch_size,
            )
            for t in trials
        ]

    def __call__(self, k: int, s: int) -> dict:
        """Trial k's batch of step s, on the host."""
        indices, masks = self.orders[k]
        return pipeline.gather_batch(self.images, self.labels, indices[s], masks[s])


def one_after_another(trials: list, steps: int, batch, spec, mesh, sample) -> dict:
    """As K ordinary runs: each builds its model and optimizer and compiles its own step.

    Args:
      trials: the K trials.
      steps: the steps of each trial.
      batch: trial k's batch of step s on the host, as batch(k, s) (TrialBatches).
      spec: the step settings.
      mesh: the devices.
      sample: a float input batch (1, 28, 28, 1), to initialise each state.

    Returns:
      {"wall_seconds", "compile_seconds"}: in all, and of each trial's first
      step, summed.
    """
    start = time.perf_counter()
    compile_seconds = 0.0
    for k, trial in enumerate(trials):
        model = models.get_model("simple_cnn", **trial.model_kwargs)
        tx = optim.make_optimizer(trial.config)
        state = parallel.replicate(create_train_state(model, tx, trial.config.seed, sample), mesh)
        step = make_train_step(spec, mesh)
        t0 = time.perf_counter()
        state, metrics = step(state, parallel.shard_batch(batch(k, 0), mesh))
        jax.block_until_ready(metrics)
        compile_seconds += time.perf_counter() - t0
        for s in range(1, steps):
            state, metrics = step(state, parallel.shard_batch(batch(k, s), mesh))
        jax.block_until_ready(state)
    return {"wall_seconds": time.perf_counter() - start, "compile_seconds": compile_seconds}


def together(trials: list, steps: int, batch, spec, mesh, sample, strategy: str) -> dict:
    """The K trials stacked, one jitted step for all.

    Args:
      trials: the K trials.
      steps: the steps of each trial.
      batch: trial k's batch of step s on the host, as batch(k, s) (TrialBatches).
      spec: the step settings.
      mesh: the devices.
      sample: a float input batch (1, 28, 28, 1), to initialise the states.
      strategy: "unroll" or "vmap" (trial_group.trials_step).

    Returns:
      {"wall_seconds", "compile_seconds"}: in all, and of the first step.
    """
    start = time.perf_counter()
    model, fields = trial_group.group_model(trials)
    states = parallel.replicate(trial_group.init_trial_states(trials, model, steps, sample), mesh)
    hparams = parallel.replicate(
        {f: jnp.asarray([t.model_kwargs[f] for t in trials]) for f in fields}, mesh
    )
    step = trial_group.make_trials_step(model, spec, strategy, mesh)

    def batches(s):
        return parallel.shard_steps(
            trial_group.stack([batch(k, s) for k in range(len(trials))]), mesh
        )

    t0 = time.perf_counter()
    states, metrics = step(states, hparams, batches(0))
    jax.block_until_ready(metrics)
    compiled = time.perf_counter() - t0
    for s in range(1, steps):
        states, metrics = step(states, hparams, batches(s))
    jax.block_until_ready(states)
    return {"wall_seconds": time.perf_counter() - start, "compile_seconds": compiled}


def run(
    trial_count: int,
    steps: int,
    batch_size: int,
    strategies: tuple[str, ...],
    data_dir=None,
    idx_dir=None,
) -> dict:
    """K trials one after another vs together: see the module docstring.

    Args:
      trial_count: the number of trials, K.
      steps: the steps of each trial.
      batch_size: examples per step, across the devices.
      strategies: how the trials train together: "unroll", "vmap" or both.
      data_dir: the tfds data dir (sources.load_mnist); None: its default.
      idx_dir: a folder of the four MNIST IDX files; None: none.

    Returns:
      The timings of each way (format_result prints them), with the devices
      and jax's version.
    """
    mnist = sources.load_mnist(data_dir=data_dir, idx_dir=idx_dir)
    images, labels = mnist.train.images, mnist.train.labels
    mesh = parallel.data_mesh()
    parallel.check_batch_size(batch_size, mesh)
    trials = sweep_trials(trial_count, batch_size)
    spec = trials[0].config.step_config()
    sample = jnp.zeros((1, 28, 28, 1))
    batch = TrialBatches(trials, steps, batch_size, images, labels)
    results = {"sequential": one_after_another(trials, steps, batch, spec, mesh, sample)}
    for strategy in strategies:
        results[strategy] = together(trials, steps, batch, spec, mesh, sample, strategy)
    for timing in results.values():
        run_seconds = timing["wall_seconds"] - timing["compile_seconds"]
        timing["examples_per_second"] = trial_count * (steps - 1) * batch_size / run_seconds
        timing["speedup_vs_sequential"] = (
            results["sequential"]["wall_seconds"] / timing["wall_seconds"]
        )
    return {
        "model": "simple_cnn",
        "trials": trial_count,
        "steps_per_trial": steps,
        "batch_size": batch_size,
        "timings": results,
        "device": parallel.describe(mesh),
        "jax": jax.__version__,
    }


NAMES = {
    "sequential": "one after another",
    "unroll": "together, unrolled",
    "vmap": "together, vmapped",
}


def format_result(result: dict) -> str:
    lines = [
        f"{result['trials']} simple-CNN trials x {result['steps_per_trial']} steps, "
        f"batch {result['batch_size']}, {parallel.format_devices(result['device'])}, "
        f"jax {result['jax']}",
        "| trials trained             | wall s (with compile) | compile s | examples/s "
        "| vs sequential |",
        "|----------------------------|-----------------------|-----------|------------"
        "|---------------|",
    ]
    for name, t in result["timings"].items():
        lines.append(
            f"| {NAMES[name]:<26} | {t['wall_seconds']:21.1f} | {t['compile_seconds']:9.1f} | "
            f"{t['examples_per_second']:10.0f} | {t['speedup_vs_sequential']:12.2f}x |"
        )
    return "\n".join(lines)
