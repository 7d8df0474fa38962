"""The experiments' command line: flags, the main skeleton, data, run dir, the final table.

An experiment module holds its config, the report's reference numbers and a
`main()` that calls `run_experiment`, or builds on its parts: `start`
parses the flags and turns a bad value into a usage error before any data
is loaded or anything compiled; `load_mnist_or_exit` loads the data;
`training_errors` ends a run that cannot go on with its message. The
report-vs-ours table is mnist_jax.reference's.
The library's other modules take configs and return results: argparse is
used here, under experiments/, and in `python -m mnist_jax.predict` only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import pathlib
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mnist_jax import data as data_lib
from mnist_jax import onednn, parallel, rundir, sources, timing
from mnist_jax.checkpoints import has_checkpoints
from mnist_jax.config import DATA_PLACEMENTS, SCHEDULES, ResumeError, TrainConfig
from mnist_jax.faults import (
    AFTER_FAILED_SAVE,
    NonFiniteLossError,
    SaveError,
    TrainingInterrupted,
    io_failure,
    quiet_background_failures,
)
from mnist_jax.figures import FILES as FIGURE_FILES
from mnist_jax.metrics import format_classification_report
from mnist_jax.models import get_model
from mnist_jax.pipeline import NOISE_KINDS, NoiseConfig
from mnist_jax.precision import DTYPES
from mnist_jax.reference import Reference, comparison_table
from mnist_jax.train import train_and_evaluate

DEFAULT_RUNS_DIR = pathlib.Path("runs")


class ShowDefaults(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default where argparse holds it and
    the help does not already say it (flags that override a config say
    theirs with `shown`); the description as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(
    name: str,
    description: str,
    config: TrainConfig,
    quick: TrainConfig,
    quick_help: str | None = None,
) -> argparse.ArgumentParser:
    """The flags of an experiment that trains `config` (`quick` with --quick);
    each flag's help shows the value it overrides."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}", description=description, formatter_class=ShowDefaults
    )
    add_recipe_flags(parser, config)
    add = parser.add_argument
    add(
        "--seed",
        type=int,
        help=f"seed for init, split, shuffling, dropout and noise {shown(config.seed)}",
    )
    add("--split-seed", type=int, help="seed of the train/validation split only (default: --seed)")
    add(
        "--noise",
        choices=NOISE_KINDS,
        help=f"noise added to training images on the fly {shown(config.noise.kind)}",
    )
    add("--noise-level", type=float, help=f"{NOISE_LEVEL_HELP} {shown(config.noise.level)}")
    add_run_flags(
        parser,
        name,
        quick_help=quick_help or describe_quick(config, quick),
        dtype=config.dtype,
        data_placement=config.data_placement,
    )
    return parser


def add_recipe_flags(parser: argparse.ArgumentParser, config: TrainConfig) -> None:
    """The training recipe's flags, each overriding a field of `config`:
    epochs, batch size, learning rate and its schedule, weight decay,
    augmentation, the weights' moving average and label smoothing."""
    add = parser.add_argument
    add("--epochs", type=int, help=f"training epochs {shown(config.epochs)}")
    add("--batch-size", type=int, help=f"training batch size {shown(config.batch_size)}")
    add(
        "--learning-rate",
        "--lr",
        type=float,
        help=f"peak learning rate {shown(config.learning_rate)}",
    )
    add("--weight-decay", type=float, help=f"L2 weight decay {shown(config.weight_decay)}")
    add(
        "--schedule",
        choices=SCHEDULES,
        help="learning rate over the run: constant, cosine decay to 0, or "
        f"onecycle (warm-up over 25 %% of it, then cosine) {shown(config.schedule)}",
    )
    add(
        "--rotation",
        type=float,
        metavar="DEGREES",
        help=f"augmentation: rotate each training image by up to this angle {shown(config.augment.rotation)}",
    )
    add(
        "--shift",
        type=float,
        metavar="FRACTION",
        help=f"augmentation: shift it by up to this fraction of its size {shown(config.augment.shift)}",
    )
    add(
        "--zoom",
        type=float,
        metavar="FRACTION",
        help=f"augmentation: scale it by 1 +- up to this {shown(config.augment.zoom)}",
    )
    add(
        "--elastic",
        type=float,
        metavar="ALPHA",
        help="augmentation: then distort it elastically with this strength in pixels, e.g. 34 "
        f"(Simard et al. 2003); 0: none {shown(config.augment.elastic)}",
    )
    add(
        "--elastic-sigma",
        type=float,
        metavar="PIXELS",
        help=f"the elastic distortion's smoothness {shown(config.augment.elastic_sigma)}",
    )
    add(
        "--ema-decay",
        type=float,
        help="validate, select and test a moving average of the weights with this decay, e.g. 0.999 "
        "(it warms up as (1 + step) / (10 + step), reaching the decay after about 9 / (1 - decay) "
        f"steps); 0: none {shown(config.ema_decay)}",
    )
    add(
        "--label-smoothing",
        type=float,
        metavar="ALPHA",
        help="train against labels smoothed by this much, e.g. 0.1 (validation and test losses stay plain "
        f"cross-entropy); 0: none {shown(config.label_smoothing)}",
    )


