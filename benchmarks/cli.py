"""Training throughput (CNN step, sweep trials, every model vs PyTorch) and command overhead.

    python -m experiments.benchmark              # 200 timed steps each, batch 64
    python -m experiments.benchmark --steps 50 --batch-size 128 --dtype bfloat16
    python -m experiments.benchmark --sweep      # 8 sweep trials together vs one after another
    python -m experiments.benchmark --vs-torch   # every model against plain PyTorch (`bench` extra)
    python -m experiments.benchmark --vs-torch --models cnn,vit --steps 20 --rounds 5 \\
        --round-seconds 5
    python -m experiments.benchmark --overhead   # what a user waits for: whole commands, by phase
    python -m experiments.benchmark --serve      # the drawing page's server, 8 clients at once

Prints (and writes as JSON, each mode a file of its own in runs/benchmark/)
examples/s, on every device (data parallel), of
  - the model step alone: one batch already on the device, stepped repeatedly;
  - data on the host: shuffled batches gathered from the uint8 arrays on the
    host and sent to the devices, one jitted call a step (noise and
    normalisation inside it);
  - data on the device: the uint8 arrays on the devices, the same steps as one
    `lax.scan` that gathers each batch there (no per-step Python dispatch);
the compile times, and how long a second (cached) load of MNIST takes
(benchmarks.step_throughput).

--sweep instead times K trials of a sweep (simple CNN; learning rate,
dropout and seed differ) for --steps steps each: one after another as
ordinary runs (each compiles its own step), then trained together in one
jitted step (mnist_jax.trial_group), unrolled and vmapped; wall time with
compilation, compile time, examples/s and the ratio to sequential
(benchmarks.sweep_throughput).

--overhead instead times whole commands as processes, first and second
run, phase by phase (benchmarks.overhead); --rounds repeats, median.

--vs-torch instead trains every model (or --models) with our step and with
a plain PyTorch loop, alternating, in processes of their own: examples/s
of each, the ratio, compile time and peak memory (benchmarks.vs_torch).

--serve instead loads `python -m mnist_jax.serve` with --clients clients
of --requests drawings each: latency percentiles, errors, the server's
resident memory before and after (benchmarks.serve_load).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

from benchmarks import overhead, serve_load, step_throughput, sweep_throughput, vs_torch
from mnist_jax import data as data_lib
from mnist_jax import parallel, pipeline, sources
from mnist_jax.cli import setup
from mnist_jax.flags import ShowDefaults
from mnist_jax.pipeline import NoiseConfig

OUTPUT_DIR = pathlib.Path("runs/benchmark")
# Each mode's JSON file in OUTPUT_DIR: one mode never overwrites another's.
OUTPUTS = {
    "steps": "benchmark.json",
    "sweep": "sweep.json",
    "vs_torch": "vs_torch.json",
    "overhead": "overhead.json",
    "serve": "serve.json",
}
MODE_FLAGS = {
    "sweep": "--sweep",
    "vs_torch": "--vs-torch",
    "overhead": "--overhead",
    "serve": "--serve",
}
NOISE_LEVEL_HELP = "Gaussian or speckle sigma, or salt-and-pepper probability"


def add_step_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the plain benchmark (and --steps, shared by every mode)."""
    add = parser.add_argument
    add("--steps", type=int, default=200, help="timed steps per measurement")
    add("--batch-size", type=int, default=64, help="training batch size")
    add(
        "--noise",
        choices=pipeline.NOISE_KINDS,
        default="gaussian",
        help="noise added inside the step, to time the whole pipeline",
    )
    add("--noise-level", type=float, default=0.2, help=NOISE_LEVEL_HELP)
    add("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    add(
        "--data-dir",
        type=pathlib.Path,
        help="tfds data dir holding mnist/3.0.1 (default: $TFDS_DATA_DIR, else "
        "~/tensorflow_datasets)",
    )
    add(
        "--idx-dir",
        type=pathlib.Path,
        help="folder with the four MNIST IDX files (default: none; takes precedence over "
        "--data-dir)",
    )
    add(
        "--output",
        type=pathlib.Path,
        help=f"the JSON file written (default: {OUTPUT_DIR / OUTPUTS['steps']}; "
        + ", ".join(
            f"with {flag} {OUTPUT_DIR / OUTPUTS[mode]}" for mode, flag in MODE_FLAGS.items()
        )
        + ")",
    )
    add("--quick", action="store_true", help="5 timed steps: a smoke test")


