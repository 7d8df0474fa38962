"""Data augmentation on the device: a random rotation, shift, zoom, elastic distortion and ink.

Each training image gets one affine resample (bilinear, zeros outside the
picture) that rotates it about its centre, scales it and shifts it, with
its own random parameters, and, where asked, an elastic distortion after
it (Simard et al. 2003, "Best practices for convolutional neural networks
applied to visual document analysis": every pixel moved by a random field
smoothed by a Gaussian, which bends strokes the way hands do). Then, where
asked, the ink: strokes thickened or thinned (grey dilation or erosion, as
other pens draw), blurred (as scanners and cameras do) and grey levels
raised to a power (fainter or bolder edges). It runs
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

MAX_STROKE = 3  # Pixels a side: a 28x28 digit's strokes are 2-4 pixels wide.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random affine transform, each drawn uniformly per image
    (the angle in [-rotation, rotation], each axis's shift in [-shift,
    shift] of the image's size, the scale in [1 - zoom, 1 + zoom], the same
    on both axes), then the elastic distortion: each pixel moved by
    `elastic` times a field of uniform [-1, 1] noise blurred by a Gaussian
    of `elastic_sigma` pixels (Simard et al.'s alpha 34, sigma 4 move a
    pixel by about one pixel on average), then the ink: the strokes
    thickened by up to `stroke` pixels a side or thinned by up to half as
    many (MNIST's strokes are 2-4 pixels wide: thinned by as much, they
    would vanish), blurred by a
    Gaussian up to `blur` pixels wide, the grey levels raised to a power
    up to exp(+-`gamma`). All zero (the default): no augmentation, the
    step is unchanged.
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
    stroke: float = setting(
        0.0,
        "augmentation: then thicken its strokes by up to this many pixels a side, or thin "
        "them by up to half as many (grey dilation or erosion), e.g. 1; 0: none",
        group="recipe",
        metavar="PIXELS",
    )
    blur: float = setting(
        0.0,
        "augmentation: then blur it by a Gaussian of up to this width, e.g. 1; 0: none",
        group="recipe",
        metavar="PIXELS",
    )
    gamma: float = setting(
        0.0,
        "augmentation: then raise its grey levels to a power in [exp(-G), exp(G)], e.g. 0.5 "
        "(fainter or bolder edges); 0: none",
        group="recipe",
        metavar="G",
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
        if not 0 <= self.stroke <= MAX_STROKE:
            raise ValueError(
                f"stroke must be in [0, {MAX_STROKE}] pixels a side (0: none), got {self.stroke}"
            )
        if not self.blur >= 0:
            raise ValueError(f"blur must be a Gaussian's width >= 0 (0: none), got {self.blur}")
        if not 0 <= self.gamma <= 3:
            raise ValueError(f"gamma must be in [0, 3] (0: none), got {self.gamma}")

    @property
    def affine(self) -> bool:
        """Whether it rotates, shifts or zooms."""
        return bool(self.rotation or self.shift or self.zoom)

    @property
    def ink(self) -> bool:
        """Whether it changes the strokes' width, blur or grey levels."""
        return bool(self.stroke or self.blur or self.gamma)

    @property
    def active(self) -> bool:
        return self.affine or bool(self.elastic) or self.ink


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


def morphology(images: jax.Array, amount: jax.Array, steps: int) -> jax.Array:
    """[0, 1] images (B, H, W, C) with their strokes thickened (amount > 0)
    or thinned (amount < 0) by |amount| (B,) pixels a side, at most `steps`:
    whole 3x3 grey dilations (max) or erosions (min), the last blended by
    its fraction, so the width changes smoothly with the amount."""
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    thicker = amount[:, None, None, None] > 0  # (B, 1, 1, 1)
    for step in range(steps):
        dilated = jax.lax.reduce_window(images, -jnp.inf, jax.lax.max, window, strides, "SAME")
        eroded = jax.lax.reduce_window(images, jnp.inf, jax.lax.min, window, strides, "SAME")
        fraction = jnp.clip(jnp.abs(amount) - step, 0.0, 1.0)[:, None, None, None]
        images = images + fraction * (jnp.where(thicker, dilated, eroded) - images)
    return images


def blur_matrices(size: int, sigma: jax.Array) -> jax.Array:
    """(B, size, size) Gaussian blur matrices of widths sigma (B,) pixels,
    each row summing to 1; the identity where sigma is 0."""
    offsets = (jnp.arange(size)[:, None] - jnp.arange(size)[None, :]).astype(jnp.float32)
    width = jnp.maximum(sigma, 1e-3)[:, None, None]  # (B, 1, 1); 1e-3: the identity, exactly.
    weights = jnp.exp(-(offsets[None] ** 2) / (2 * width**2))  # (B, size, size)
    return weights / weights.sum(-1, keepdims=True)


def random_ink(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """[0, 1] images (B, H, W, C), each with its strokes thickened or
    thinned by a uniform amount in [-stroke / 2, stroke] pixels a side
    (negative: thinner), blurred by a
    Gaussian of width uniform in [0, blur], and its grey levels raised to
    a power exp(u), u uniform in [-gamma, gamma]: the ways other pens,
    scanners and cameras draw a digit. Each lever that is 0 is skipped."""
    batch, height, width = images.shape[:3]
    stroke_key, blur_key, gamma_key = jax.random.split(key, 3)
    if config.stroke:
        amount = jax.random.uniform(
            stroke_key, (batch,), minval=-config.stroke / 2, maxval=config.stroke
        )
        images = morphology(images, amount, math.ceil(config.stroke))
    if config.blur:
        sigma = jax.random.uniform(blur_key, (batch,), maxval=config.blur)
        rows, cols = blur_matrices(height, sigma), blur_matrices(width, sigma)
        images = jnp.einsum("bij,bjkc,blk->bilc", rows, images, cols)  # (B, H, W, C)
    if config.gamma:
        power = jnp.exp(
            jax.random.uniform(gamma_key, (batch,), minval=-config.gamma, maxval=config.gamma)
        )
        images = jnp.clip(images, 0.0, 1.0) ** power[:, None, None, None]
    return jnp.clip(images, 0.0, 1.0)


def random_transform(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """`config`'s whole augmentation of [0, 1] images (B, H, W, C): the
    affine transform, the elastic distortion, then the strokes' width,
    blur and grey levels. Each later stage splits its key off the key the
    earlier ones had, and only where it is asked for: earlier recipes draw
    the same images as before it existed (without the distortion the
    affine transform takes the whole key)."""
    if config.ink:
        key, ink_key = jax.random.split(key)
    if not config.elastic:
        images = random_affine(key, images, config)
    else:
        affine_key, elastic_key = jax.random.split(key)
        images = random_elastic(elastic_key, random_affine(affine_key, images, config), config)
    return random_ink(ink_key, images, config) if config.ink else images
