"""The input pipeline as pure functions: order, batches, scaling, noise.

Host side (numpy): which examples go in which batch. Device side (jit):
uint8 -> [0, 1] float, optional noise, normalisation. Batches travel to the
device as uint8, four times smaller than float32.

Every function takes its randomness as an explicit key, so the same seed
gives the same epochs and the same noise, and a resumed run can rebuild any
epoch from its number alone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax.fields import setting

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

NOISE_KINDS = ("none", "gaussian", "salt_pepper", "speckle")

# image (B, 28, 28, 1) uint8, label (B,) int32, mask (B,) bool; optional target like image.
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Noise added to training images, in [0, 1] pixel units: "gaussian"
    (level = sigma), "salt_pepper" (level = the probability that a pixel is
    replaced, half by 0 and half by 1) or "speckle" (multiplicative:
    x + x * sigma * N(0, 1), level = sigma)."""

    kind: str = setting(
        "none",
        "noise added to training images on the fly",
        group="experiment",
        flags=("--noise",),
        choices=NOISE_KINDS,
    )
    level: float = setting(
        0.0,
        "Gaussian or speckle sigma, or salt-and-pepper probability",
        group="experiment",
        flags=("--noise-level",),
    )

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {self.kind!r}; choose one of {NOISE_KINDS}")
        if self.level < 0 or (self.kind == "salt_pepper" and self.level > 1):
            raise ValueError(
                f"noise_level must be a sigma >= 0, or for salt_pepper a probability in [0, 1]; "
                f"got {self.level} for {self.kind!r}"
            )


# ---------------------------------------------------------------------------
# Device side, pure and jittable.


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 (B, 28, 28, 1) -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def to_uint8(images: jax.Array) -> jax.Array:
    """[0, 1] floats -> uint8, rounded: how MNIST stores pixels."""
    return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def normalize(images: jax.Array) -> jax.Array:
    """[0, 1] images -> zero mean, unit variance with MNIST's statistics."""
    return (images - MNIST_MEAN) / MNIST_STD


def add_gaussian_noise(key: jax.Array, images: jax.Array, sigma: float) -> jax.Array:
    """x + sigma * N(0, 1), clipped to [0, 1]."""
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(images + sigma * noise, 0.0, 1.0)


def add_salt_and_pepper(key: jax.Array, images: jax.Array, p: float) -> jax.Array:
    """Each pixel replaced with probability p: by 0 or 1 with equal odds."""
    flip_key, salt_key = jax.random.split(key)
    flip = jax.random.bernoulli(flip_key, p, images.shape)
    salt = jax.random.bernoulli(salt_key, 0.5, images.shape).astype(images.dtype)
    return jnp.where(flip, salt, images)


def add_speckle_noise(key: jax.Array, images: jax.Array, sigma: float) -> jax.Array:
    """x + x * sigma * N(0, 1), clipped to [0, 1]: noise that scales with the signal."""
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(images + images * sigma * noise, 0.0, 1.0)


def add_noise(key: jax.Array, images: jax.Array, noise: NoiseConfig) -> jax.Array:
    """Applies `noise` to [0, 1] images; the identity for kind "none"."""
    if noise.kind == "gaussian":
        return add_gaussian_noise(key, images, noise.level)
    if noise.kind == "salt_pepper":
        return add_salt_and_pepper(key, images, noise.level)
    if noise.kind == "speckle":
        return add_speckle_noise(key, images, noise.level)
    return images


# Fixed noise draws from its own stream of the run's seed (training noise
# comes from the train key, the order from fold_in(root, 1)).
FIXED_NOISE_STREAM = 2
# Indices fixed for good: adding a split must not change another's noise.
FIXED_NOISE_SPLITS = ("val", "test", "train")