def add_mode_flags(parser: argparse.ArgumentParser) -> None:
    """--sweep, --vs-torch and --overhead (one at a time), and their own flags."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sweep",
        action="store_true",
        help="time --trials sweep trials together vs one after another instead",
    )
    mode.add_argument(
        "--vs-torch",
        action="store_true",
        help="every model against a plain PyTorch loop (needs torch: pip install -e '.[bench]')",
    )
    mode.add_argument(
        "--overhead",
        action="store_true",
        help="whole commands (cnn --quick, cnn --epochs 1, predict) timed as processes, "
        "phase by phase, first and second run (benchmarks.overhead)",
    )
    mode.add_argument(
        "--serve",
        action="store_true",
        help="the drawing page's server (python -m mnist_jax.serve) under load from many "
        "clients (benchmarks.serve_load)",
    )
    add = parser.add_argument
    add("--trials", type=int, default=8, help="--sweep: trials")
    add(
        "--strategies",
        default="unroll,vmap",
        help="--sweep: how trials share a step, comma-separated (unroll, vmap)",
    )
    add(
        "--models",
        default="all",
        help="--vs-torch: comma-separated models, or all: every model with a PyTorch baseline",
    )
    add(
        "--rounds",
        type=int,
        default=3,
        help="--vs-torch: alternating timed rounds; --overhead: repeats; --serve: loaded rounds",
    )
    add(
        "--round-seconds",
        type=float,
        default=3.0,
        help="--vs-torch: each round runs --steps steps at a time for at least this long",
    )
    add(
        "--checkpoint",
        type=pathlib.Path,
        metavar="RUN_DIR",
        help="--serve: the classifier run served (default: the one the page reads with)",
    )
    add("--clients", type=int, default=8, help="--serve: clients at once")
    add("--requests", type=int, default=200, help="--serve: requests per client")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults,
        prog="python -m experiments.benchmark",
        description=__doc__.split("\n")[0],
    )
    add_step_flags(parser)
    add_mode_flags(parser)
    return parser


def mode_of(args: argparse.Namespace) -> str:
    """The mode the flags ask for: a key of OUTPUTS."""
    return next((m for m in MODE_FLAGS if getattr(args, m)), "steps")


def data_flags(args: argparse.Namespace) -> list[str]:
    """--data-dir and --idx-dir as given, for the processes a mode starts."""
    return [
        *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
        *(["--idx-dir", str(args.idx_dir)] if args.idx_dir else []),
    ]


def run_steps(args) -> tuple[dict, str]:
    noise = NoiseConfig(args.noise, args.noise_level)
    steps = 5 if args.quick else args.steps
    result = step_throughput.run(
        steps, args.batch_size, noise, args.dtype, args.data_dir, args.idx_dir
    )
    return result, step_throughput.format_result(result)


def run_sweep(args) -> tuple[dict, str]:
    strategies = tuple(x for x in args.strategies.split(",") if x)
    result = sweep_throughput.run(
        2 if args.quick else args.trials,
        3 if args.quick else args.steps,
        args.batch_size,
        strategies,
        args.data_dir,
        args.idx_dir,
    )
    return result, sweep_throughput.format_result(result)


def run_vs_torch(args) -> tuple[dict, str]:
    result = vs_torch.run(
        vs_torch.parse_models(args.models),
        3 if args.quick else args.steps,
        1 if args.quick else args.rounds,
        args.data_dir,
        args.idx_dir,
        0.0 if args.quick else args.round_seconds,
    )
    return result, vs_torch.format_result(result)


def run_overhead(args) -> tuple[dict, str]:
    result = overhead.run(1 if args.quick else args.rounds, data_flags(args), args.quick)
    return result, overhead.format_result(result)


def run_serve(args) -> tuple[dict, str]:
    result = serve_load.run(
        args.checkpoint,
        2 if args.quick else args.clients,
        10 if args.quick else args.requests,
        1 if args.quick else args.rounds,
    )
    return result, serve_load.format_result(result)


RUNS = {
    "steps": run_steps,
    "sweep": run_sweep,
    "vs_torch": run_vs_torch,
    "overhead": run_overhead,
    "serve": run_serve,
}


def check(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str) -> None:
    """Every flag checked before any data loads or any worker starts: a usage error if bad."""
    if args.steps < 1 or args.batch_size < 1 or args.rounds < 1:
        parser.error("--steps, --batch-size and --rounds must be >= 1")
    if mode == "sweep":
        strategies = {x for x in args.strategies.split(",") if x}
        if args.trials < 1 or not strategies <= set(sweep_throughput.STRATEGIES):
            parser.error("--sweep needs --trials >= 1 and --strategies from unroll, vmap")
    if mode == "serve":
        if args.clients < 1 or args.requests < 1:
            parser.error("--serve needs --clients and --requests >= 1")
        return  # The server finds its run; no data is loaded here.
    if mode == "vs_torch" and importlib.util.find_spec("torch") is None:
        parser.error("--vs-torch needs PyTorch: pip install -e '.[bench]'")
    try:
        if mode == "vs_torch":
            vs_torch.parse_models(args.models)  # Before the data: a bad name fails at once.
        NoiseConfig(args.noise, args.noise_level)
        parallel.check_batch_size(args.batch_size, parallel.data_mesh())
        # First load decodes and fills the cache; the measured load is the second.
        sources.load_mnist(data_dir=args.data_dir, idx_dir=args.idx_dir)
    except (ValueError, data_lib.DataError) as e:
        parser.error(str(e))


def main(argv=None) -> dict:
    setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = mode_of(args)
    check(parser, args, mode)
    result, table = RUNS[mode](args)
    print(table)
    output = args.output or OUTPUT_DIR / OUTPUTS[mode]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {output}")
    return result


if __name__ == "__main__":
    main()
