"""Digits that are not MNIST's, to measure how a model reads other hands.

Four evaluation sets, each built from a seed alone and each prepared as a
user's picture is, through mnist_jax.digits.to_mnist:

- "fonts": the digits of the TrueType/OpenType fonts found on the machine
  (`find_fonts`), at several sizes, weights (strokes thickened or
  thinned), slants and small rotations, drawn black on white. The fonts
  are split by family with a fixed rule (`split_fonts`): every other
  family, in sorted order, is for evaluation only and never drawn for
  training (`font_digits(..., fonts=training)`).
- "strokes": digits drawn as on the drawing page's canvas, by random hands
  (mnist_jax.strokes: several templates a digit, round-capped pen
  strokes, black on white).
- "scanned_fonts", "scanned_strokes": the same pages as a scanner or a
  phone sees them (`scanned`): grey paper and ink, uneven light, paper
  texture, blur, noise, a slight perspective, JPEG.

Each set is a data.Split of (N, 28, 28, 1) uint8 images with balanced
labels. `prepare` (default to_mnist) turns a page into MNIST's form, so
preprocessing variants can be compared on the same pages.
"""

from __future__ import annotations

import functools
import glob
import math
import pathlib
import re
from collections.abc import Callable

import numpy as np

from mnist_jax import digits, strokes
from mnist_jax.data import Split

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "/Library/Fonts")
# Fonts whose digit codes draw symbols, old-style figures or boxes.
NOT_DIGITS = re.compile(r"sym|cmex|cmsy|cmmi|nonuni|lastresort|emoji|dingbat", re.IGNORECASE)
FONT_SIZES = (24, 36, 56, 90)  # Pixels: small ones come out blocky, as a coarse scan.
WEIGHTS = (-2, -1, 0, 0, 1, 2, 3)  # 3x3 thickenings (>0) or thinnings (<0) per 56 px of size.
STYLE_WORDS = re.compile(
    r"(bold|italic|oblique|light|extralight|thin|medium|regular|book|black|heavy|condensed"
    r"|semi|demi|extra|ultra|narrow|expanded|display|bol|ita|[-_ ])",
    re.IGNORECASE,
)
REDRAWS = 10  # Draws of a digit that comes out blank before giving up.
SETS = ("fonts", "strokes", "scanned_fonts", "scanned_strokes")
Prepare = Callable[[np.ndarray], np.ndarray]  # A page (H, W) -> (28, 28, 1) uint8.


def find_fonts(dirs: tuple[str, ...] | None = None) -> list[pathlib.Path]:
    """Every .ttf/.otf file under `dirs` (default: the system's font folders
    and matplotlib's, so that every machine has some) that draws the ten
    digits, sorted by file name; of files of one name, the first found."""
    if dirs is None:
        dirs = (*FONT_DIRS, *_matplotlib_fonts())
    found: dict[str, pathlib.Path] = {}
    for folder in dirs:
        base = pathlib.Path(folder).expanduser()
        for pattern in ("**/*.ttf", "**/*.otf", "**/*.TTF", "**/*.OTF"):
            for name in sorted(glob.glob(str(base / pattern), recursive=True)):
                found.setdefault(pathlib.Path(name).name, pathlib.Path(name))
    fonts = [found[name] for name in sorted(found) if not NOT_DIGITS.search(name)]
    return [f for f in fonts if _draws_digits(f)]


