"""Training throughput of the report CNN: with the input pipeline, and the step alone.

    python -m experiments.benchmark                 # 200 timed steps each, batch 64
    python -m experiments.benchmark --steps 50 --batch-size 128

Prints (and writes as JSON) examples/s of
  - the model step alone: one batch already on the device, stepped repeatedly;
  - the full pipeline: shuffled batches gathered from the uint8 arrays on the
    host, sent to the device, noise and normalisation inside the jitted step;
the step's compile time, and how long a second (cached) load of MNIST takes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import data as data_lib, models, pipeline, train
from mnist_jax.pipeline import NoiseConfig


def time_steps(step, state, batches, steps: int) -> tuple[float, object]:
    """Seconds for `steps` steps after one warm-up step; batches is an iterator."""
    state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start, state


def run(steps: int, batch_size: int, noise: NoiseConfig, data_dir=None, idx_dir=None) -> dict:
    t0 = time.perf_counter()
    mnist = data_lib.load_mnist(data_dir=data_dir, idx_dir=idx_dir)
    load_seconds = time.perf_counter() - t0
    images, labels = mnist.train.images, mnist.train.labels

    config = train.TrainConfig(batch_size=batch_size, noise=noise)
    model = models.get_model("cnn")
    tx = train.make_optimizer(config)  # One optimizer: the compiled step is bound to it.

    def fresh():
        return train.create_train_state(model, tx, 0, jnp.zeros((1, 28, 28, 1)))

    step = train.make_train_step(config.step_config())
    first = next(pipeline.iterate_batches(images, labels, batch_size))

    t0 = time.perf_counter()
    compiled = step.lower(fresh(), first).compile()
    compile_seconds = time.perf_counter() - t0

    # The model step alone: the same batch, already on the device.
    device_batch = jax.device_put(first)
    forever = iter(lambda: device_batch, None)
    step_seconds, _ = time_steps(compiled, fresh(), forever, steps)

    # The full pipeline, as the fit loop runs it.
    def epochs():
        for epoch in range(1_000_000):
            order = pipeline.epoch_order(jax.random.PRNGKey(0), epoch, len(labels))
            yield from pipeline.iterate_batches(images, labels, batch_size, order=order)

    pipeline_seconds, _ = time_steps(compiled, fresh(), epochs(), steps)
    device = jax.devices()[0]
    return {
        "model": "cnn",
        "batch_size": batch_size,
        "timed_steps": steps,
        "noise": noise.kind,
        "examples_per_second": {
            "step_alone": steps * batch_size / step_seconds,
            "full_pipeline": steps * batch_size / pipeline_seconds,
        },
        "compile_seconds": compile_seconds,
        "cached_data_load_seconds": load_seconds,
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "jax": jax.__version__,
    }


def format_result(result: dict) -> str:
    rate = result["examples_per_second"]
    device = result["device"]
    return "\n".join([
        f"CNN train step, batch {result['batch_size']}, {result['timed_steps']} timed steps, "
        f"{device['platform']} ({device['kind']}) x{device['count']}, jax {result['jax']}",
        f"| measure                           | value      |",
        f"|-----------------------------------|------------|",
        f"| step alone (examples/s)           | {rate['step_alone']:10.0f} |",
        f"| full input pipeline (examples/s)  | {rate['full_pipeline']:10.0f} |",
        f"| compile time (s)                  | {result['compile_seconds']:10.2f} |",
        f"| MNIST load, from cache (s)        | {result['cached_data_load_seconds']:10.2f} |",
    ])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--noise", choices=pipeline.NOISE_KINDS, default="gaussian",
                        help="noise added inside the step (default gaussian, to time the whole pipeline)")
    parser.add_argument("--noise-level", type=float, default=0.2)
    parser.add_argument("--data-dir", type=pathlib.Path)
    parser.add_argument("--idx-dir", type=pathlib.Path)
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("runs/benchmark/benchmark.json"))
    parser.add_argument("--quick", action="store_true", help="5 timed steps: a smoke test")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    steps = 5 if args.quick else args.steps
    try:
        noise = NoiseConfig(args.noise, args.noise_level)
        # First load decodes and fills the cache; the measured load is the second.
        data_lib.load_mnist(data_dir=args.data_dir, idx_dir=args.idx_dir)
    except (ValueError, data_lib.DataError) as e:
        parser.error(str(e))
    result = run(steps, args.batch_size, noise, args.data_dir, args.idx_dir)
    print(format_result(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.output}")
    return result


if __name__ == "__main__":
    main()
