"""Where the tests find the real MNIST, and the files of one format they make from it.

`locate()` looks where CI says, else where the library looks
(mnist_jax.sources.load_mnist):

1. $MNIST_JAX_TEST_DATA, when set (.ci/run sets it to the ../shared/data
   beside the clone): a folder holding a tfds data dir, `tensorflow_datasets/`
   (with mnist/3.0.1), and/or the four original IDX files in `mnist/`.
2. tfds MNIST 3.0.1 in $TFDS_DATA_DIR, else in ~/tensorflow_datasets.
3. The IDX files in `downloads/` of the user's cache, where the library's
   download leaves them. The user's cache is the $MNIST_JAX_CACHE in force
   before the tests gave the session a cache of its own (tests/conftest.py
   keeps it in $MNIST_JAX_TESTS_USER_CACHE), else ~/.cache/mnist-jax.
4. Where neither holds MNIST: the library's download into that folder now,
   checked against tfds's checksums (mnist_jax.idx).

When all fail, `locate` raises `NotFound`, one sentence naming the fix, and
every test that needs the real MNIST fails with it (never skips: CI must
run them).

A test of one format's reader gets files of that format whichever source
was found: the genuine ones where they were found, else files written here
from the real arrays (`write_idx_files`, `write_tfds`).

mnist_jax is imported inside the functions only: tests/conftest.py imports
this module before it points the caches at the session's own (mnist_jax
reads them when imported).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib

import numpy as np

TEST_DATA = "MNIST_JAX_TEST_DATA"
USER_CACHE = "MNIST_JAX_TESTS_USER_CACHE"

# `examples_digest` of the original IDX files' splits (MD5-verified; tfds's
# MNIST 3.0.1 gives the same, in its own order).
ORIGINAL_DIGESTS = {
    "train": "db4e1cca553c0b12d2db550ecbd83ef00a5efb5de62198902b50f918d950ea68",
    "test": "6e83f9f3931ab86088fabe871cac2e64d3476dbd3808989f715846bef3902095",
}


class NotFound(Exception):
    """No real MNIST here, nor a way to fetch it; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class RealData:
    """The real MNIST found: a tfds data dir and/or a folder of the original IDX files."""

    tfds_dir: pathlib.Path | None
    idx_dir: pathlib.Path | None

    @property
    def flags(self) -> list[str]:
        """A command's data flags: the tfds dir where there is one (load_mnist
        prefers it too), else the IDX folder."""
        if self.tfds_dir is not None:
            return ["--data-dir", str(self.tfds_dir)]
        return ["--idx-dir", str(self.idx_dir)]

    def load(self):
        """The MNIST of `flags`, through load_mnist and its cache."""
        from mnist_jax import sources

        if self.tfds_dir is not None:
            return sources.load_mnist(data_dir=self.tfds_dir, download=False)
        return sources.load_mnist(idx_dir=self.idx_dir, download=False)


def user_cache() -> pathlib.Path:
    return pathlib.Path(os.environ.get(USER_CACHE) or "~/.cache/mnist-jax").expanduser()


def locate() -> RealData:
    """The real MNIST, looked for in the order of the module docstring."""
    from mnist_jax import caches, idx, sources
    from mnist_jax.data import DownloadError

    if named := os.environ.get(TEST_DATA):
        folder = pathlib.Path(named).expanduser()
        found = RealData(_tfds_dir(folder / "tensorflow_datasets"), _idx_dir(folder / "mnist"))
        if found.tfds_dir is None and found.idx_dir is None:
            raise NotFound(
                f"real MNIST not found in {TEST_DATA}={folder}: point it at a folder holding a "
                "tfds data dir tensorflow_datasets/ (with mnist/3.0.1) or the four MNIST IDX "
                "files in mnist/, or unset it."
            )
        return found
    tfds_dir = sources.tfds_data_dir()
    downloads = user_cache() / "downloads"
    found = RealData(_tfds_dir(tfds_dir), _idx_dir(downloads))
    if found.tfds_dir is not None or found.idx_dir is not None:
        return found
    try:
        with caches.lock(user_cache(), "the MNIST cache"):  # The library's lock there.
            idx.download_idx_files(downloads)
    except DownloadError as e:
        raise NotFound(
            f"real MNIST not found (no tfds mnist/3.0.1 in {tfds_dir}, no IDX files in "
            f"{downloads}) and its download failed: set TFDS_DATA_DIR to a tfds data dir "
            f"holding mnist/3.0.1, put the four MNIST IDX .gz files in {downloads}, or run "
            "the tests once online."
        ) from e
    return RealData(None, downloads)


