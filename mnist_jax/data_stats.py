"""What the data looks like, in numbers: label counts and pixel statistics
(the exploration of report 000; drawn by mnist_jax.viz)."""

from __future__ import annotations

import numpy as np

from mnist_jax.data import NUM_CLASSES


def label_counts(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Images per label (num_classes,)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got {labels.min()} to {labels.max()}"
        )
    return np.bincount(labels, minlength=num_classes)


def pixel_statistics(images: np.ndarray, chunk: int = 10_000) -> dict:
    """Statistics of uint8 images (N, H, W, 1), pixels read as [0, 1].

    Returns "mean" and "std" over every pixel (what input normalisation
    uses), "zero_fraction", the per-pixel "mean_image" and "std_image"
    (H, W), and "histogram" (256,) of raw values. Sums run in float64 over
    chunks, so 60,000 images need no float copy of the whole set.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or not len(images):
        raise ValueError(
            f"expected uint8 images (N, H, W, C) with N > 0, got {images.dtype} {images.shape}"
        )
    total = np.zeros(images.shape[1:3])
    squares = np.zeros(images.shape[1:3])
    histogram = np.zeros(256, np.int64)
    for begin in range(0, len(images), chunk):
        block = images[begin : begin + chunk, ..., 0].astype(np.float64) / 255.0  # (n, H, W)
        total += block.sum(axis=0)
        squares += (block**2).sum(axis=0)
        histogram += np.bincount(images[begin : begin + chunk].ravel(), minlength=256)
    n = len(images)
    mean_image = total / n
    std_image = np.sqrt(np.maximum(squares / n - mean_image**2, 0.0))
    mean = float(mean_image.mean())
    std = float(np.sqrt(max(squares.sum() / (n * total.size) - mean**2, 0.0)))
    return {
        "mean": mean,
        "std": std,
        "zero_fraction": float(histogram[0] / histogram.sum()),
        "mean_image": mean_image,
        "std_image": std_image,
        "histogram": histogram,
    }
