"""Data augmentation on the device: a random rotation, shift and zoom per image.

Each training image gets one affine resample (bilinear, zeros outside the
picture) that rotates it about its centre, scales it and shifts it, with
its own random parameters. It runs inside the jitted train step beside the
noise (mnist_jax.tasks.model_inputs), keyed from the step's key, so the
same seed gives the same images and a resumed run replays them exactly;
nothing is precomputed and no host thread is needed.

The resampling is dm-pix's `affine_transform` (the library behind our SSIM),
whose order-1 interpolation is plain gathers and arithmetic that XLA
compiles on every backend. Off by default, so that the reports' runs are
unchanged; the recipes that use it are in docs/results.md.
"""

from __future__ import annotations

import dataclasses
import math

import dm_pix
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random affine transform, each drawn uniformly per image.

    rotation: degrees, the angle is in [-rotation, rotation].
    shift: a fraction of the image size, each axis in [-shift, shift]
      (0.1 of 28 pixels: up to 2.8 pixels).
    zoom: the scale is in [1 - zoom, 1 + zoom], the same on both axes.
    All zero (the default): no augmentation, the step is unchanged.
    """

    rotation: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0

    def __post_init__(self):
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.shift < 1:
            raise ValueError(f"shift must be a fraction of the image in [0, 1), got {self.shift}")
        if not 0 <= self.zoom < 1:
            raise ValueError(f"zoom must be in [0, 1) (the scale is 1 +- zoom), got {self.zoom}")

    @property
    def active(self) -> bool:
        return bool(self.rotation or self.shift or self.zoom)


def affine_matrix(angle: jax.Array, scale: jax.Array, shift: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The (4, 4) homogeneous pull matrix of one image (H, W, C): output
    pixel -> input position, for a rotation by `angle` (radians, counter-
    clockwise as the image is shown) and a zoom by `scale` about the image's
    centre, then a shift by `shift` (2,) pixels (rows, columns)."""
    center = (jnp.asarray(size, jnp.float32) - 1) / 2
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    # The inverse of scale * R(angle) in (row, column) coordinates, rows pointing down.
    inverse = jnp.array([[cos, sin], [-sin, cos]])
    offset = center - inverse @ (center + shift)
    matrix = jnp.eye(4)
    return matrix.at[:2, :2].set(inverse).at[:2, 3].set(offset)


def transform(images: jax.Array, angle: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """Each image (B, H, W, C) rotated by angle (B,) radians, zoomed by
    scale (B,) and shifted by shift (B, 2) pixels; zeros where it leaves
    the picture."""
    size = images.shape[1:3]

    def one(image, angle, scale, shift):
        matrix = affine_matrix(angle, scale, shift, size)
        return dm_pix.affine_transform(image, matrix, order=1, mode="constant", cval=0.0)

    return jax.vmap(one)(images, angle, scale, shift)


def random_affine(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """[0, 1] images (B, H, W, C), each with its own random transform
    within `config`'s ranges; the images unchanged when it is all zero."""
    if not config.active:
        return images
    batch, height, width = images.shape[:3]
    angle_key, scale_key, shift_key = jax.random.split(key, 3)
    limit = math.radians(config.rotation)
    angle = jax.random.uniform(angle_key, (batch,), minval=-limit, maxval=limit)
    scale = jax.random.uniform(scale_key, (batch,), minval=1 - config.zoom, maxval=1 + config.zoom)
    pixels = config.shift * jnp.array([height, width], jnp.float32)
    shift = jax.random.uniform(shift_key, (batch, 2), minval=-1.0, maxval=1.0) * pixels[None]  # (B, 2)
    return transform(images, angle, scale, shift)