def _matplotlib_fonts() -> tuple[str, ...]:
    """matplotlib's own font folder, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(
        str(pathlib.Path(p) / "mpl-data" / "fonts" / "ttf") for p in spec.submodule_search_locations
    )


def _draws_digits(font: pathlib.Path) -> bool:
    """Whether the font opens and its ten digits are ten different shapes
    (symbol fonts draw boxes or nothing)."""
    try:
        shapes = {_glyph(font, 40, str(d)).tobytes() for d in range(10)}
    except OSError:
        return False
    return len(shapes) == 10


@functools.lru_cache(maxsize=4096)
def _glyph(font: pathlib.Path, size: int, text: str):
    """`text` drawn black on white in `font` at `size` pixels, with a margin (a Pillow image)."""
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(font), size)
    page = Image.new("L", (3 * size, 3 * size), 255)
    ImageDraw.Draw(page).text((size, size // 2), text, font=face, fill=0)
    return page


def family(font: pathlib.Path) -> str:
    """A font file's family: its name without the style words
    (DejaVuSansCondensed-BoldOblique.ttf -> dejavusans)."""
    return STYLE_WORDS.sub("", font.stem).lower() or font.stem.lower()


def split_fonts(fonts: list[pathlib.Path]) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(training-allowed, evaluation-only) fonts: the families sorted by
    name, the 1st, 3rd, 5th ... for training and the 2nd, 4th ... for
    evaluation; a whole family goes one way, so no evaluation family's
    bold or italic is trained on. With one family, it is for evaluation."""
    families = sorted({family(f) for f in fonts})
    evaluation = set(families[1::2]) if len(families) > 1 else set(families)
    return (
        [f for f in fonts if family(f) not in evaluation],
        [f for f in fonts if family(f) in evaluation],
    )


def font_page(rng: np.random.Generator, font: pathlib.Path, digit: int) -> np.ndarray:
    """The digit in `font`, at a random size and weight, slanted and turned
    a little: grey levels (H, W) float32, black on white."""
    from PIL import Image, ImageFilter

    size = int(rng.choice(FONT_SIZES))
    page = _glyph(font, size, str(digit))
    weight = int(rng.choice(WEIGHTS))
    steps = round(abs(weight) * size / 56)
    if weight < 0:  # Thinned: at most to a third of a stroke, so the digit survives.
        steps = min(steps, max(1, size // 40))
    for _ in range(steps):  # Black ink on white: a min filter thickens it, a max filter thins.
        thinner = page.filter(ImageFilter.MaxFilter(3)) if weight < 0 else None
        if thinner is not None and thinner.getextrema()[0] > 64:
            break  # Thinned no further than a stroke still black at its core.
        page = thinner or page.filter(ImageFilter.MinFilter(3))
    slant = rng.uniform(-0.25, 0.25)
    side = page.width
    page = page.transform(
        page.size,
        Image.Transform.AFFINE,
        (1, slant, -slant * side / 2, 0, 1, 0),
        Image.Resampling.BILINEAR,
        fillcolor=255,
    )
    page = page.rotate(rng.uniform(-6, 6), Image.Resampling.BILINEAR, fillcolor=255)
    return np.asarray(page, np.float32)


def scanned(rng: np.random.Generator, page: np.ndarray) -> np.ndarray:
    """A black-on-white page (H, W) as a scan or a phone photo of it: a
    slight perspective, grey ink on grey paper, light falling off across
    it, paper texture, blur, sensor noise, JPEG. Grey levels (H, W) float32."""
    from PIL import Image, ImageFilter

    height, width = page.shape
    side = max(height, width)
    image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    moved = corners + rng.uniform(-0.06, 0.06, (4, 2)) * side
    image = image.transform(
        image.size,
        Image.Transform.PERSPECTIVE,
        _perspective(corners, moved),
        Image.Resampling.BILINEAR,
        fillcolor=255,
    )
    ink = 1.0 - np.asarray(image, np.float32) / 255.0  # (H, W), 1 where black.
    paper, pen = rng.uniform(160, 245), rng.uniform(0, 90)
    rows, cols = np.mgrid[0:height, 0:width] / side
    direction = rng.uniform(0, 2 * math.pi)
    light = 1.0 - rng.uniform(0.0, 0.35) * (
        0.5 + 0.5 * np.sin(direction) * (rows - 0.5) + 0.5 * np.cos(direction) * (cols - 0.5)
    )  # (H, W): up to 35 % darker on one side.
    grey = (paper - (paper - pen) * ink) * light
    texture = rng.normal(0.0, 1.0, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
    texture = Image.fromarray(texture, "F").resize((width, height), Image.Resampling.BICUBIC)
    grey = grey + rng.uniform(0, 10) * np.asarray(texture)
    blurred = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.0, 0.012) * side)
    )
    grey = np.asarray(blurred) + rng.normal(0.0, rng.uniform(0, 8), (height, width))
    return _jpeg(np.clip(grey, 0, 255), int(rng.integers(30, 95)))


