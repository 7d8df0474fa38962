"""MNIST in memory: splits of uint8 arrays, the data errors, seeded stratified splits.

Where MNIST comes from (a tfds data dir, a folder of IDX files, a download)
is mnist_jax.sources (`load_mnist`) and mnist_jax.idx; this module holds
what they return and every module downstream takes: `Split`, `MNIST`,
`Splits`, and the `DataError`s that say what was found and what to do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TFDS_NAME = "mnist"
TFDS_VERSION = "3.0.1"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

OFFLINE_HINT = (
    "Point the run at data already on disk: --data-dir DIR or the TFDS_DATA_DIR "
    f"environment variable (a tfds data dir holding {TFDS_NAME}/{TFDS_VERSION}), or "
    "--idx-dir DIR (a folder with the four MNIST IDX files, gzipped or not, e.g. "
    "Kaggle's MNIST download)."
)


class DataError(Exception):
    """A dataset could not be loaded; the message says why and what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A folder or file that should hold MNIST does not exist."""


class CorruptDataError(DataError):
    """A file exists but its contents are not a valid (complete) IDX file."""


class ChecksumError(DataError):
    """A file's bytes differ from the registered original."""


class DownloadError(DataError):
    """The network could not be reached, or a download broke off."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of MNIST held in memory.

    Attributes:
      images: (N, 28, 28, 1) uint8, 0 = background; or (N, H, W, C) float
        features a frozen network computed from them (see mnist_jax.frozen_features).
      labels: (N,) int32 in [0, 10).
      targets: None, or (N, 28, 28, 1) uint8 clean images when `images` are
        noisy (or denoised) copies: what a reconstruction is scored against.
    """

    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None = None

    def __post_init__(self):
        if self.images.ndim != 4 or (
            self.images.dtype == np.uint8 and self.images.shape[1:] != (*IMAGE_SHAPE, 1)
        ):
            raise ValueError(
                f"images must be (N, 28, 28, 1) (or (N, H, W, C) features), got {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {self.labels.shape}")
        if self.targets is not None and (
            self.targets.dtype != np.uint8
            or self.targets.shape != (self.images.shape[0], *IMAGE_SHAPE, 1)
        ):
            raise ValueError(
                f"targets must be uint8 images like `images` {self.images.shape}, got "
                f"{self.targets.dtype} {self.targets.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> Split:
        targets = None if self.targets is None else self.targets[indices]
        return Split(self.images[indices], self.labels[indices], targets)


@dataclasses.dataclass(frozen=True)
class MNIST:
    """The full dataset: 60,000 train and 10,000 test examples."""

    train: Split
    test: Split
    source: str  # Where it was read from, e.g. "tfds:/data/mnist/3.0.1".


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (rest, held_out) with `fraction` of each class held out.

    Reproducible from `seed`; both index arrays are sorted and disjoint.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held_out = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(round(fraction * members.size))
        held_out.append(rng.permutation(members)[:count])
    held = np.sort(np.concatenate(held_out)).astype(np.int64)
    rest = np.setdiff1d(np.arange(labels.shape[0]), held)
    return rest, held


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices with the class proportions of `labels` (for quick runs)."""
    if size >= labels.shape[0]:
        return np.arange(labels.shape[0])
    _, subset = stratified_split(labels, size / labels.shape[0], seed)
    return subset


@dataclasses.dataclass(frozen=True)
class Splits:
    """What a run trains on, selects its best checkpoint on, and is scored on.
    `val` None: no validation (the speedrun trains on the whole train split)."""

    train: Split
    val: Split | None
    test: Split


def make_splits(
    mnist: MNIST,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> Splits:
    """Train/validation from MNIST's train split (stratified, seeded); test apart.

    Args:
      mnist: the full dataset.
      val_fraction: the fraction of each class of the training images held
        out for validation, in [0, 1).
      seed: seeds the subsets and the validation split.
      train_size: a stratified subset of MNIST's train split, taken before
        the validation split (quick runs and tests); None: all of it.
      test_size: a stratified subset of the test split (quick runs and
        tests); None: all of it.

    Returns:
      The Splits: train and val, disjoint, from MNIST's train split; test
      from its test split.
    """
    train = mnist.train
    if train_size is not None:
        train = train.take(stratified_subset(train.labels, train_size, seed))
    test = mnist.test
    if test_size is not None:
        test = test.take(stratified_subset(test.labels, test_size, seed))
    train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    return Splits(train=train.take(train_idx), val=train.take(val_idx), test=test)
