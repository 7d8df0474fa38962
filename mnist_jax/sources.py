"""Where MNIST comes from: `load_mnist`, the one entry point, and its cache.

Three sources, tried in this order:

1. A folder of the four original IDX files that the user names (`idx_dir`),
   gzipped or not (mnist_jax.idx).
2. tfds MNIST 3.0.1, prepared as ArrayRecord, read with `tfds.data_source`
   (no TensorFlow), from `data_dir`, else `$TFDS_DATA_DIR`, else
   `~/tensorflow_datasets`.
3. A download of the IDX files (mnist_jax.idx.download_idx_files).

Whatever the source, the decoded arrays are cached as one `.npz` file so that
the next load skips decoding (tfds's PNG records take seconds, the cache a
fraction of one). Every failure raises a `DataError` that says what was
found and what to do; a dataset is never returned partially.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile

import numpy as np

from mnist_jax import caches
from mnist_jax.data import (
    MNIST,
    OFFLINE_HINT,
    SPLIT_SIZES,
    TFDS_NAME,
    TFDS_VERSION,
    CorruptDataError,
    DataNotFoundError,
    Split,
)
from mnist_jax.idx import IDX_FILES, download_idx_files, find_idx_file, load_idx_folder

log = logging.getLogger(__name__)


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The tfds data dir: the argument, else $TFDS_DATA_DIR, else tfds's default."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return pathlib.Path(data_dir).expanduser()


def tfds_prepared_dir(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / TFDS_NAME / TFDS_VERSION


def load_tfds(data_dir: str | os.PathLike) -> MNIST:
    """Decodes every record of a prepared tfds MNIST into arrays."""
    data_dir = pathlib.Path(data_dir)
    prepared = tfds_prepared_dir(data_dir)
    if not (prepared / "dataset_info.json").is_file():
        raise DataNotFoundError(
            f"{data_dir} holds no prepared tfds MNIST (no {prepared}/dataset_info.json). "
            + OFFLINE_HINT
        )
    import tensorflow_datasets as tfds  # Heavy: imported only to decode.

    # tfds decodes the PNG records with PIL where OpenCV is missing, and says
    # so through absl on every first load; PIL is what we want here.
    absl_log = logging.getLogger("absl")
    absl_log.addFilter(_no_opencv_notice)
    try:
        return _decode_tfds(tfds, data_dir, prepared)
    finally:
        absl_log.removeFilter(_no_opencv_notice)


def _no_opencv_notice(record: logging.LogRecord) -> bool:
    return "OpenCV is not installed" not in str(record.msg)


def _decode_tfds(tfds, data_dir: pathlib.Path, prepared: pathlib.Path) -> MNIST:
    splits = {}
    for split, size in SPLIT_SIZES.items():
        try:
            source = tfds.data_source(
                f"{TFDS_NAME}:{TFDS_VERSION}",
                split=split,
                data_dir=str(data_dir),
                download=False,
            )
            records = source.__getitems__(list(range(len(source))))
        except Exception as e:  # tfds raises many kinds; say which dir failed.
            raise CorruptDataError(
                f"tfds could not read the {split} split from {prepared}: {e}. "
                "Prepare the dataset again, or use --idx-dir."
            ) from e
        if len(records) != size:
            raise CorruptDataError(
                f"{prepared} {split} split has {len(records)} records, expected {size}."
            )
        images = np.stack([r["image"] for r in records]).astype(np.uint8)
        labels = np.array([r["label"] for r in records], dtype=np.int32)
        splits[split] = Split(images, labels)
    return MNIST(splits["train"], splits["test"], source=f"tfds:{prepared.resolve()}")


# ---------------------------------------------------------------------------
# The one entry point, with a cache of decoded arrays.


def default_cache_dir() -> pathlib.Path:
    return caches.cache_dir()


def load_mnist(
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> MNIST:
    """Loads MNIST from the first source that has it (see module docstring).

    Args:
      data_dir: tfds data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
        When named explicitly it must hold the prepared dataset.
      idx_dir: a folder of the four IDX files; takes precedence over tfds.
      download: where no local source exists, fetch the IDX files.
      cache_dir: where decoded arrays and downloads go; default
        $MNIST_JAX_CACHE or ~/.cache/mnist-jax.
    """
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    with caches.lock(
        cache, "the MNIST cache"
    ):  # One process downloads and decodes; others wait, then read.
        return _load(cache, data_dir, idx_dir, download)


def _load(cache: pathlib.Path, data_dir, idx_dir, download: bool) -> MNIST:
    if idx_dir is not None:
        folder = pathlib.Path(idx_dir).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"--idx-dir {folder} does not exist. " + OFFLINE_HINT)
        return _cached(cache, f"idx:{folder.resolve()}", folder, lambda: load_idx_folder(folder))
    tfds_dir = tfds_data_dir(data_dir)
    prepared = tfds_prepared_dir(tfds_dir)
    if (prepared / "dataset_info.json").is_file():
        return _cached(cache, f"tfds:{prepared.resolve()}", prepared, lambda: load_tfds(tfds_dir))
    if data_dir is not None:
        raise DataNotFoundError(
            f"--data-dir {data_dir} holds no prepared tfds MNIST {TFDS_VERSION} "
            f"(looked for {prepared}/dataset_info.json). Name the folder that contains "
            f"'{TFDS_NAME}/', or use --idx-dir for IDX files."
        )
    if not download:
        raise DataNotFoundError(
            f"No MNIST found: no tfds dataset at {prepared} and downloading is off. " + OFFLINE_HINT
        )
    folder = cache / "downloads"
    if not all(_has_idx(folder, stem) for stem, _, _ in IDX_FILES.values()):
        log.warning("No tfds MNIST at %s; downloading the IDX files to %s", prepared, folder)
        download_idx_files(folder)
    return _cached(cache, f"idx:{folder.resolve()}", folder, lambda: load_idx_folder(folder))


def _has_idx(folder: pathlib.Path, stem: str) -> bool:
    try:
        find_idx_file(folder, stem)
        return True
    except DataNotFoundError:
        return False


def _source_fingerprint(path: pathlib.Path) -> list:
    """Names, sizes and mtimes of the source files: a changed file busts the cache."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _cached(cache: pathlib.Path, source: str, path: pathlib.Path, load) -> MNIST:
    key = hashlib.sha256(json.dumps([source, _source_fingerprint(path)]).encode()).hexdigest()[:16]
    cache_file = cache / f"mnist-{key}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file) as z:
                return MNIST(
                    Split(z["train_images"], z["train_labels"]),
                    Split(z["test_images"], z["test_labels"]),
                    source=source,
                )
        except Exception as e:  # A damaged cache is rebuilt, never trusted.
            log.warning("Ignoring unreadable cache %s (%s); decoding again.", cache_file, e)
    mnist = load()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".npz.tmp", delete=False) as f:
            np.savez(
                f,
                train_images=mnist.train.images,
                train_labels=mnist.train.labels,
                test_images=mnist.test.images,
                test_labels=mnist.test.labels,
            )
        os.replace(f.name, cache_file)  # Atomic: never a half-written cache.
    except OSError as e:
        log.warning(
            "Could not write the cache %s (%s); the next load decodes again.", cache_file, e
        )
    return mnist