def fixed_noise_key(seed: int, split: str) -> jax.Array:
    """The key of `split`'s fixed noise: every model of a seed sees the same
    noisy validation and test images ("train": a fixed noisy copy of the
    training set, for what must be computed once, such as its denoised copy)."""
    if split not in FIXED_NOISE_SPLITS:
        raise ValueError(f"unknown split {split!r}; fixed noise is for {FIXED_NOISE_SPLITS}")
    root = jax.random.fold_in(jax.random.PRNGKey(seed), FIXED_NOISE_STREAM)
    return jax.random.fold_in(root, FIXED_NOISE_SPLITS.index(split))


@functools.partial(jax.jit, static_argnames="noise")
def _noisy_uint8(key: jax.Array, images: jax.Array, noise: NoiseConfig) -> jax.Array:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
    noisy = jax.vmap(lambda k, x: add_noise(k, x, noise))(keys, to_unit_range(images))
    return to_uint8(noisy)


def fixed_noisy_images(images: np.ndarray, noise: NoiseConfig, key: jax.Array) -> np.ndarray:
    """A noisy copy of uint8 images (N, 28, 28, 1), stored as uint8 like the clean ones.

    Example i gets its noise from fold_in(key, i), so the copy is a pure
    function of (images, noise, key): the same on every call and every run.
    Training noise is drawn afresh every step instead (see tasks.model_inputs).
    """
    if images.dtype != np.uint8:
        raise ValueError(f"fixed noise applies to uint8 images, got {images.dtype}")
    return np.asarray(_noisy_uint8(key, jnp.asarray(images), noise))


# ---------------------------------------------------------------------------
# Host side: the order of examples and the batches.


def epoch_order(key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
    """The shuffled example order of `epoch`, a pure function of (key, epoch)."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), num_examples))


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches per epoch; the last one may be partial (it is padded, not dropped)."""
    return -(-num_examples // batch_size)


def batch_indices(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts `order` into batches, padding the last one.

    Returns:
      indices: (num_batches, batch_size) example indices; padding repeats
        the epoch's first example.
      mask: (num_batches, batch_size) bool, False on padding. Losses, metrics
        and batch-norm statistics use only masked-in examples, so every
        example counts exactly once and the step keeps one shape (one
        compilation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = order.shape[0]
    steps = num_batches(n, batch_size)
    pad = steps * batch_size - n
    indices = np.concatenate([order, np.full(pad, order[0] if n else 0, order.dtype)])
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    order: np.ndarray | None = None,
    start: int = 0,
    targets: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Yields padded, masked batches in `order`, from batch `start`.

    Args:
      images: (N, 28, 28, 1) uint8, or (N, H, W, C) features.
      labels: (N,) int32.
      batch_size: examples per batch, B; the last batch is padded.
      order: (N,) the order of the examples; None: as stored.
      start: the first batch yielded (batches before it are skipped).
      targets: (N, 28, 28, 1) uint8 clean images of noisy `images`; None: none.

    Yields:
      Batch dicts (gather_batch): "image", "label", "mask" and, with
      `targets`, a "target" too.
    """
    if order is None:
        order = np.arange(labels.shape[0])
    indices, mask = batch_indices(order, batch_size)
    for idx, m in zip(indices[start:], mask[start:]):
        yield gather_batch(images, labels, idx, m, targets)


def gather_batch(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    mask: np.ndarray,
    targets: np.ndarray | None = None,
) -> Batch:
    """The batch of examples `indices`, with its padding mask.

    Args:
      images: (N, 28, 28, 1) uint8, or (N, H, W, C) features.
      labels: (N,) int32.
      indices: (B,) the examples of the batch.
      mask: (B,) bool, False on padding.
      targets: (N, 28, 28, 1) uint8 clean images of noisy `images`; None: none.

    Returns:
      A Batch: "image" (B, ...) and "label" (B,) of `indices`, "mask" (B,)
      and, with `targets`, "target" (B, 28, 28, 1).
    """
    batch = {"image": images[indices], "label": labels[indices], "mask": mask}
    if targets is not None:
        batch["target"] = targets[indices]
    return batch