def _perspective(corners: np.ndarray, moved: np.ndarray) -> tuple[float, ...]:
    """Pillow's 8 perspective coefficients mapping output pixel positions
    `corners` (4, 2) to input positions `moved` (4, 2)."""
    rows = []
    for (x, y), (u, v) in zip(corners, moved):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.asarray(rows), moved.reshape(-1)))


def _jpeg(grey: np.ndarray, quality: int) -> np.ndarray:
    """The grey page saved as a JPEG of `quality` and read back."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grey.astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("L"), np.float32)


def _digit_set(
    pages: Callable[[np.random.Generator, int], np.ndarray],
    size: int,
    seed: tuple[int, ...],
    prepare: Prepare,
) -> Split:
    """`size` digits, labels 0-9 in turn then shuffled, each page drawn by
    `pages(rng, digit)` and prepared; the rng seeded by `seed`."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(size) % 10)

    def picture(digit):
        for _ in range(REDRAWS):
            try:
                return prepare(pages(rng, digit))
            except digits.ImageError:  # Drawn too faint to read: drawn again.
                continue
        raise digits.ImageError(f"{REDRAWS} drawings of a {digit} in a row held no digit")

    images = np.stack([picture(int(d)) for d in labels])  # (N, 28, 28, 1)
    return Split(images.astype(np.uint8), labels.astype(np.int64))


def font_digits(
    fonts: list[pathlib.Path],
    size: int,
    seed: int = 0,
    *,
    scan: bool = False,
    prepare: Prepare = digits.to_mnist,
) -> Split:
    """Digits drawn from fonts, one font at random per digit.

    Args:
      fonts: the font files to draw with (split_fonts: the training-allowed
        ones for training, the evaluation-only ones for evaluation).
      size: how many digits, labels 0-9 in turn, shuffled.
      seed: the drawing's seed: the same seed, the same digits.
      scan: each page scanned (`scanned`) before it is prepared.
      prepare: a page (H, W) to an MNIST digit (28, 28, 1) uint8.

    Returns:
      A data.Split of (size, 28, 28, 1) uint8 images and their labels.
    """
    if not fonts:
        raise ValueError("no fonts to draw digits with (none found, or none in this split)")

    def page(rng, digit):
        drawn = font_page(rng, fonts[rng.integers(len(fonts))], digit)
        return scanned(rng, drawn) if scan else drawn

    return _digit_set(page, size, (seed, 1, int(scan)), prepare)


def stroke_digits(
    size: int, seed: int = 0, *, scan: bool = False, prepare: Prepare = digits.to_mnist
) -> Split:
    """`size` digits drawn on the canvas by random hands (mnist_jax.strokes),
    scanned where `scan`. Seeded by `seed`."""

    def page(rng, digit):
        drawn = strokes.draw_digit(rng, digit)
        return scanned(rng, drawn) if scan else drawn

    return _digit_set(page, size, (seed, 2, int(scan)), prepare)


def evaluation_sets(
    size: int = 1000,
    seed: int = 0,
    fonts: list[pathlib.Path] | None = None,
    prepare: Prepare = digits.to_mnist,
) -> dict[str, Split]:
    """The four evaluation sets of `size` digits each, by name (SETS), the
    font sets drawn from the evaluation-only fonts of `fonts` (default:
    those found on the machine)."""
    evaluation = split_fonts(find_fonts() if fonts is None else fonts)[1]
    return {
        "fonts": font_digits(evaluation, size, seed, prepare=prepare),
        "strokes": stroke_digits(size, seed, prepare=prepare),
        "scanned_fonts": font_digits(evaluation, size, seed, scan=True, prepare=prepare),
        "scanned_strokes": stroke_digits(size, seed, scan=True, prepare=prepare),
    }
