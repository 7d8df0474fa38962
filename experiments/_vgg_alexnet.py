"""The command line shared by experiments.vgg16 and experiments.alexnet
(report 004's transfer learning; the library side is mnist_jax.frozen_features)."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence

from mnist_jax import data as data_lib
from mnist_jax import frozen_features, pretrained
from mnist_jax.cli import (
    QUICK_NOTE,
    finished_run,
    load_splits,
    print_results,
    resolve_workdir,
    run_options,
    start,
    training_errors,
)
from mnist_jax.config import TrainConfig
from mnist_jax.flags import build_parser, config_from_args
from mnist_jax.models.vgg_alexnet import ARCHITECTURES, TransferNet
from mnist_jax.reference import Reference
from mnist_jax.train import train_and_evaluate


def parser_for(
    name: str,
    arch: str,
    description: str,
    config: TrainConfig,
    quick: TrainConfig,
    quick_image_size: int,
):
    """The experiment's flags (mnist_jax.flags.build_parser), with
    --weights, --image-size and --no-cache-features.

    Args:
      name: the experiment's module name under experiments/.
      arch: the architecture, a key of models.vgg_alexnet.ARCHITECTURES.
      description: the command's --help description.
      config: the experiment's config; the flags override it.
      quick: the config --quick runs instead.
      quick_image_size: the input size of --quick, named in the help.

    Returns:
      The argparse parser.
    """
    parser = build_parser(name, description, config, quick)
    parser.add_argument(
        "--weights",
        default=None,
        help="'torchvision' (download the ImageNet weights), 'none' (random init), or a "
        ".pth/.safetensors file with torchvision's keys (default: torchvision; "
        "--quick: none)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"resize inputs to this size (default 224, as the report; --quick: "
        f"{quick_image_size}; at least {ARCHITECTURES[arch].min_image_size})",
    )
    parser.add_argument(
        "--no-cache-features",
        action="store_true",
        help="run the frozen layers at every step instead of once per image (default: once, "
        "without --noise or augmentation)",
    )
    return parser


def _prepare(
    args, *, name: str, arch: str, config: TrainConfig, quick: TrainConfig, quick_image_size: int
):
    """(the run's config, the model, the weights asked for, the run directory)
    from the flags; ValueError for a bad value (cli.start makes it a usage error)."""
    weights_choice = args.weights or ("none" if args.quick else "torchvision")
    default_size = quick_image_size if args.quick else 224
    image_size = default_size if args.image_size is None else args.image_size
    # Quick runs shrink the classifier (unless real weights need its width).
    hidden = 256 if args.quick and weights_choice == "none" else 4096
    run_config = config_from_args(args, config, quick)
    model = TransferNet(arch=arch, image_size=image_size, hidden=hidden)
    if image_size < ARCHITECTURES[arch].min_image_size:
        raise ValueError(
            f"{arch} needs --image-size >= {ARCHITECTURES[arch].min_image_size}, got {image_size}"
        )
    return run_config, model, weights_choice, resolve_workdir(name, args.workdir, args.resume)


def _train(config, model, splits, workdir, options, weights, cache: bool) -> dict:
    """The classifier trained on the frozen layers' features: computed once
    (`cache`), or run every step (from `weights`, else their random init)."""
    feature_params = frozen_features.feature_params_of(model, weights, config.seed)
    if cache:
        return frozen_features.train_on_cached_features(
            config, model, splits, workdir, options, weights=weights, feature_params=feature_params
        )
    initial = weights or {"features": feature_params}
    return train_and_evaluate(
        config, model, splits, workdir, dataclasses.replace(options, pretrained=initial)
    )


def main(
    name: str,
    arch: str,
    description: str,
    config: TrainConfig,
    quick: TrainConfig,
    reference: Reference,
    quick_image_size: int,
    argv: Sequence[str] | None = None,
) -> dict:
    """The experiment's main: parses the flags, trains the classifier on the
    frozen features (computed once and cached, or run every step), prints
    the report-vs-ours table, and both wall times where features are cached.

    Args:
      name: the experiment's module name under experiments/.
      arch: the architecture, a key of models.vgg_alexnet.ARCHITECTURES.
      description: the command's --help description.
      config: the experiment's config; the flags override it.
      quick: the config --quick runs instead.
      reference: the report's published numbers.
      quick_image_size: the input size of --quick (224 otherwise).
      argv: the command-line arguments; None: sys.argv[1:].

    Returns:
      metrics.json's contents (and the states, for a run trained now).
    """
    parser = parser_for(name, arch, description, config, quick, quick_image_size)

    prepare = functools.partial(
        _prepare,
        name=name,
        arch=arch,
        config=config,
        quick=quick,
        quick_image_size=quick_image_size,
    )
    args, (config, model, weights_choice, workdir) = start(parser, argv, prepare)
    if (done := finished_run(args, workdir)) is not None:
        print_results(name, done, reference, workdir)
        return done
    try:
        weights, weights_label = frozen_features.resolve_weights(arch, weights_choice)
        splits, source = load_splits(args, config)
    except (data_lib.DataError, pretrained.WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    cache = not args.no_cache_features and not config.step_config().varies_inputs
    print(
        f"{name}: {arch} at {model.image_size}x{model.image_size}, weights: {weights_label}; "
        f"train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} from {source}; "
        f"{'cached features' if cache else 'frozen features run every step'}; run dir {workdir}",
        flush=True,
    )
    extra = {
        "data_source": source,
        "reference": dataclasses.asdict(reference),
        "weights": weights_label,
        "image_size": model.image_size,
        "classifier_hidden": model.hidden,
        "cached_features": cache,
    }
    with training_errors(parser, args):
        summary = _train(
            config, model, splits, workdir, run_options(name, args, extra=extra), weights, cache
        )
    print_results(
        name, summary, reference, workdir, "this run" if weights else "this run (random init)"
    )
    if args.quick:
        print(QUICK_NOTE)
    if cache:
        print(
            f"wall time: features {summary['feature_seconds']:.1f} s + classifier "
            f"{summary['classifier_seconds']:.1f} s"
        )
    return summary