def _tfds_dir(data_dir: pathlib.Path) -> pathlib.Path | None:
    from mnist_jax import sources

    prepared = sources.tfds_prepared_dir(data_dir)
    return data_dir if (prepared / "dataset_info.json").is_file() else None


def _idx_dir(folder: pathlib.Path) -> pathlib.Path | None:
    from mnist_jax import data

    try:
        idx_files(folder)
    except data.DataNotFoundError:
        return None
    return folder


def idx_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The four IDX files in `folder`, under whichever names it gives them."""
    from mnist_jax import idx

    return [idx.find_idx_file(folder, stem) for stem, _, _ in idx.IDX_FILES.values()]


def examples_digest(split) -> str:
    """A split's examples (image and label) as one sha256, whatever their order."""
    md5s = sorted(
        hashlib.md5(image.tobytes() + bytes([label])).digest()
        for image, label in zip(split.images, split.labels)
    )
    return hashlib.sha256(b"".join(md5s)).hexdigest()


# --- files of one format, written from the real arrays ----------------------------------------


@dataclasses.dataclass(frozen=True)
class IdxFiles:
    """A folder of the four IDX files and the MD5 of each one's uncompressed
    bytes: the originals' (mnist_jax.idx.IDX_FILES) where the files are the
    genuine ones, else those of the files written."""

    folder: pathlib.Path
    md5s: dict[str, str]  # stem -> MD5

    @property
    def paths(self) -> list[pathlib.Path]:
        return idx_files(self.folder)

    @property
    def table(self) -> dict:
        """mnist_jax.idx.IDX_FILES with these files' MD5s, for the MD5 check to compare with."""
        from mnist_jax import idx

        return {
            key: (stem, magic, self.md5s[stem]) for key, (stem, magic, _) in idx.IDX_FILES.items()
        }


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of `array`: magic number, dimensions, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_files(mnist, folder: pathlib.Path) -> IdxFiles:
    """`mnist`'s splits as the four IDX files, gzipped as the mirror serves
    them (its examples in its order: not the originals' bytes, unless it
    came from them)."""
    from mnist_jax import idx

    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for (split, kind), (stem, _, _) in idx.IDX_FILES.items():
        arrays = getattr(mnist, split)
        raw = idx_bytes(arrays.images[..., 0] if kind == "images" else arrays.labels)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
        md5s[stem] = hashlib.md5(raw).hexdigest()
    return IdxFiles(folder, md5s)


def write_tfds(mnist, data_dir: pathlib.Path) -> pathlib.Path:
    """`mnist`'s splits as a tfds data dir holding mnist/3.0.1 the way tfds
    prepares it, written without TensorFlow: per split one ArrayRecord file
    of serialized tf.train.Example records (tfds's generated proto, which
    tfds.data_source parses without TensorFlow too), each image a PNG (PIL),
    its label an int64; dataset_info.json with the split sizes, and
    features.json written by tfds's own FeaturesDict."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    from PIL import Image
    from tensorflow_datasets.proto import tf_example_pb2

    from mnist_jax import data, sources

    prepared = sources.tfds_prepared_dir(data_dir)
    prepared.mkdir(parents=True)
    splits = []
    for name in data.SPLIT_SIZES:
        split = getattr(mnist, name)
        path = prepared / f"{data.TFDS_NAME}-{name}.array_record-00000-of-00001"
        writer = ArrayRecordWriter(str(path), "group_size:1")  # tfds's: one record a chunk.
        for image, label in zip(split.images, split.labels):
            png = io.BytesIO()
            Image.fromarray(image[..., 0]).save(png, format="PNG")
            example = tf_example_pb2.Example()
            example.features.feature["image"].bytes_list.value.append(png.getvalue())
            example.features.feature["label"].int64_list.value.append(int(label))
            writer.write(example.SerializeToString())
        writer.close()
        splits.append({"name": name, "shardLengths": [str(len(split))]})
    info = {
        "name": data.TFDS_NAME,
        "version": data.TFDS_VERSION,
        "fileFormat": "array_record",
        "splits": splits,
    }
    (prepared / "dataset_info.json").write_text(json.dumps(info, indent=2))
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(*data.IMAGE_SHAPE, 1)),
            "label": tfds.features.ClassLabel(num_classes=data.NUM_CLASSES),
        }
    )
    features.save_config(str(prepared))
    return data_dir
