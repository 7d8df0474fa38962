"""Transfer learning from VGG16 / AlexNet (report 004): shared by
experiments.vgg16 and experiments.alexnet.

The feature layers are frozen and deterministic, so by default their
outputs are computed once per image and only the classifier trains, on
those cached features: the same numbers as running the frozen layers every
step, far faster. With noise on the inputs the features change every step,
so the full network runs (classifier trainable, features frozen through
optax), as it does with --no-cache-features.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import data as data_lib, parallel, pipeline, pretrained
from mnist_jax.experiment import (Reference, build_parser, config_from_args, load_splits,
                                  print_results, resolve_workdir, setup, training_errors)
from mnist_jax.models.transfer import ARCHITECTURES, TransferNet, head_for
from mnist_jax.train import ResumeError, TrainConfig, train_and_evaluate, write_json


def resolve_weights(arch: str, choice: str) -> tuple[dict | None, str]:
    """(torchvision weights as Flax params or None, a label for every output).

    choice: "torchvision" (download torchvision's file, once), "none"
    (random initialisation), or a path to a .pth / safetensors file.
    """
    if choice == "none":
        return None, "none (random init, features not pretrained)"
    path = pretrained.fetch_weights(arch) if choice == "torchvision" else pathlib.Path(choice)
    return pretrained.to_flax(pretrained.load_state_dict(path), arch, num_classes=10), \
        f"ImageNet, torchvision ({path.name})"


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """`(feature_params, uint8 images (B, 28, 28, 1)) -> (B, h, w, C)` on `mesh`:
    batches split across its devices, the features whole on every process."""

    jitted: Callable
    mesh: jax.sharding.Mesh

    def __call__(self, feature_params: dict, images: np.ndarray) -> jax.Array:
        return self.jitted(parallel.replicate(feature_params, self.mesh),
                           parallel.shard_batch(images, self.mesh))


def make_feature_extractor(model: TransferNet, mesh: jax.sharding.Mesh | None = None) -> FeatureExtractor:
    """The frozen layers of `model`, jitted over `mesh` (default: every device).

    Compiled once per batch shape and shared by every split; the weights are
    an argument, not constants baked into the program (for VGG16 that would
    be 58 MB of constants to compile).
    """
    mesh = mesh or parallel.data_mesh()

    def extract(feature_params, images):
        x = pipeline.to_unit_range(images)  # (B, 28, 28, 1)
        return model.apply({"params": {"features": feature_params}}, x, method=TransferNet.extract)

    replicated = parallel.replicated(mesh)
    jitted = jax.jit(extract, in_shardings=(replicated, parallel.batch_sharded(mesh)),
                     out_shardings=replicated)
    return FeatureExtractor(jitted, mesh)


def extract_features(extractor: FeatureExtractor, feature_params: dict, images: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
    """The frozen layers' outputs (N, h, w, C) float32 for uint8 images (N, 28, 28, 1)."""
    labels = np.zeros(len(images), np.int32)
    feature_params = parallel.replicate(feature_params, extractor.mesh)  # Once, not per batch.
    batch_size = parallel.round_up(batch_size, extractor.mesh)
    chunks = [np.asarray(extractor(feature_params, b["image"]))[b["mask"]]
              for b in pipeline.iterate_batches(images, labels, batch_size)]
    return np.concatenate(chunks)


def run_transfer(
    name: str,
    arch: str,
    description: str,
    config: TrainConfig,
    quick: TrainConfig,
    reference: Reference,
    quick_image_size: int,
    argv: Sequence[str] | None = None,
) -> dict:
    setup()
    parser = build_parser(name, description)
    parser.add_argument("--weights", default=None,
                        help="'torchvision' (download the ImageNet weights; the default), 'none' "
                             "(random init), or a .pth/.safetensors file with torchvision's keys")
    parser.add_argument("--image-size", type=int,
                        help=f"resize inputs to this size (default 224, as the report; --quick: "
                             f"{quick_image_size}; at least {ARCHITECTURES[arch].min_image_size})")
    parser.add_argument("--no-cache-features", action="store_true",
                        help="run the frozen layers at every step instead of once per image")
    args = parser.parse_args(argv)
    weights_choice = args.weights or ("none" if args.quick else "torchvision")
    image_size = (quick_image_size if args.quick else 224) if args.image_size is None else args.image_size
    # Quick runs shrink the classifier (unless real weights need its width).
    hidden = 256 if args.quick and weights_choice == "none" else 4096
    try:
        config = config_from_args(args, config, quick)
        model = TransferNet(arch=arch, image_size=image_size, hidden=hidden)
        if image_size < ARCHITECTURES[arch].min_image_size:
            raise ValueError(f"{arch} needs --image-size >= {ARCHITECTURES[arch].min_image_size}, "
                             f"got {image_size}")
        workdir = resolve_workdir(name, args.workdir, args.resume)
    except (ValueError, ResumeError) as e:
        parser.error(str(e))
    try:
        weights, weights_label = resolve_weights(arch, weights_choice)
        splits, source = load_splits(args, config)
    except (data_lib.DataError, pretrained.WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    cache = not args.no_cache_features and config.noise.kind == "none"
    print(f"{name}: {arch} at {image_size}x{image_size}, weights: {weights_label}; "
          f"train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} from {source}; "
          f"{'cached features' if cache else 'frozen features run every step'}; run dir {workdir}",
          flush=True)

    if weights:
        feature_params = weights["features"]
    else:  # Random features: initialise only them (the classifier's init is fit's job).
        feature_params = jax.jit(lambda: model.init(
            jax.random.PRNGKey(config.seed), jnp.zeros((1, 28, 28, 1)), method=TransferNet.extract,
        ))()["params"]["features"]
    extra = {"data_source": source, "reference": dataclasses.asdict(reference), "weights": weights_label,
             "image_size": image_size, "classifier_hidden": hidden, "cached_features": cache}
    with training_errors(parser):
        if cache:
            start = time.perf_counter()
            extractor = make_feature_extractor(model)
            feature_splits = data_lib.Splits(*(
                data_lib.Split(extract_features(extractor, feature_params, s.images), s.labels)
                for s in (splits.train, splits.val, splits.test)))
            feature_seconds = time.perf_counter() - start
            print(f"features {feature_splits.train.images.shape[1:]} of {len(splits.train) + len(splits.val) + len(splits.test)} "
                  f"images computed in {feature_seconds:.1f} s", flush=True)
            summary = train_and_evaluate(
                dataclasses.replace(config, trainable=()), head_for(model), feature_splits, workdir,
                experiment=name, resume=args.resume, progress=not args.no_progress,
                pretrained={"classifier": weights["classifier"]} if weights else None,
                extra={**extra, "feature_seconds": feature_seconds}, test_pictures=splits.test.images,
            )
            summary["classifier_seconds"] = summary["train_seconds"]
            summary["train_seconds"] = feature_seconds + summary["classifier_seconds"]
            write_json(workdir / "metrics.json",
                       {k: v for k, v in summary.items() if k not in ("state", "best_state")})
        else:
            summary = train_and_evaluate(
                config, model, splits, workdir, experiment=name, resume=args.resume,
                progress=not args.no_progress, pretrained=weights or {"features": feature_params},
                extra=extra,
            )
    title = "this run" if weights else "this run (random init)"
    print_results(name, summary, reference, workdir, title)
    if cache:
        print(f"wall time: features {summary['feature_seconds']:.1f} s + classifier "
              f"{summary['classifier_seconds']:.1f} s")
    return summary
