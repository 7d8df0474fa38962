"""Data augmentation on the device: a random rotation, shift, zoom and elastic distortion per image.

Each training image gets one affine resample (bilinear, zeros outside the
picture) that rotates it about its centre, scales it and shifts it, with
its own random parameters, and, where asked, an elastic distortion after
it (Simard et al. 2003, "Best practices for convolutional neural networks
applied to visual document analysis": every pixel moved by a random field
smoothed by a Gaussian, which bends strokes the way hands do). It runs
inside the jitted train step beside the noise (mnist_jax.tasks.model_inputs),
keyed from the step's key, so the same seed gives the same images and a
resumed run replays them exactly; nothing is precomputed and no host
thread is needed.

The resampling is dm-pix's (`affine_transform` and its bilinear
interpolation; the library behind our SSIM): plain gathers and arithmetic
that XLA compiles on every backend. Off by default, so that the reports'
runs are unchanged; the recipes that use it are in docs/results.md.
"""

from __future__ import annotations

import dataclasses
import math

import dm_pix
import jax
import jax.numpy as jnp

from mnist_jax.fields import setting


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random affine transform, each drawn uniformly per image
    (the angle in [-rotation, rotation], each axis's shift in [-shift,
    shift] of the image's size, the scale in [1 - zoom, 1 + zoom], the same
    on both axes), then the elastic distortion: each pixel moved by
    `elastic` times a field of uniform [-1, 1] noise blurred by a Gaussian
    of `elastic_sigma` pixels (Simard et al.'s alpha 34, sigma 4 move a
    pixel by about one pixel on average). All zero (the default): no
    augmentation, the step is unchanged.
    """

    rotation: float = setting(
        0.0,
        "augmentation: rotate each training image by up to this angle",
        group="recipe",
        metavar="DEGREES",
    )
    shift: float = setting(
        0.0,
        "augmentation: shift it by up to this fraction of its size (0.1 of 28 pixels: 2.8)",
        group="recipe",
        metavar="FRACTION",
    )
    zoom: float = setting(
        0.0, "augmentation: scale it by 1 +- up to this", group="recipe", metavar="FRACTION"
    )
    elastic: float = setting(
        0.0,
        "augmentation: then distort it elastically with this strength in pixels, e.g. 34 "
        "(Simard et al. 2003); 0: none",
        group="recipe",
        metavar="ALPHA",
    )
    elastic_sigma: float = setting(
        4.0, "the elastic distortion's smoothness", group="recipe", metavar="PIXELS"
    )

    def __post_init__(self):
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.shift < 1:
            raise ValueError(f"shift must be a fraction of the image in [0, 1), got {self.shift}")
        if not 0 <= self.zoom < 1:
            raise ValueError(f"zoom must be in [0, 1) (the scale is 1 +- zoom), got {self.zoom}")
        if not self.elastic >= 0:
            raise ValueError(
                f"elastic must be a strength in pixels >= 0 (0: none), got {self.elastic}"
            )
        if not self.elastic_sigma > 0:
            raise ValueError(
                f"elastic_sigma must be a Gaussian's width in pixels > 0, got {self.elastic_sigma}"
            )

    @property
    def affine(self) -> bool:
        """Whether it rotates, shifts or zooms."""
        return bool(self.rotation or self.shift or self.zoom)

    @property
    def active(self) -> bool:
        return self.affine or bool(self.elastic)


def affine_matrix(
    angle: jax.Array, scale: jax.Array, shift: jax.Array, size: tuple[int, int]
) -> jax.Array:
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
    """[0, 1] images (B, H, W, C), each with its own random rotation, zoom
    and shift within `config`'s ranges; the images unchanged without."""
    if not config.affine:
        return images
    batch, height, width = images.shape[:3]
    angle_key, scale_key, shift_key = jax.random.split(key, 3)
    limit = math.radians(config.rotation)
    angle = jax.random.uniform(angle_key, (batch,), minval=-limit, maxval=limit)
    scale = jax.random.uniform(scale_key, (batch,), minval=1 - config.zoom, maxval=1 + config.zoom)
    pixels = config.shift * jnp.array([height, width], jnp.float32)
    shift = (
        jax.random.uniform(shift_key, (batch, 2), minval=-1.0, maxval=1.0) * pixels[None]
    )  # (B, 2)
    return transform(images, angle, scale, shift)


def gaussian_matrix(size: int, sigma: float) -> jax.Array:
    """(size, size) matrix whose product with a signal of `size` samples
    blurs it with a Gaussian of `sigma` samples, cut at 3 sigma, zeros past
    the ends (a "SAME" convolution as a matrix, for tiny images far
    cheaper than XLA:CPU's depthwise convolution)."""
    offsets = jnp.arange(size)[:, None] - jnp.arange(size)[None, :]  # (size, size)
    radius = math.ceil(3 * sigma)
    full = jnp.exp(-(jnp.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    weights = jnp.exp(-(offsets**2) / (2 * sigma**2)) * (jnp.abs(offsets) <= radius)
    return weights / full.sum()


def random_elastic(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """[0, 1] images (B, H, W, C), each distorted by its own random field of
    strength `config.elastic`; the images unchanged when it is 0.

    The field is Simard et al.'s, as dm-pix's `elastic_deformation` draws
    it, but blurred by two small matrix products: dm-pix's depthwise
    convolution of each image is several times slower on a CPU than the
    whole affine resample. The resample is dm-pix's."""
    if not config.elastic:
        return images
    batch, height, width, channels = images.shape
    noise = jax.random.uniform(key, (batch, 2, height, width), minval=-1.0, maxval=1.0)
    rows, cols = (
        gaussian_matrix(height, config.elastic_sigma),
        gaussian_matrix(width, config.elastic_sigma),
    )
    field = config.elastic * jnp.einsum(
        "ij,bdjk,lk->bdil", rows, noise, cols
    )  # (B, 2, H, W) pixels
    grid = jnp.stack(jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")).astype(
        jnp.float32
    )

    def one(image, field):  # (H, W, C), (2, H, W)
        return jnp.stack(
            [
                dm_pix.flat_nd_linear_interpolate_constant(image[..., c], grid + field, cval=0.0)
                for c in range(channels)
            ],
            axis=-1,
        )

    return jax.vmap(one)(images, field)


def random_transform(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """`config`'s whole augmentation of [0, 1] images (B, H, W, C): the
    affine transform, then the elastic distortion. Without the distortion
    the affine transform takes the whole key, as before it existed, so
    earlier recipes draw the same images."""
    if not config.elastic:
        return random_affine(key, images, config)
    affine_key, elastic_key = jax.random.split(key)
    return random_elastic(elastic_key, random_affine(affine_key, images, config), config)
