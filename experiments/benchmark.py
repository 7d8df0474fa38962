"""Training throughput of the CNN step (host or device data); --vs-torch: every model against PyTorch.

    python -m experiments.benchmark                 # 200 timed steps each, batch 64
    python -m experiments.benchmark --steps 50 --batch-size 128 --dtype bfloat16
    python -m experiments.benchmark --sweep         # 8 sweep trials together vs one after another
    python -m experiments.benchmark --vs-torch      # every model against plain PyTorch (`bench` extra)
    python -m experiments.benchmark --vs-torch --models cnn,vit --steps 20 --rounds 5 --round-seconds 5
    python -m experiments.benchmark --overhead      # what a user waits for: whole commands, phase by phase

Prints (and writes as JSON) examples/s, on every device (data parallel), of
  - the model step alone: one batch already on the device, stepped repeatedly;
  - data on the host: shuffled batches gathered from the uint8 arrays on the
    host and sent to the devices, one jitted call a step (noise and
    normalisation inside it);
  - data on the device: the uint8 arrays on the devices, the same steps as one
    `lax.scan` that gathers each batch there (no per-step Python dispatch);
the compile times, and how long a second (cached) load of MNIST takes.

--sweep instead times K trials of a sweep (simple CNN; learning rate,
dropout and seed differ) for --steps steps each: one after another as
ordinary runs (each compiles its own step), then trained together in one
jitted step (mnist_jax.trial_group), unrolled and vmapped; wall time with
compilation, compile time, examples/s and the ratio to sequential.

--overhead instead times whole commands as processes, first and second
run, phase by phase (experiments._overhead); --rounds repeats, median.

--vs-torch instead trains every model (or --models) with our step and with
a plain PyTorch loop, alternating, in processes of their own: examples/s
of each, the ratio, compile time and peak memory (experiments._vs_torch).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _overhead as overhead
from experiments import _vs_torch as vs_torch
from mnist_jax import data as data_lib
from mnist_jax import models, optim, parallel, pipeline, sources
from mnist_jax.cli import setup
from mnist_jax.config import TrainConfig
from mnist_jax.flags import ShowDefaults
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.steps import create_train_state, make_device_train_steps, make_train_step, run_keys


def time_steps(step, state, batches, steps: int) -> tuple[float, object]:
    """Seconds for `steps` steps after one warm-up step; batches is an iterator."""
    state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start, state


def run(
    steps: int,
    batch_size: int,
    noise: NoiseConfig,
    dtype: str = "float32",
    data_dir=None,
    idx_dir=None,
) -> dict:
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

    # Data on the device: `steps` steps as one lax.scan gathering batches
    # there, as fit() runs with --data-placement device.
    data = parallel.replicate({"image": images, "label": labels}, mesh)
    order = pipeline.epoch_order(jax.random.PRNGKey(0), 0, len(labels))
    indices, masks = pipeline.batch_indices(np.resize(order, steps * batch_size), batch_size)
    steps_input = parallel.shard_steps((indices, masks), mesh)
    scan = make_device_train_steps(spec, mesh)
    t0 = time.perf_counter()
    scan_compiled = scan.lower(fresh(), data, *steps_input).compile()
    scan_compile_seconds = time.perf_counter() - t0
    state = fresh()
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state, metrics = scan_compiled(state, data, *steps_input)
    jax.block_until_ready((state, metrics))
    scan_seconds = time.perf_counter() - t0

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


def run_sweep_benchmark(
    trial_count: int,
    steps: int,
    batch_size: int,
    strategies: tuple[str, ...],
    data_dir=None,
    idx_dir=None,
) -> dict:
    """K trials one after another vs together: see the module docstring."""
    from mnist_jax import trial_group

    mnist = sources.load_mnist(data_dir=data_dir, idx_dir=idx_dir)
    images, labels = mnist.train.images, mnist.train.labels
    mesh = parallel.data_mesh()
    parallel.check_batch_size(batch_size, mesh)
    trials = sweep_trials(trial_count, batch_size)
    spec = trials[0].config.step_config()
    sample = jnp.zeros((1, 28, 28, 1))
    orders = [
        pipeline.batch_indices(
            np.resize(
                pipeline.epoch_order(run_keys(t.config.seed)[2], 0, len(labels)), steps * batch_size
            ),
            batch_size,
        )
        for t in trials
    ]

    def batch(k, s):
        return pipeline.gather_batch(images, labels, orders[k][0][s], orders[k][1][s])

    results = {}
    # One after another, as K ordinary runs: each builds its model and
    # optimizer and compiles its own step.
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
    results["sequential"] = {
        "wall_seconds": time.perf_counter() - start,
        "compile_seconds": compile_seconds,
    }

    for strategy in strategies:
        start = time.perf_counter()
        model, fields = trial_group.group_model(trials)
        states = parallel.replicate(
            trial_group.init_trial_states(trials, model, steps, sample), mesh
        )
        hparams = parallel.replicate(
            {f: jnp.asarray([t.model_kwargs[f] for t in trials]) for f in fields}, mesh
        )
        step = trial_group.make_trials_step(model, spec, strategy, mesh)

        def batches(s):
            return parallel.shard_steps(
                trial_group.stack([batch(k, s) for k in range(trial_count)]), mesh
            )

        t0 = time.perf_counter()
        states, metrics = step(states, hparams, batches(0))
        jax.block_until_ready(metrics)
        compiled = time.perf_counter() - t0
        for s in range(1, steps):
            states, metrics = step(states, hparams, batches(s))
        jax.block_until_ready(states)
        results[strategy] = {
            "wall_seconds": time.perf_counter() - start,
            "compile_seconds": compiled,
        }

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


def format_sweep_result(result: dict) -> str:
    lines = [
        f"{result['trials']} simple-CNN trials x {result['steps_per_trial']} steps, batch {result['batch_size']}, "
        f"{parallel.format_devices(result['device'])}, jax {result['jax']}",
        "| trials trained             | wall s (with compile) | compile s | examples/s | vs sequential |",
        "|----------------------------|-----------------------|-----------|------------|---------------|",
    ]
    names = {
        "sequential": "one after another",
        "unroll": "together, unrolled",
        "vmap": "together, vmapped",
    }
    for name, t in result["timings"].items():
        lines.append(
            f"| {names[name]:<26} | {t['wall_seconds']:21.1f} | {t['compile_seconds']:9.1f} | "
            f"{t['examples_per_second']:10.0f} | {t['speedup_vs_sequential']:12.2f}x |"
        )
    return "\n".join(lines)


def format_result(result: dict) -> str:
    rate = result["examples_per_second"]
    return "\n".join(
        [
            f"CNN train step, batch {result['batch_size']}, {result['timed_steps']} timed steps, "
            f"{result['dtype']}, {parallel.format_devices(result['device'])}, jax {result['jax']}",
            "| measure                                               | value      |",
            "|-------------------------------------------------------|------------|",
            f"| step alone, batch already on device (examples/s)      | {rate['step_alone']:10.0f} |",
            f"| data on the host, one call a step (examples/s)        | {rate['host_data']:10.0f} |",
            f"| data on the device, lax.scan over steps (examples/s)  | {rate['device_data_scan']:10.0f} |",
            f"| compile time, step (s)                                | {result['compile_seconds']:10.2f} |",
            f"| compile time, scan (s)                                | {result['scan_compile_seconds']:10.2f} |",
            f"| MNIST load, from cache (s)                            | {result['cached_data_load_seconds']:10.2f} |",
        ]
    )


def main(argv=None) -> dict:
    setup()
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults,
        prog="python -m experiments.benchmark",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument(
        "--noise",
        choices=pipeline.NOISE_KINDS,
        default="gaussian",
        help="noise added inside the step, to time the whole pipeline",
    )
    parser.add_argument(
        "--noise-level",
        type=float,
        default=0.2,
        help="Gaussian or speckle sigma, or salt-and-pepper probability",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype"
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="tfds data dir holding mnist/3.0.1 (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--idx-dir",
        type=pathlib.Path,
        help="folder with the four MNIST IDX files (default: none; takes precedence over --data-dir)",
    )
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        help="JSON file (default: runs/benchmark/benchmark.json, or vs_torch.json with --vs-torch)",
    )
    parser.add_argument("--quick", action="store_true", help="5 timed steps: a smoke test")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="time --trials sweep trials together vs one after another instead",
    )
    parser.add_argument("--trials", type=int, default=8, help="--sweep: trials")
    parser.add_argument(
        "--strategies",
        default="unroll,vmap",
        help="--sweep: how trials share a step, comma-separated (unroll, vmap)",
    )
    parser.add_argument(
        "--vs-torch",
        action="store_true",
        help="every model against a plain PyTorch loop (needs torch: pip install -e '.[bench]')",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="whole commands (cnn --quick, cnn --epochs 1, predict) timed as processes, "
        "phase by phase, first and second run (experiments._overhead)",
    )
    parser.add_argument(
        "--models",
        default="all",
        help="--vs-torch: comma-separated models, or all: every model with a PyTorch baseline",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="--vs-torch: alternating timed rounds; --overhead: repeats",
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=3.0,
        help="--vs-torch: each round runs --steps steps at a time for at least this long",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.rounds < 1:
        parser.error("--steps, --batch-size and --rounds must be >= 1")
    steps = 5 if args.quick else args.steps
    try:
        models_asked = vs_torch.parse_models(
            args.models
        )  # Before the data: a bad name fails at once.
        noise = NoiseConfig(args.noise, args.noise_level)
        parallel.check_batch_size(args.batch_size, parallel.data_mesh())
        # First load decodes and fills the cache; the measured load is the second.
        sources.load_mnist(data_dir=args.data_dir, idx_dir=args.idx_dir)
    except (ValueError, data_lib.DataError) as e:
        parser.error(str(e))
    if args.overhead:
        data_flags = [
            *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
            *(["--idx-dir", str(args.idx_dir)] if args.idx_dir else []),
        ]
        result = overhead.run(1 if args.quick else args.rounds, data_flags, args.quick)
        print(overhead.format_result(result))
    elif args.vs_torch:
        if (
            importlib.util.find_spec("torch") is None
        ):  # Fail before any worker starts, with the fix.
            parser.error("--vs-torch needs PyTorch: pip install -e '.[bench]'")
        steps = 3 if args.quick else args.steps
        result = vs_torch.run(
            models_asked,
            steps,
            1 if args.quick else args.rounds,
            args.data_dir,
            args.idx_dir,
            0.0 if args.quick else args.round_seconds,
        )
        print(vs_torch.format_result(result))
    elif args.sweep:
        strategies = tuple(x for x in args.strategies.split(",") if x)
        if args.trials < 1 or not set(strategies) <= {"unroll", "vmap"}:
            parser.error("--sweep needs --trials >= 1 and --strategies from unroll, vmap")
        result = run_sweep_benchmark(
            2 if args.quick else args.trials,
            3 if args.quick else args.steps,
            args.batch_size,
            strategies,
            args.data_dir,
            args.idx_dir,
        )
        print(format_sweep_result(result))
    else:
        result = run(steps, args.batch_size, noise, args.dtype, args.data_dir, args.idx_dir)
        print(format_result(result))
    default_name = (
        "overhead.json" if args.overhead else "vs_torch.json" if args.vs_torch else "benchmark.json"
    )
    args.output = args.output or pathlib.Path("runs/benchmark") / default_name
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.output}")
    return result


if __name__ == "__main__":
    main()
