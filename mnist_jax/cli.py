"""The experiments' command line: flags, the main skeleton, data, run dir, the final table.

An experiment module holds its config, the report's reference numbers and a
`main()` that calls `run_experiment`, or builds on its parts: `start`
parses the flags and turns a bad value into a usage error before any data
is loaded or anything compiled; `load_mnist_or_exit` loads the data;
`training_errors` ends a run that cannot go on with its message.
The library's other modules take configs and return results: argparse is
used here, under experiments/, and in `python -m mnist_jax.predict` only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import pathlib
import sys
from typing import Any, Callable, Sequence

from mnist_jax import data as data_lib, parallel
from mnist_jax import sources
from mnist_jax.checkpoints import has_checkpoints
from mnist_jax.figures import FILES as FIGURE_FILES
from mnist_jax.metrics import format_classification_report
from mnist_jax.models import get_model
from mnist_jax.pipeline import NOISE_KINDS, NoiseConfig
from mnist_jax.precision import DTYPES
from mnist_jax.config import DATA_PLACEMENTS, ResumeError, TrainConfig
from mnist_jax.faults import NonFiniteLossError, TrainingInterrupted
from mnist_jax.train import train_and_evaluate

DEFAULT_RUNS_DIR = pathlib.Path("runs")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A report's published result; None where the report gives no number."""

    source: str  # Which report, and where it ran.
    accuracy: float | None = None  # Fraction in [0, 1].
    f1_macro: float | None = None
    loss: float | None = None
    mse: float | None = None  # Reconstruction MSE per pixel, [0, 1] images.
    psnr: float | None = None  # dB.
    ssim: float | None = None
    train_seconds: float | None = None
    device: str = "GPU (Colab/Kaggle, CUDA)"


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    add = parser.add_argument
    add("--epochs", type=int, help="training epochs")
    add("--batch-size", type=int, help="training batch size")
    add("--learning-rate", "--lr", type=float, help="peak learning rate")
    add("--weight-decay", type=float, help="L2 weight decay")
    add("--seed", type=int, help="seed for init, split, shuffling, dropout and noise")
    add("--split-seed", type=int, help="seed of the train/validation split only (default: --seed)")
    add("--noise", choices=NOISE_KINDS, help="noise added to training images on the fly")
    add("--noise-level", type=float, help="Gaussian sigma, or salt-and-pepper probability")
    add_run_flags(parser, name)
    return parser