NOISE_LEVEL_HELP = "Gaussian or speckle sigma, or salt-and-pepper probability"


def shown(value) -> str:
    """How a flag's help shows the value it overrides."""
    return f"(default: {value})"


def describe_quick(config: TrainConfig, quick: TrainConfig) -> str:
    """What --quick runs, from the quick config: epochs and subset sizes."""
    train = "all" if quick.train_size is None else f"a stratified {quick.train_size:,}"
    test = "all 10,000" if quick.test_size is None else f"{quick.test_size:,}"
    return (
        f"a smoke test: {quick.epochs} epoch{'s' if quick.epochs != 1 else ''} (of {config.epochs}) on "
        f"{train} training images ({100 * quick.val_fraction:.0f} %% of them for validation), "
        f"scored on {test} test images"
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--data-dir, --idx-dir and --no-download: where MNIST comes from (mnist_jax.sources)."""
    add = parser.add_argument
    add(
        "--data-dir",
        type=pathlib.Path,
        help="tfds data dir holding mnist/3.0.1 (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    add(
        "--idx-dir",
        type=pathlib.Path,
        help="folder with the four MNIST IDX files, gzipped or not, e.g. Kaggle's (default: none; "
        "takes precedence over --data-dir)",
    )
    add(
        "--no-download",
        action="store_true",
        help="never download MNIST (default: download when missing)",
    )


def add_run_flags(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    quick_help: str,
    resume_help: str = "continue the run in --workdir (default: the newest) from its newest "
    "checkpoint; starts it if nothing is saved yet, and does nothing if it "
    "is finished",
    dtype: str = "float32",
    data_placement: str = "auto",
) -> None:
    """--workdir, the data flags, --dtype, --data-placement, --resume,
    --rescore, --quick, --no-progress and --debug."""
    add = parser.add_argument
    add(
        "--dtype",
        choices=tuple(DTYPES),
        help=f"compute dtype; bfloat16 keeps parameters, optimizer state and loss in float32 {shown(dtype)}",
    )
    add(
        "--data-placement",
        choices=DATA_PLACEMENTS,
        help="where the training set lives: on the devices, epochs as lax.scan ('device'), or "
        "on the host, one call per step ('host'); 'auto': device on a GPU or TPU where it fits, "
        f"else host {shown(data_placement)}",
    )
    add(
        "--workdir",
        type=pathlib.Path,
        help=f"run directory (default: a new {DEFAULT_RUNS_DIR}/{name}/<date-time>; "
        "with --resume, the newest run there)",
    )
    add_data_flags(parser)
    add("--resume", action="store_true", help=resume_help)
    add(
        "--rescore",
        action="store_true",
        help="with --resume on a finished run: score its best checkpoint again and rewrite its results "
        "(its training times are kept)",
    )
    add("--quick", action="store_true", help=quick_help)
    add(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: a bar on a terminal, a line per epoch otherwise)",
    )
    add(
        "--debug",
        action="store_true",
        help="show the libraries' logs and the full traceback of an error (default: one line per error)",
    )


def config_from_args(
    args: argparse.Namespace, config: TrainConfig, quick: TrainConfig
) -> TrainConfig:
    """The experiment's (or quick) defaults, overridden by the flags given.

    Raises ValueError for a bad value, including a batch size that does not
    split across the devices.
    """
    base = quick if args.quick else config
    overrides = {
        field: getattr(args, field)
        for field in (
            "epochs",
            "batch_size",
            "learning_rate",
            "weight_decay",
            "seed",
            "split_seed",
            "dtype",
            "data_placement",
            "ema_decay",
            "label_smoothing",
            "schedule",
        )
        if getattr(args, field, None) is not None
    }
    augment = {
        f: getattr(args, f)
        for f in ("rotation", "shift", "zoom", "elastic", "elastic_sigma")
        if getattr(args, f, None) is not None
    }
    if augment:
        overrides["augment"] = dataclasses.replace(base.augment, **augment)
    kind, level = getattr(args, "noise", None), getattr(args, "noise_level", None)
    if kind is not None or level is not None:
        overrides["noise"] = NoiseConfig(
            kind=kind if kind is not None else base.noise.kind,
            level=level if level is not None else base.noise.level,
        )
    config = dataclasses.replace(base, **overrides)
    parallel.check_batch_size(
        config.batch_size, parallel.data_mesh(), "training batch size (--batch-size)"
    )
    return config


def check_at_least_one(args: argparse.Namespace, *fields: str) -> None:
    """ValueError naming the flag for each of `fields` given below 1."""
    for field in fields:
        value = getattr(args, field)
        if value is not None and value < 1:
            raise ValueError(f"--{field.replace('_', '-')} must be >= 1, got {value}")


def resolve_workdir(
    name: str,
    workdir: pathlib.Path | None,
    resume: bool,
    is_run: Callable[[pathlib.Path], bool] = has_checkpoints,
) -> pathlib.Path:
    """The run directory: named, the newest one to resume (a dir that
    `is_run` accepts), or a new one (with a notice, when --resume finds none)."""
    if workdir is not None:
        return workdir
    root = DEFAULT_RUNS_DIR / name
    if resume:
        runs = sorted(p for p in root.glob("*") if is_run(p)) if root.is_dir() else []
        if runs:
            return runs[-1]
    new = root / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if resume:
        print(f"--resume: no run saved under {root} yet; starting a new one in {new}", flush=True)
    return new


def finished_run(
    args: argparse.Namespace,
    workdir: pathlib.Path,
    final_file: str = rundir.SUMMARY,
    complete: Callable[[dict], bool] = lambda results: True,
) -> dict | None:
    """On --resume of a finished run (its `final_file` written, and
    `complete` by its contents) without --rescore: says so and returns that
    file's contents, so that the experiment ends with status 0 and nothing
    is trained, scored or written. None otherwise."""
    path = pathlib.Path(workdir).expanduser() / final_file
    if not args.resume or args.rescore or not path.is_file():
        return None
    results = json.loads(path.read_text())
    if not complete(results):
        return None
    print(
        f"{path.parent} is a finished run ({final_file} written); nothing to do. "
        "Pass --rescore to score its best checkpoint again.",
        flush=True,
    )
    return results


def start(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    prepare: Callable[[argparse.Namespace], Any] = lambda args: None,
) -> tuple[argparse.Namespace, Any]:
    """The start of every experiment's main: the flags parsed, `setup()`,
    then `prepare(args)` (configs, the run dir: whatever checks the flags);
    a ValueError or ResumeError it raises, or a bad MNIST_JAX_ONEDNN, is a
    usage error (exit status 2) with its message, config fields named as
    their flags. --rescore implies --resume. Returns (args, what prepare
    returned)."""
    args = parser.parse_args(argv)
    if getattr(args, "rescore", False):
        args.resume = True
    setup(debug=getattr(args, "debug", False))
    try:
        onednn.wanted()  # A bad MNIST_JAX_ONEDNN is told before anything runs.
        return args, prepare(args)
    except (ValueError, ResumeError) as e:
        parser.error(as_flags(str(e), parser))


def as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """`message` with the config fields it blames named as the parser's
    flags: "batch_size must be >= 1" -> "--batch-size must be >= 1"."""
    for option in parser._option_string_actions:
        if option.startswith("--"):
            field = option.removeprefix("--").replace("-", "_")
            message = re.sub(
                rf"(?<![\w-]){field}(?= must\b)|(?<=unknown ){field}\b", option, message
            )
    return message


def setup(debug: bool = False) -> None:
    """Logging, and jax.distributed where the environment asks for it
    (mnist_jax.parallel.initialize_distributed): before anything uses JAX.

    Without `debug`, the libraries' own logs (absl, where Orbax reports a
    failed background save with its traceback; asyncio) show errors only
    after this project has said, in one line, what happened."""
    parallel.initialize_distributed()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet = logging.DEBUG if debug else logging.CRITICAL
    for name, level in (
        ("absl", quiet),
        ("asyncio", quiet),
        ("jax._src.xla_bridge", logging.WARNING),
        ("orbax", logging.WARNING),
    ):
        logging.getLogger(name).setLevel(level)
    if not debug:
        quiet_background_failures()


@contextlib.contextmanager
def training_errors(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """How a command-line run ends when training cannot go on: a run that
    cannot be resumed as asked is a usage error (status 2); a NaN loss or a
    save that failed (a full disk, a read-only or vanished folder) exits
    with status 1 and a SIGINT/SIGTERM with 128 + its number, each with its
    message (which checkpoint holds what) and no traceback unless --debug."""
    try:
        yield
    except ResumeError as e:
        parser.error(str(e))
    except NonFiniteLossError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from e
    except OSError as e:
        if args.debug or io_failure(e) is None:
            raise
        print(f"error: {save_failed_message(e)}", file=sys.stderr, flush=True)
        # The libraries' background writers fail too as the process ends
        # (TensorBoard's event thread, Orbax's): consequences, already told.
        threading.excepthook = lambda hook_args: None
        sys.unraisablehook = lambda hook_args: None
        raise SystemExit(1) from e
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from e


def save_failed_message(error: OSError) -> str:
    """One line for a failed write: a SaveError says it all; another write
    (metrics.json, a figure) names its file."""
    if isinstance(error, SaveError):
        return str(error)
    where = f" {error.filename}" if error.filename else ""
    return f"could not write{where} ({io_failure(error)}); the run's checkpoints are intact. {AFTER_FAILED_SAVE}"


def load_mnist_or_exit(args: argparse.Namespace) -> data_lib.MNIST:
    """MNIST from the data flags; a DataError is printed and exits with status 1."""
    try:
        return sources.load_mnist(
            data_dir=args.data_dir, idx_dir=args.idx_dir, download=not args.no_download
        )
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e


def load_splits(args: argparse.Namespace, config: TrainConfig) -> tuple[data_lib.Splits, str]:
    mnist = load_mnist_or_exit(args)
    splits = data_lib.make_splits(
        mnist,
        val_fraction=config.val_fraction,
        seed=config.data_seed,
        train_size=config.train_size,
        test_size=config.test_size,
    )
    return splits, mnist.source


def print_results(
    name: str, summary: dict, reference: Reference, workdir: pathlib.Path, title: str = "this run"
) -> None:
    """The per-class report (classifiers), then the report-vs-ours table."""
    print()
    if "per_class" in summary["test"]:
        print(format_classification_report(summary["test"]))
    best = summary["evaluated_checkpoint"]
    print(
        f"\nTest set ({summary['data']['test']} images), best checkpoint by "
        f"{best['kind'].removeprefix('best_').replace('_', ' ')} (epoch {best['epoch']}):"
    )
    print(comparison_table(reference, summary, title))
    figures = [f for f in FIGURE_FILES if (workdir / f).exists()]
    print(
        f"\nmetrics.json, {', '.join(figures + ['checkpoints/', 'tensorboard/'])} are in {workdir}"
    )


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
    parser = build_parser(name, description, config, quick)

    def prepare(args):
        run_config = config_from_args(args, config, quick)
        return (
            run_config,
            get_model(run_config.model, **(model_kwargs or {})),
            resolve_workdir(name, args.workdir, args.resume),
        )

    args, (config, model, workdir) = start(parser, argv, prepare)
    if (done := finished_run(args, workdir)) is not None:
        print_results(name, done, reference, workdir)
        return done
    phases = timing.Phases()
    with phases("data"):
        splits, source = load_splits(args, config)
    print(
        f"{name}: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} "
        f"examples from {source}; run dir {workdir}",
        flush=True,
    )
    with training_errors(parser, args):
        summary = train_and_evaluate(
            config,
            model,
            splits,
            workdir,
            experiment=name,
            resume=args.resume,
            progress=not args.no_progress,
            phases=phases,
            extra={"data_source": source, "reference": dataclasses.asdict(reference)},
        )
    print_results(name, summary, reference, workdir)
    return summary
