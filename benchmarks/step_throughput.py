"""The CNN train step's throughput: alone, with data on the host, with data on the device.

    python -m experiments.benchmark                 # 200 timed steps each, batch 64
    python -m experiments.benchmark --steps 50 --batch-size 128 --dtype bfloat16

Examples/s, on every device (data parallel), of
  - the model step alone: one batch already on the device, stepped repeatedly;
  - data on the host: shuffled batches gathered from the uint8 arrays on the
    host and sent to the devices, one jitted call a step (noise and
    normalisation inside it);
  - data on the device: the uint8 arrays on the devices, the same steps as one
    `lax.scan` that gathers each batch there (no per-step Python dispatch);
the compile times, and how long a second (cached) load of MNIST takes.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models, optim, parallel, pipeline, sources
from mnist_jax.config import TrainConfig
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.steps import create_train_state, make_device_train_steps, make_train_step


def time_steps(step, state, batches, steps: int) -> tuple[float, object]:
    """Seconds for `steps` steps after one warm-up step; batches is an iterator."""
    state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start, state


def time_device_scan(fresh, spec, mesh, images, labels, steps: int, batch_size: int):
    """`steps` steps as one `lax.scan` over data on the devices, as fit()
    runs with --data-placement device.

    Args:
      fresh: returns a new replicated train state at each call.
      spec: the step settings.
      mesh: the devices.
      images: (N, 28, 28, 1) uint8, the training images.
      labels: (N,) int32.
      steps: the steps timed, in one scan.
      batch_size: examples per step.

    Returns:
      (compile seconds, run seconds).
    """
    data = parallel.replicate({"image": images, "label": labels}, mesh)
    order = pipeline.epoch_order(jax.random.PRNGKey(0), 0, len(labels))
    indices, masks = pipeline.batch_indices(np.resize(order, steps * batch_size), batch_size)
    steps_input = parallel.shard_steps((indices, masks), mesh)
    scan = make_device_train_steps(spec, mesh)
    t0 = time.perf_counter()
    scan_compiled = scan.lower(fresh(), data, *steps_input).compile()
    compile_seconds = time.perf_counter() - t0
    state = fresh()
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state, metrics = scan_compiled(state, data, *steps_input)
    jax.block_until_ready((state, metrics))
    return compile_seconds, time.perf_counter() - t0


def run(
    steps: int,
    batch_size: int,
    noise: NoiseConfig,
    dtype: str = "float32",
    data_dir=None,
    idx_dir=None,
) -> dict:
    """The CNN train step's throughput: alone, with data on the host, with
    data on the device (see the module docstring).

    Args:
      steps: the timed steps of each measure.
      batch_size: examples per step, across the devices.
      noise: added to the training inputs.
      dtype: the compute dtype.
      data_dir: the tfds data dir (sources.load_mnist); None: its default.
      idx_dir: a folder of the four MNIST IDX files; None: none.

    Returns:
      The measures (format_result prints them), with the devices and jax's version.
    """
    t0 = time.perf_counter()
    mnist = sources.load_mnist(data_dir=data_dir, idx_dir=idx_dir)
    load_seconds = time.perf_counter() - t0
    images, labels = mnist.train.images, mnist.train.labels

    config = TrainConfig(batch_size=batch_size, noise=noise, dtype=dtype)
    spec = config.step_config()
    mesh = parallel.data_mesh()
    parallel.check_batch_size(batch_size, mesh)
    model = models.get_model("cnn")
    tx = optim.make_optimizer(config)  # One optimizer: the compiled step is bound to it.

    def fresh():
        state = create_train_state(model, tx, 0, jnp.zeros((1, 28, 28, 1)))
        return parallel.replicate(state, mesh)

    step = make_train_step(spec, mesh)
    first = parallel.shard_batch(next(pipeline.iterate_batches(images, labels, batch_size)), mesh)

    t0 = time.perf_counter()
    compiled = step.lower(fresh(), first).compile()
    compile_seconds = time.perf_counter() - t0

    # The model step alone: the same batch, already on the device.
    forever = iter(lambda: first, None)
    step_seconds, _ = time_steps(compiled, fresh(), forever, steps)

    # Data on the host: shuffled batches gathered there, one call a step, as
    # fit() runs with --data-placement host.
    def epochs():
        for epoch in range(1_000_000):
            order = pipeline.epoch_order(jax.random.PRNGKey(0), epoch, len(labels))
            for batch in pipeline.iterate_batches(images, labels, batch_size, order=order):
                yield parallel.shard_batch(batch, mesh)

    pipeline_seconds, _ = time_steps(compiled, fresh(), epochs(), steps)
    scan_compile_seconds, scan_seconds = time_device_scan(
        fresh, spec, mesh, images, labels, steps, batch_size
    )
    return {
        "model": "cnn",
        "batch_size": batch_size,
        "timed_steps": steps,
        "noise": noise.kind,
        "dtype": dtype,
        "examples_per_second": {
            "step_alone": steps * batch_size / step_seconds,
            "host_data": steps * batch_size / pipeline_seconds,
            "device_data_scan": steps * batch_size / scan_seconds,
        },
        "compile_seconds": compile_seconds,
        "scan_compile_seconds": scan_compile_seconds,
        "cached_data_load_seconds": load_seconds,
        "device": parallel.describe(mesh),
        "jax": jax.__version__,
    }


ROWS = (  # (what, value, its format) of the printed table.
    (
        "step alone, batch already on device (examples/s)",
        ("examples_per_second", "step_alone"),
        ".0f",
    ),
    ("data on the host, one call a step (examples/s)", ("examples_per_second", "host_data"), ".0f"),
    (
        "data on the device, lax.scan over steps (examples/s)",
        ("examples_per_second", "device_data_scan"),
        ".0f",
    ),
    ("compile time, step (s)", ("compile_seconds",), ".2f"),
    ("compile time, scan (s)", ("scan_compile_seconds",), ".2f"),
    ("MNIST load, from cache (s)", ("cached_data_load_seconds",), ".2f"),
)


def format_result(result: dict) -> str:
    lines = [
        f"CNN train step, batch {result['batch_size']}, {result['timed_steps']} timed steps, "
        f"{result['dtype']}, {parallel.format_devices(result['device'])}, jax {result['jax']}",
        f"| {'measure':<53} | {'value':<10} |",
        f"|{'-' * 55}|{'-' * 12}|",
    ]
    for what, keys, form in ROWS:
        value = result
        for key in keys:
            value = value[key]
        lines.append(f"| {what:<53} | {value:10{form}} |")
    return "\n".join(lines)