def add_run_flags(parser: argparse.ArgumentParser, name: str,
                  resume_help: str = "continue the run in --workdir from its newest checkpoint",
                  quick_help: str = "a small stratified subset and 1 epoch: a smoke test") -> None:
    """--workdir, the data flags, --dtype, --data-placement, --resume, --quick and --no-progress."""
    add = parser.add_argument
    add("--dtype", choices=tuple(DTYPES),
        help="compute dtype (default float32); bfloat16 keeps parameters, optimizer state and "
             "loss in float32")
    add("--data-placement", choices=DATA_PLACEMENTS,
        help="where the training set lives: on the devices, epochs as lax.scan ('device'), or "
             "on the host, one call per step ('host'); default 'auto': device where it fits")
    add("--workdir", type=pathlib.Path,
        help=f"run directory (default: a new {DEFAULT_RUNS_DIR}/{name}/<time>; "
             "with --resume, the newest run there)")
    add("--data-dir", type=pathlib.Path, help="tfds data dir holding mnist/3.0.1 (default $TFDS_DATA_DIR)")
    add("--idx-dir", type=pathlib.Path, help="folder with the four MNIST IDX files (e.g. Kaggle's)")
    add("--no-download", action="store_true", help="never download MNIST")
    add("--resume", action="store_true", help=resume_help)
    add("--quick", action="store_true", help=quick_help)
    add("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, config: TrainConfig, quick: TrainConfig) -> TrainConfig:
    """The experiment's (or quick) defaults, overridden by the flags given.

    Raises ValueError for a bad value, including a batch size that does not
    split across the devices.
    """
    base = quick if args.quick else config
    overrides = {
        field: getattr(args, field)
        for field in ("epochs", "batch_size", "learning_rate", "weight_decay", "seed", "split_seed", "dtype",
                      "data_placement")
        if getattr(args, field, None) is not None
    }
    if args.noise is not None or args.noise_level is not None:
        overrides["noise"] = NoiseConfig(
            kind=args.noise if args.noise is not None else base.noise.kind,
            level=args.noise_level if args.noise_level is not None else base.noise.level,
        )
    config = dataclasses.replace(base, **overrides)
    parallel.check_batch_size(config.batch_size, parallel.data_mesh(), "training batch size")
    return config


def resolve_workdir(name: str, workdir: pathlib.Path | None, resume: bool,
                    is_run: Callable[[pathlib.Path], bool] = has_checkpoints) -> pathlib.Path:
    """The run directory: named, the newest one to resume (a dir that
    `is_run` accepts), or a new one."""
    if workdir is not None:
        return workdir
    root = DEFAULT_RUNS_DIR / name
    if resume:
        runs = sorted(p for p in root.glob("*") if is_run(p)) if root.is_dir() else []
        if not runs:
            raise ResumeError(f"--resume: no run with checkpoints under {root}; name one with --workdir.")
        return runs[-1]
    return root / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def comparison_table(reference: Reference, summary: dict, title: str = "this run") -> str:
    """The report's numbers beside this run's, as a Markdown table.

    Rows are the metrics this run measured (accuracy, F1 and loss for
    classifiers; MSE, PSNR and SSIM for autoencoders), then time and device.
    """
    test = summary["test"]
    devices = summary["devices"]
    ours_device = f"{devices['platform']} x{devices['count']} ({', '.join(devices['kinds'])})"
    candidates = [
        ("test accuracy", "accuracy", _percent),
        ("test F1 (macro)", "f1_macro", lambda v: _number(v, ".4f")),
        ("test loss", "loss", lambda v: _number(v, ".4f")),
        ("test MSE", "mse", lambda v: _number(v, ".5f")),
        ("test PSNR (dB)", "psnr", lambda v: _number(v, ".2f")),
        ("test SSIM", "ssim", lambda v: _number(v, ".4f")),
    ]
    rows = [(label, fmt(getattr(reference, key)), fmt(test[key]))
            for label, key, fmt in candidates if key in test]
    rows += [
        ("training time (s)", _number(reference.train_seconds, ".2f"), _number(summary["train_seconds"], ".2f")),
        # Compiled ahead of the clock: the report's PyTorch has nothing to compile.
        ("compile time (s)", "—", _number(summary.get("compile_seconds"), ".2f")),
        ("device", reference.device, ours_device),
    ]
    header = ("", f"report ({reference.source})", title)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def start(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
          prepare: Callable[[argparse.Namespace], Any] = lambda args: None) -> tuple[argparse.Namespace, Any]:
    """The start of every experiment's main: `setup()`, the flags parsed,
    then `prepare(args)` (configs, the run dir: whatever checks the flags);
    a ValueError or ResumeError it raises is a usage error (exit status 2)
    with its message. Returns (args, what prepare returned)."""
    setup()
    args = parser.parse_args(argv)
    try:
        return args, prepare(args)
    except (ValueError, ResumeError) as e:
        parser.error(str(e))


def setup() -> None:
    """Logging, and jax.distributed where the environment asks for it
    (mnist_jax.parallel.initialize_distributed): before anything uses JAX."""
    parallel.initialize_distributed()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def training_errors(parser: argparse.ArgumentParser):
    """How a command-line run ends when training cannot go on: a run that
    cannot be resumed as asked is a usage error (status 2); a NaN loss
    exits with status 1 and a SIGINT/SIGTERM with 128 + its number, each
    with its message (which checkpoint holds what) and no traceback."""
    try:
        yield
    except ResumeError as e:
        parser.error(str(e))
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from e


def load_mnist_or_exit(args: argparse.Namespace) -> data_lib.MNIST:
    """MNIST from the data flags; a DataError is printed and exits with status 1."""
    try:
        return sources.load_mnist(data_dir=args.data_dir, idx_dir=args.idx_dir, download=not args.no_download)
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e


def load_splits(args: argparse.Namespace, config: TrainConfig) -> tuple[data_lib.Splits, str]:
    mnist = load_mnist_or_exit(args)
    splits = data_lib.make_splits(
        mnist, val_fraction=config.val_fraction, seed=config.data_seed,
        train_size=config.train_size, test_size=config.test_size,
    )
    return splits, mnist.source


def print_results(name: str, summary: dict, reference: Reference, workdir: pathlib.Path,
                  title: str = "this run") -> None:
    """The per-class report (classifiers), then the report-vs-ours table."""
    print()
    if "per_class" in summary["test"]:
        print(format_classification_report(summary["test"]))
    best = summary["evaluated_checkpoint"]
    print(f"\nTest set ({summary['data']['test']} images), best checkpoint by "
          f"{best['kind'].removeprefix('best_').replace('_', ' ')} (epoch {best['epoch']}):")
    print(comparison_table(reference, summary, title))
    figures = [f for f in FIGURE_FILES if (workdir / f).exists()]
    print(f"\nmetrics.json, {', '.join(figures + ['checkpoints/', 'tensorboard/'])} are in {workdir}")


def run_experiment(
    name: str,
    description: str,
    config: TrainConfig,
    quick: TrainConfig,
    reference: Reference,
    model_kwargs: dict | None = None,
    argv: Sequence[str] | None = None,
) -> dict:
    """Parses flags, trains and evaluates, prints the report-vs-ours table."""
    parser = build_parser(name, description)

    def prepare(args):
        run_config = config_from_args(args, config, quick)
        return run_config, get_model(run_config.model, **(model_kwargs or {})), \
            resolve_workdir(name, args.workdir, args.resume)

    args, (config, model, workdir) = start(parser, argv, prepare)
    splits, source = load_splits(args, config)
    print(f"{name}: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} "
          f"examples from {source}; run dir {workdir}", flush=True)
    with training_errors(parser):
        summary = train_and_evaluate(
            config, model, splits, workdir, experiment=name, resume=args.resume,
            progress=not args.no_progress,
            extra={"data_source": source, "reference": dataclasses.asdict(reference)},
        )
    print_results(name, summary, reference, workdir)
    return summary
