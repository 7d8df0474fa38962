"""The experiments' flags: built from the config's fields, read back into a config.

Every TrainConfig field of a flag group (mnist_jax.fields) is a flag:
`build_parser` gives an experiment the "recipe" flags (`add_recipe_flags`),
the seeds' and the noise's ("experiment") and the run's (`add_run_flags`:
dtype, data placement, the run directory, the data, --resume, --quick, ...);
each help shows the value it overrides, --quick's what the quick config
runs. `config_from_args` turns the flags given into the config, and
`as_flags` names config fields as their flags in an error message.
"""

from __future__ import annotations

import argparse
import pathlib
import re

from mnist_jax import fields, parallel
from mnist_jax.config import TrainConfig
from mnist_jax.rundir import DEFAULT_RUNS_DIR


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
    """The flags of an experiment that trains `config` (`quick` with --quick):
    the recipe's, the seeds' and the noise's, and the run's; each flag's
    help shows the value it overrides.

    Args:
      name: the experiment's module name under experiments/: the parser's
        prog is `python -m experiments.<name>`, --workdir's default a new
        runs/<name>/<date-time>.
      description: the command's --help description, shown as written.
      config: the experiment's config, whose values the flags override.
      quick: the config --quick runs instead.
      quick_help: --quick's help; None: what `quick` runs (describe_quick).

    Returns:
      The argparse parser.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}", description=description, formatter_class=ShowDefaults
    )
    add_config_flags(parser, config, "recipe")
    add_config_flags(parser, config, "experiment")
    add_run_flags(
        parser, name, quick_help=quick_help or describe_quick(config, quick), config=config
    )
    return parser


def add_config_flags(parser: argparse.ArgumentParser, config: TrainConfig, group: str) -> None:
    """A flag for each field of `config` in flag `group` (mnist_jax.fields):
    "recipe" (epochs, batch size, learning rate and its schedule, weight
    decay, augmentation, the weights' moving average, label smoothing),
    "experiment" (the seeds, the noise) or "run" (dtype, data placement);
    its help is the field's, with the value in `config` it overrides."""
    for flag in fields.flags(type(config)):
        if flag.group == group:
            text = (
                flag.help if "(default" in flag.help else f"{flag.help} {shown(flag.value(config))}"
            )
            parser.add_argument(
                *flag.names,
                type=flag.type,
                choices=flag.choices,
                metavar=flag.metavar,
                help=text.replace("%", "%%"),
            )


def add_recipe_flags(parser: argparse.ArgumentParser, config: TrainConfig) -> None:
    """The training recipe's flags, each overriding a field of `config`."""
    add_config_flags(parser, config, "recipe")


def shown(value) -> str:
    """How a flag's help shows the value it overrides."""
    return f"(default: {value})"


def describe_quick(config: TrainConfig, quick: TrainConfig) -> str:
    """What --quick runs, from the quick config: epochs and subset sizes."""
    train = "all" if quick.train_size is None else f"a stratified {quick.train_size:,}"
    test = "all 10,000" if quick.test_size is None else f"{quick.test_size:,}"
    return (
        f"a smoke test: {quick.epochs} epoch{'s' if quick.epochs != 1 else ''} "
        f"(of {config.epochs}) on "
        f"{train} training images ({100 * quick.val_fraction:.0f} %% of them for validation), "
        f"scored on {test} test images"
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--data-dir, --idx-dir and --no-download: where MNIST comes from (mnist_jax.sources)."""
    add = parser.add_argument
    add(
        "--data-dir",
        type=pathlib.Path,
        help="tfds data dir holding mnist/3.0.1 "
        "(default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
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
    config: TrainConfig = TrainConfig(),
) -> None:
    """The run flags of `config` (--dtype, --data-placement), --workdir, the
    data flags, --resume, --rescore, --quick, --no-progress and --debug.

    Args:
      parser: the parser the flags are added to.
      name: the experiment's name: --workdir's default is a new
        runs/<name>/<date-time>.
      quick_help: --quick's help.
      resume_help: --resume's help.
      config: the config whose "run" fields become flags; its values show
        as their defaults.
    """
    add_config_flags(parser, config, "run")
    add = parser.add_argument
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
        help="with --resume on a finished run: score its best checkpoint again and rewrite its "
        "results (its training times are kept)",
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
        help="show the libraries' logs and the full traceback of an error "
        "(default: one line per error)",
    )


def config_from_args(
    args: argparse.Namespace, config: TrainConfig, quick: TrainConfig
) -> TrainConfig:
    """The experiment's (or quick) defaults, overridden by the flags given.

    Raises ValueError for a bad value, including a batch size that does not
    split across the devices.
    """
    base = quick if args.quick else config
    given = {f.path: getattr(args, f.dest, None) for f in fields.flags(type(base))}
    config = fields.replace_paths(base, {path: v for path, v in given.items() if v is not None})
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
