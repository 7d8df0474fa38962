"""Real handwriting by other people than MNIST's writers: UCI's optical digits.

Alpaydin and Kaynak (1998) had 43 people write digits on preprinted forms;
NIST's programs scaled each digit to a 32x32 bitmap, and the ink pixels of
each 4x4 block were counted: 8x8 counts of 0-16 a digit. 30 writers made
the training file, 13 others the test file, optdigits.tes (1,797 digits):
a population of hands, forms and pens that MNIST's (American Census Bureau
staff and students) never saw. The reader is scored on the test file.

A digit becomes a picture the way its counts were made, undone: counts to
grey levels, bilinear interpolation back to the 32x32 bitmap's size, set on
a page with a margin, dark on white; then the same preprocessing as any
user's picture (mnist_jax.digits). The 8x8 counts are coarser than a
user's photo: a test of the hands, not of fine strokes.

Found, in order: a file named by the caller (optdigits.tes or .tra, or
gzipped), the download cache ($MNIST_JAX_CACHE/downloads/optdigits.tes),
scikit-learn's bundled copy of the test file (`sklearn.datasets.load_digits`,
where scikit-learn is installed, as with the test extra), else a download
from the UCI repository.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import numpy as np

from mnist_jax import caches, digits, idx
from mnist_jax.data import DataError, DataNotFoundError, Split

URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/optdigits/optdigits.tes"
FILENAME = "optdigits.tes"
TEST_FILE_DIGITS = 1797  # Rows of optdigits.tes (UCI's description; scikit-learn's copy).
BITMAP = 32  # The side of the bitmaps the counts were made from (4x4 blocks of 8x8 counts).
MARGIN = 8  # Paper around the digit on the page, in bitmap pixels.


def offline_hint() -> str:
    """What to do where the file cannot be downloaded (the cache as it is set now)."""
    return (
        f"Put UCI's {FILENAME} in {caches.cache_dir() / 'downloads'}, name it with --optdigits "
        "FILE, or install scikit-learn (pip install scikit-learn), which bundles it."
    )


def parse(text: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """UCI's format, a digit a line of 64 counts 0-16 and its label, commas
    between -> counts (N, 8, 8) uint8 and labels (N,) int64; DataError naming
    the line that is not."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = [int(value) for value in line.split(",")]
        except ValueError:
            row = []
        if len(row) != 65 or not all(0 <= v <= 16 for v in row) or row[64] > 9:
            raise DataError(
                f"{name}, line {number}: not a digit of UCI's optdigits format (64 counts 0-16 "
                "and a label 0-9, separated by commas); give optdigits.tes or optdigits.tra"
            )
        rows.append(row)
    if not rows:
        raise DataError(f"{name} holds no digits; give UCI's optdigits.tes or optdigits.tra")
    table = np.asarray(rows)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64].astype(np.int64)


def read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """parse() of a file, gzipped or not."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} does not exist: give the path of UCI's optdigits.tes or optdigits.tra"
        )
    return parse(idx.read_maybe_gzip(path).decode("ascii", errors="replace"), str(path))


def page(counts: np.ndarray) -> np.ndarray:
    """A digit's 8x8 counts (0-16) -> a page (48, 48) uint8: dark ink on white."""
    from PIL import Image

    grey = Image.fromarray(np.round(counts * (255 / 16)).astype(np.uint8))
    bitmap = np.asarray(grey.resize((BITMAP, BITMAP), Image.Resampling.BILINEAR))
    return 255 - np.pad(bitmap, MARGIN)


def download(dest: pathlib.Path, *, timeout: float = 30.0) -> pathlib.Path:
    """Fetches the test file into the folder `dest`, checked to be whole
    (every line parses, TEST_FILE_DIGITS of them) before it takes its name."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / FILENAME
    part = target.with_name(f"{FILENAME}.{os.getpid()}.part")
    idx.fetch_url(URL, part, timeout=timeout, hint=offline_hint())
    try:
        count = len(read(part)[1])
    except DataError:
        count = None
    if count != TEST_FILE_DIGITS:
        part.unlink()
        raise DataError(
            f"the download of {URL} is not UCI's test file of {TEST_FILE_DIGITS} digits; try "
            "again. " + offline_hint()
        )
    part.replace(target)
    return target


def find(
    path: str | os.PathLike | None = None, *, download_missing: bool = True
) -> tuple[np.ndarray, np.ndarray, str]:
    """The counts, labels and where they came from (the order of the module
    docstring). DataError (DataNotFoundError where nothing was found) with
    what to do otherwise."""
    if path is not None:
        return (*read(path), str(pathlib.Path(path).expanduser()))
    cached = caches.cache_dir() / "downloads" / FILENAME
    if cached.is_file():
        return (*read(cached), str(cached))
    try:
        from sklearn import __version__, datasets
    except ImportError:
        pass
    else:
        bundled = datasets.load_digits()
        counts = bundled.images.astype(np.uint8)  # (1797, 8, 8)
        return counts, bundled.target.astype(np.int64), f"scikit-learn {__version__}"
    if not download_missing:
        raise DataNotFoundError(f"no {FILENAME} found and downloading is off. " + offline_hint())
    with caches.lock(cached.parent, "UCI's optdigits"):  # One process downloads; others wait.
        if not cached.is_file():
            download(cached.parent)
    return (*read(cached), URL)


def load(
    path: str | os.PathLike | None = None,
    *,
    download_missing: bool = True,
    prepare: Callable[[np.ndarray], np.ndarray] = digits.to_mnist,
) -> tuple[Split, str]:
    """The test file's digits as MNIST pictures (N, 28, 28, 1), and their source."""
    counts, labels, source = find(path, download_missing=download_missing)
    images = np.stack([prepare(page(c)) for c in counts]).astype(np.uint8)
    return Split(images, labels), source
