"""Digit pictures from image files, prepared the way MNIST's were.

MNIST's digits (LeCun et al., 1998) were size-normalised to fit a 20x20
box, keeping their aspect ratio (anti-aliased, hence grey levels), then
placed in a 28x28 field so that their centre of mass sits at its centre:
white ink on black. A photo or a drawing of a digit is brought to that
form here, so that a model trained on MNIST sees what it was trained on:

    grey levels -> ink white on black (inverted when the background is
    light) -> background to 0 (the paper's level under each pixel fitted
    to the border, so light falling off across a photo goes with it, and
    the paper's grain and noise left out), ink up to 255 -> cropped to the
    digit's bounding box (specks of ink far from it left out: dust on a
    photo would stretch the box) -> longer side scaled to 20 px -> centre of mass
    moved to (14, 14) of a 28x28 field (MNIST's test set: mean 14.0, 14.0).

Files are decoded by Pillow; anything it cannot decode, or that holds no
digit, raises ImageError naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from typing import BinaryIO

import numpy as np

SIZE = 28  # The field.
BOX = 20  # The longer side of the digit's bounding box.
CENTRE = SIZE / 2  # Where MNIST's centres of mass sit, in pixel-index coordinates.
INK_THRESHOLD = 0.25  # Share of the brightest ink that counts towards the bounding box.
# A blob of ink with less than this share of the largest blob's ink, lying
# farther from the large blobs than NEAR times their box's longer side, is
# a speck (dust, a stray mark): left out of the digit's box.
SPECK_SHARE = 0.1
NEAR = 0.25
MIN_CONTRAST = 16  # Grey levels between background and ink below which an image is blank.
NOISE_FLOOR = 3  # The background's noise deviations below which a pixel is paper, not ink.
MAX_PIXELS = 50_000_000  # Larger files are refused before decoding (decompression bombs).


class ImageError(ValueError):
    """A file that cannot be made into a digit picture."""


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """The image in `path` as grey levels (H, W) float32 in [0, 255].

    Any format and colour mode Pillow reads; transparent pixels count as
    white paper, and a photo's EXIF orientation is applied.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    return decode_grey(path, str(path))


def decode_grey(source: str | os.PathLike | BinaryIO, name: str) -> np.ndarray:
    """What read_grey does, for a path or an open binary file (an upload).

    name: how errors name the image.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # Pillow warns of large sizes as it opens; they are refused below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {image.width}x{image.height} pixels is too large for a digit "
                    f"(at most {MAX_PIXELS:,}); scale it down first"
                )
            image = ImageOps.exif_transpose(image)
            if image.mode in (
                "I",
                "I;16",
                "I;16B",
                "I;16L",
                "F",
            ):  # Deep grey: scaled by its range.
                grey = np.asarray(image, np.float64)
                span = grey.max() - grey.min() if grey.size else 0.0
                return ((grey - grey.min()) * (255.0 / span if span else 0.0)).astype(np.float32)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(paper, image.convert("RGBA"))
            return np.asarray(image.convert("L"), np.float32)
    except ImageError:
        raise
    # Pillow's decoders raise many kinds of error for damaged or foreign
    # bytes (OSError, ValueError, SyntaxError, EOFError, struct.error, ...).
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{name}: not an image Pillow can read ({type(e).__name__}: {e})") from e


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a picture is brought to MNIST's form (to_mnist uses DEFAULT).

    flatten: the paper's level fitted to the border as a smooth surface and
      taken away, the background's noise left out below a floor (False:
      the border's median taken away, as a scan of even light has).
    binarize: ink thresholded at half its contrast before the box is
      fitted, as NIST's binary scans were before MNIST's anti-aliasing;
      only for digits larger than the box (smaller ones keep their grey
      levels, which the resize no longer smooths).
    """

    flatten: bool = True
    binarize: bool = False


DEFAULT = Preprocessing()


def to_mnist(grey: np.ndarray, *, invert: bool | None = None, name: str = "image") -> np.ndarray:
    """A digit picture (H, W) of any size as MNIST has them: (28, 28, 1) uint8.

    invert: True for dark ink on light paper, False for light ink on dark;
      None decides by the border (mostly light: inverted).
    name: how errors name the picture (its file).
    """
    return prepare(grey, DEFAULT, invert=invert, name=name)


def prepare(
    grey: np.ndarray, how: Preprocessing, *, invert: bool | None = None, name: str = "image"
) -> np.ndarray:
    """to_mnist's picture (28, 28, 1) uint8 of grey levels (H, W), prepared as `how` says."""
    grey = np.asarray(grey, np.float64)
    if grey.ndim != 2 or grey.size == 0:
        raise ImageError(f"{name}: an image of shape {grey.shape} holds no picture")
    if invert is None:
        invert = np.median(_border(grey)) > 127
    if invert:
        grey = 255.0 - grey
    if how.flatten:
        if max(grey.shape) > 2 * SIZE:  # A light blur, far finer than the 20x20 box: less noise.
            grey = _smoothed(grey, max(grey.shape) / (10 * SIZE))
        background, noise = _background(grey)  # (H, W), a grey level
    else:
        background, noise = np.median(_border(grey)), 0.0
    above = grey - background
    floor = NOISE_FLOOR * noise  # The paper's grain and the sensor's noise, left out.
    contrast = above.max() - floor
    if contrast < MIN_CONTRAST:
        raise ImageError(
            f"{name} is blank: no {'dark' if invert else 'light'} digit stands out from its "
            "background"
        )
    ink = np.clip((above - floor) / contrast, 0.0, 1.0) * 255.0  # Background 0, ink up to 255.
    digit = ink[_digit_box(ink)]
    if how.binarize and max(digit.shape) > 2 * BOX:
        digit = np.where(digit >= 127.5, 255.0, 0.0)
    digit = _fit_box(digit)  # (h, w), max(h, w) == BOX
    return _centre_by_mass(digit)[..., None]


