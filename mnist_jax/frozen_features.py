"""Transfer learning from VGG16 / AlexNet (report 004): frozen pretrained
features, a new classifier.

The feature layers are frozen and deterministic, so by default their
outputs are computed once per image and only the classifier trains, on
those cached features: the same numbers as running the frozen layers every
step, far faster. With noise or augmentation on the inputs the features
change every step, so the full network runs (classifier trainable, features
frozen through optax), as it does without caching.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import data as data_lib
from mnist_jax import parallel, pipeline, pretrained, rundir
from mnist_jax.config import TrainConfig
from mnist_jax.models.vgg_alexnet import TransferNet, head_for
from mnist_jax.options import RunOptions
from mnist_jax.train import train_and_evaluate


def resolve_weights(arch: str, choice: str) -> tuple[dict | None, str]:
    """(torchvision weights as Flax params or None, a label for every output).

    choice: "torchvision" (download torchvision's file, once), "none"
    (random initialisation), or a path to a .pth / safetensors file.
    """
    if choice == "none":
        return None, "none (random init, features not pretrained)"
    path = pretrained.fetch_weights(arch) if choice == "torchvision" else pathlib.Path(choice)
    return pretrained.to_flax(
        pretrained.load_state_dict(path), arch, num_classes=10
    ), f"ImageNet, torchvision ({path.name})"


def feature_params_of(model: TransferNet, weights: dict | None, seed: int) -> dict:
    """The frozen layers' parameters: the pretrained ones, or a random init of
    them alone (the classifier's init is the training loop's job)."""
    if weights:
        return weights["features"]
    return jax.jit(
        lambda: model.init(
            jax.random.PRNGKey(seed),
            jnp.zeros((1, 28, 28, 1)),
            method=TransferNet.extract,
        )
    )()["params"]["features"]


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """`(feature_params, uint8 images (B, 28, 28, 1)) -> (B, h, w, C)` on `mesh`:
    batches split across its devices, the features whole on every process."""

    jitted: Callable
    mesh: jax.sharding.Mesh

    def __call__(self, feature_params: dict, images: np.ndarray) -> jax.Array:
        return self.jitted(
            parallel.replicate(feature_params, self.mesh), parallel.shard_batch(images, self.mesh)
        )


def make_feature_extractor(
    model: TransferNet, mesh: jax.sharding.Mesh | None = None
) -> FeatureExtractor:
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
    jitted = jax.jit(
        extract, in_shardings=(replicated, parallel.batch_sharded(mesh)), out_shardings=replicated
    )
    return FeatureExtractor(jitted, mesh)


def extract_features(
    extractor: FeatureExtractor, feature_params: dict, images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """The frozen layers' outputs (N, h, w, C) float32 for uint8 images (N, 28, 28, 1).

    Full batches of `batch_size`, then the rest in one batch padded only to
    a multiple of 8: one more compiled shape, far cheaper on a CPU than the
    frozen layers run on padding (a split of 300 at batch 256 would be 512
    images through VGG16, not 304). Each image's features are the same in
    any batch (tests/test_experiments.py)."""
    labels = np.zeros(len(images), np.int32)
    feature_params = parallel.replicate(feature_params, extractor.mesh)  # Once, not per batch.
    batch_size = parallel.round_up(batch_size, extractor.mesh)
    full = len(images) - len(images) % batch_size
    rest = parallel.round_up(
        8 * max(1, pipeline.num_batches(len(images) - full, 8)), extractor.mesh
    )
    batches = [
        *pipeline.iterate_batches(images[:full], labels[:full], batch_size),
        *pipeline.iterate_batches(images[full:], labels[full:], rest),
    ]
    return np.concatenate(
        [np.asarray(extractor(feature_params, b["image"]))[b["mask"]] for b in batches]
    )


def train_on_cached_features(
    config: TrainConfig,
    model: TransferNet,
    splits: data_lib.Splits,
    workdir: pathlib.Path,
    options: RunOptions,
    *,
    weights: dict | None,
    feature_params: dict,
) -> dict:
    """The frozen layers' features computed once, then the classifier alone
    trained on them (train_and_evaluate). metrics.json adds the feature
    time: "train_seconds" is features plus classifier.

    Args:
      config: the run's settings (its `trainable` is ignored: only the
        classifier trains here).
      model: the transfer network whose frozen layers give the features.
      splits: the images.
      workdir: the run directory.
      options: how to run and record it (its `pretrained` is ignored).
      weights: pretrained weights ({"features", "classifier"}), or None.
      feature_params: the frozen layers' parameters.

    Returns:
      metrics.json's contents with the final and scored states, as
      train_and_evaluate returns them.
    """
    start = time.perf_counter()
    extractor = make_feature_extractor(model)
    feature_splits = data_lib.Splits(
        *(
            data_lib.Split(extract_features(extractor, feature_params, s.images), s.labels)
            for s in (splits.train, splits.val, splits.test)
        )
    )
    feature_seconds = time.perf_counter() - start
    print(
        f"features {feature_splits.train.images.shape[1:]} of "
        f"{len(splits.train) + len(splits.val) + len(splits.test)} images computed in "
        f"{feature_seconds:.1f} s",
        flush=True,
    )
    result = train_and_evaluate(
        dataclasses.replace(config, trainable=()),
        head_for(model),
        feature_splits,
        workdir,
        dataclasses.replace(
            options,
            pretrained={"classifier": weights["classifier"]} if weights else None,
            extra={**(options.extra or {}), "feature_seconds": feature_seconds},
            test_pictures=splits.test.images,
        ),
    )
    states = {k: result.pop(k) for k in ("state", "best_state")}
    summary = rundir.add_to_summary(
        workdir,
        result,
        classifier_seconds=result["train_seconds"],
        train_seconds=feature_seconds + result["train_seconds"],
    )
    return {**summary, **states}
