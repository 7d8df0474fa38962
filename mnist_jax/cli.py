"""The experiments' command line: the main skeleton, data, run dir, the final table.

An experiment module holds its config, the report's reference numbers and a
`main()` that calls `run_experiment`, or builds on its parts: `start`
parses the flags (mnist_jax.flags) and turns a bad value into a usage
error before any data is loaded or anything compiled; `load_mnist_or_exit`
loads the data; `training_errors` ends a run that cannot go on with its
message. The report-vs-ours table is mnist_jax.reference's.
The library's other modules take configs and return results: argparse is
used here, under experiments/, and in `python -m mnist_jax.predict` and
`python -m mnist_jax.serve` only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import pathlib
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mnist_jax import data as data_lib
from mnist_jax import onednn, parallel, rundir, sources, timing
from mnist_jax.checkpoints import has_checkpoints
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.faults import (
    AFTER_FAILED_SAVE,
    NonFiniteLossError,
    SaveError,
    TrainingInterrupted,
    io_failure,
    quiet_background_failures,
)
from mnist_jax.figures import FILES as FIGURE_FILES
from mnist_jax.flags import DEFAULT_RUNS_DIR, as_flags, build_parser, config_from_args
from mnist_jax.metrics import format_classification_report
from mnist_jax.models import get_model
from mnist_jax.options import RunOptions
from mnist_jax.reference import Reference, comparison_table
from mnist_jax.train import train_and_evaluate


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
    return (
        f"could not write{where} ({io_failure(error)}); the run's checkpoints are intact. "
        f"{AFTER_FAILED_SAVE}"
    )


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


QUICK_NOTE = (
    "--quick is a smoke test: a few epochs on a small subset check that the code runs end to "
    "end; its accuracy says nothing about the model (the deeper models barely start to learn "
    "in it). Run without --quick for the report's numbers."
)


def run_options(name: str, args: argparse.Namespace, **fields) -> RunOptions:
    """The RunOptions of experiment `name` from its flags (--resume,
    --no-progress), with `fields`."""
    return RunOptions(experiment=name, resume=args.resume, progress=not args.no_progress, **fields)


def print_results(
    name: str, summary: dict, reference: Reference, workdir: pathlib.Path, title: str = "this run"
) -> None:
    """The per-class report (classifiers), then the report-vs-ours table.

    Args:
      name: the experiment's name (not part of what is printed).
      summary: the run's metrics.json contents (rundir.make_summary): its
        "test" metrics, "evaluated_checkpoint" and "data" sizes are printed.
      reference: the report's published numbers.
      workdir: the run directory; the figures it holds are listed.
      title: the heading of this run's column of the table.
    """
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
    """Parses flags, trains and evaluates, prints the report-vs-ours table.

    Args:
      name: the experiment's module name under experiments/ (the command's
        prog, runs/<name>/ and the run's "experiment").
      description: the command's --help description.
      config: the experiment's config; the flags override it.
      quick: the config --quick runs instead.
      reference: the report's published numbers, printed beside the run's
        and saved in metrics.json.
      model_kwargs: keyword arguments of models.get_model besides the
        config's model name; None: none.
      argv: the command-line arguments; None: sys.argv[1:].

    Returns:
      train.train_and_evaluate's result (metrics.json's contents plus
      "state" and "best_state"); on --resume of a finished run, its
      metrics.json as saved.
    """
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
        extra = {"data_source": source, "reference": dataclasses.asdict(reference)}
        options = run_options(name, args, phases=phases, extra=extra)
        summary = train_and_evaluate(config, model, splits, workdir, options)
    print_results(name, summary, reference, workdir)
    if args.quick:
        print(QUICK_NOTE)
    return summary