def _digit_box(ink: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the digit in `ink` (H, W), 0-255: of its blobs of
    ink above INK_THRESHOLD (8-connected), the large ones and the small ones
    near them; a speck far off would otherwise stretch the box and shrink
    the digit in it."""
    from scipy import ndimage

    blobs, _ = ndimage.label(ink >= INK_THRESHOLD * 255.0, structure=np.ones((3, 3)))
    boxes = np.array(  # (N, 4): top, left, bottom, right (exclusive)
        [(r.start, c.start, r.stop, c.stop) for r, c in ndimage.find_objects(blobs)]
    )
    masses = ndimage.sum_labels(ink, blobs, np.arange(1, len(boxes) + 1))  # (N,)
    large = boxes[masses >= SPECK_SHARE * masses.max()]
    top, left = large[:, :2].min(0)
    bottom, right = large[:, 2:].max(0)
    reach = NEAR * max(bottom - top, right - left)
    near = (
        (boxes[:, 0] < bottom + reach)
        & (boxes[:, 2] > top - reach)
        & (boxes[:, 1] < right + reach)
        & (boxes[:, 3] > left - reach)
    )
    kept = boxes[near]  # The large blobs are near themselves.
    return slice(kept[:, 0].min(), kept[:, 2].max()), slice(kept[:, 1].min(), kept[:, 3].max())


def _smoothed(grey: np.ndarray, sigma: float) -> np.ndarray:
    """The grey levels (H, W) blurred by a Gaussian of `sigma` pixels."""
    from PIL import Image, ImageFilter

    image = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)), np.float64)


def _border(grey: np.ndarray) -> np.ndarray:
    """The picture's outermost pixels, (2 H + 2 W,)."""
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])


def _background(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's grey level under every pixel, (H, W), and its noise
    (a standard deviation), from the border: a quadratic surface in the
    row and column fitted to the border's pixels, those far off it (ink
    touching the edge) dropped and the fit repeated. Light falling off
    across a photo is taken away with it; a flat border gives its median,
    as a scan of even light has."""
    height, width = grey.shape
    rows, cols = np.mgrid[0:height, 0:width]
    rows = rows / max(height - 1, 1) * 2 - 1  # (H, W) in [-1, 1]
    cols = cols / max(width - 1, 1) * 2 - 1

    def terms(r, c):  # (..., 6): the quadratic's monomials.
        return np.stack([np.ones_like(r), r, c, r * r, c * c, r * c], axis=-1)

    values, r, c = _border(grey), _border(rows), _border(cols)
    keep = np.ones(values.shape, bool)
    surface = np.full(values.shape, np.median(values))
    for _ in range(3):
        spread = 1.4826 * np.median(np.abs(values - surface)[keep])  # A robust deviation.
        keep = np.abs(values - surface) <= max(3 * spread, 1.0)
        if keep.sum() < 12:  # Too few to fit a surface: the border's median, flat.
            break
        coefficients = np.linalg.lstsq(terms(r[keep], c[keep]), values[keep], rcond=None)[0]
        surface = terms(r, c) @ coefficients
    else:
        noise = 1.4826 * np.median(np.abs(values - surface)[keep])
        return terms(rows, cols) @ coefficients, float(noise)
    return np.full(grey.shape, np.median(values)), 0.0


def _fit_box(digit: np.ndarray) -> np.ndarray:
    """Scales the longer side to BOX pixels, keeping the aspect ratio (anti-aliased)."""
    from PIL import Image

    h, w = digit.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow: (width, height).
    resized = Image.fromarray(digit.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, np.float64), 0.0, 255.0)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """The digit in a SIZE x SIZE field, its centre of mass moved to (CENTRE, CENTRE)."""
    h, w = digit.shape
    mass = digit.sum()
    com_row = (digit.sum(1) @ np.arange(h)) / mass
    com_col = (digit.sum(0) @ np.arange(w)) / mass
    # Whole-pixel shifts, as MNIST's, kept inside the field.
    top = int(np.clip(round(CENTRE - com_row), 0, SIZE - h))
    left = int(np.clip(round(CENTRE - com_col), 0, SIZE - w))
    field = np.zeros((SIZE, SIZE))
    field[top : top + h, left : left + w] = digit
    return np.round(field).astype(np.uint8)


def load_digit(path: str | os.PathLike, *, invert: bool | None = None) -> np.ndarray:
    """An image file as an MNIST digit (28, 28, 1) uint8 (see the module docstring)."""
    return to_mnist(read_grey(path), invert=invert, name=str(path))
