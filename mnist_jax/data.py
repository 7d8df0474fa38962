"""MNIST sources -> uint8 arrays, cached; seeded stratified splits.

Three sources, tried in this order by `load_mnist`:

1. A folder of the four original IDX files that the user names (`idx_dir`),
   gzipped or not: Kaggle ships them un-gzipped, some with `.idx3-ubyte`
   names.
2. tfds MNIST 3.0.1, prepared as ArrayRecord, read with `tfds.data_source`
   (no TensorFlow), from `data_dir`, else `$TFDS_DATA_DIR`, else
   `~/tensorflow_datasets`.
3. A download of the IDX files from the mirror tfds itself uses, each file
   checked against tfds's registered sha256.

Whatever the source, the decoded arrays are cached as one `.npz` file so that
the next load skips decoding (about 15 s for tfds's PNG records, under 1 s
from the cache). Every failure raises a `DataError` that says what was found
and what to do; a dataset is never returned partially.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import json
import logging
import os
import pathlib
import socket
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np

log = logging.getLogger(__name__)

TFDS_NAME = "mnist"
TFDS_VERSION = "3.0.1"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

# IDX file stem -> (magic number, MD5 of the uncompressed original bytes).
IDX_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", 2051, "6bbc9ace898e44ae57da46a324031adb"),
    ("train", "labels"): ("train-labels-idx1-ubyte", 2049, "a25bea736e30d166cdddb491f175f624"),
    ("test", "images"): ("t10k-images-idx3-ubyte", 2051, "2646ac647ad5339dbf082846283269ea"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", 2049, "27ae3e4e09519cfbb04c329615203637"),
}

OFFLINE_HINT = (
    "Point the run at data already on disk: --data-dir DIR (a tfds data dir "
    f"holding {TFDS_NAME}/{TFDS_VERSION}) or --idx-dir DIR (a folder with the four "
    "MNIST IDX files, gzipped or not, e.g. Kaggle's MNIST download)."
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
        features a frozen network computed from them (see mnist_jax.transfer_learning).
      labels: (N,) int32 in [0, 10).
      targets: None, or (N, 28, 28, 1) uint8 clean images when `images` are
        noisy (or denoised) copies: what a reconstruction is scored against.
    """

    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None = None

    def __post_init__(self):
        if self.images.ndim != 4 or (self.images.dtype == np.uint8 and self.images.shape[1:] != (*IMAGE_SHAPE, 1)):
            raise ValueError(f"images must be (N, 28, 28, 1) (or (N, H, W, C) features), got {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be ({self.images.shape[0]},), got {self.labels.shape}"
            )
        if self.targets is not None and (self.targets.dtype != np.uint8
                                         or self.targets.shape != (self.images.shape[0], *IMAGE_SHAPE, 1)):
            raise ValueError(f"targets must be uint8 images like `images` {self.images.shape}, got "
                             f"{self.targets.dtype} {self.targets.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> "Split":
        targets = None if self.targets is None else self.targets[indices]
        return Split(self.images[indices], self.labels[indices], targets)


@dataclasses.dataclass(frozen=True)
class MNIST:
    """The full dataset: 60,000 train and 10,000 test examples."""

    train: Split
    test: Split
    source: str  # Where it was read from, e.g. "tfds:/data/mnist/3.0.1".


# ---------------------------------------------------------------------------
# IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped or not) into a uint8 array.

    Checks the magic number (two zero bytes, type 0x08 = uint8, rank), that
    the header is complete, and that the data length is exactly the product
    of the dimensions.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {path} does not exist.")
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise CorruptDataError(
            f"{path} is {len(raw)} bytes long, too short for an IDX header; "
            "the file is truncated: download it again."
        )
    zero0, zero1, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise CorruptDataError(
            f"{path} has magic number 0x{raw[:4].hex()}, which is not an unsigned-byte "
            "IDX file (expected 0x00000801 for labels or 0x00000803 for images). "
            "Is this an MNIST IDX file?"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise CorruptDataError(
            f"{path} ends inside its header ({len(raw)} of {header_len} bytes): "
            "the file is truncated; download it again."
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise CorruptDataError(
            f"{path} is {what}: its header announces shape {dims} ({expected} bytes of "
            f"data) but it holds {actual}. Download the file again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_maybe_gzip(path: pathlib.Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"\x1f\x8b":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as e:
        raise CorruptDataError(
            f"{path} is a damaged gzip file ({e}); it is probably truncated. "
            "Download it again."
        ) from e


def _find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
    """Finds an IDX file under the names the original mirror and Kaggle use."""
    kaggle = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
    candidates = [
        folder / name
        for base in (stem, kaggle)
        for name in (base, base + ".gz", f"{base}/{base}")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        f"{folder} has no {stem} (looked for {', '.join(c.name for c in candidates[:4])}). "
        "The folder must hold all four MNIST IDX files: "
        + ", ".join(stem for stem, _, _ in IDX_FILES.values())
        + " (each optionally .gz)."
    )


def load_idx_folder(folder: str | os.PathLike, *, verify_md5: bool = True) -> MNIST:
    """Reads the four MNIST IDX files from `folder`.

    Args:
      folder: holds train/t10k images/labels, gzipped or not.
      verify_md5: compare each file's uncompressed bytes with the MD5 of the
        original (turn off only for synthetic test files).
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"IDX folder {folder} does not exist. " + OFFLINE_HINT)
    arrays = {}
    for (split, kind), (stem, magic, md5) in IDX_FILES.items():
        path = _find_idx_file(folder, stem)
        array = read_idx(path)
        raw_magic = 0x800 + array.ndim
        if raw_magic != magic:
            raise CorruptDataError(
                f"{path} holds a rank-{array.ndim} array (magic {raw_magic}), but {stem} "
                f"must have magic {magic}. Are the files swapped or renamed?"
            )
        if verify_md5:
            digest = hashlib.md5(_read_maybe_gzip(path)).hexdigest()
            if digest != md5:
                raise ChecksumError(
                    f"{path}: MD5 of the uncompressed bytes is {digest}, the original "
                    f"MNIST file has {md5}. The file is damaged or not MNIST; "
                    "download it again."
                )
        arrays[split, kind] = array
    splits = {}
    for split in ("train", "test"):
        images, labels = arrays[split, "images"], arrays[split, "labels"]
        if images.shape[1:] != IMAGE_SHAPE or images.shape[0] != labels.shape[0]:
            raise CorruptDataError(
                f"{folder}: {split} images have shape {images.shape} and labels "
                f"{labels.shape}; expected (N, 28, 28) images with N labels."
            )
        if labels.max(initial=0) >= NUM_CLASSES:
            raise CorruptDataError(f"{folder}: {split} labels hold values >= 10.")
        splits[split] = Split(images[..., None].copy(), labels.astype(np.int32))
    return MNIST(splits["train"], splits["test"], source=f"idx:{folder.resolve()}")


# ---------------------------------------------------------------------------
# Download from the mirror tfds uses, checked against tfds's checksums.


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    url: str
    size: int
    sha256: str
    filename: str


def registered_mnist_files() -> list[RemoteFile]:
    """The MNIST URLs, sizes and sha256 that tfds registers for its download."""
    text = (
        importlib.resources.files("tensorflow_datasets") / "url_checksums" / "mnist.txt"
    ).read_text()
    files = []
    for line in text.splitlines():
        if line.strip():
            url, size, sha256, filename = line.split("\t")
            files.append(RemoteFile(url, int(size), sha256, filename))
    return files


def fetch_url(url: str, dest: pathlib.Path, *, timeout: float, hint: str) -> None:
    """Streams `url` into the file `dest`; on failure removes it and raises
    DownloadError ending with `hint` (what to do offline)."""
    log.info("Downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"Could not download {url} ({reason}); this machine may be offline. " + hint
        ) from e


def download_idx_files(
    dest: str | os.PathLike,
    files: list[RemoteFile] | None = None,
    *,
    timeout: float = 30.0,
) -> pathlib.Path:
    """Downloads the four gzipped IDX files into `dest`, verifying each.

    A file already present with the right sha256 is not fetched again. Each
    download goes to a `.part` file renamed only once verified, so `dest`
    never holds a partial file under its final name.
    """
    dest = pathlib.Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for remote in files if files is not None else registered_mnist_files():
        target = dest / remote.filename
        if target.is_file() and sha256_of(target) == remote.sha256:
            continue
        part = target.with_name(target.name + ".part")
        fetch_url(remote.url, part, timeout=timeout, hint=OFFLINE_HINT)
        digest = sha256_of(part)
        if digest != remote.sha256:
            part.unlink()
            raise ChecksumError(
                f"Downloaded {remote.url} has sha256 {digest}, but tfds registers "
                f"{remote.sha256}. The download is damaged or the mirror changed; "
                "try again, or use --idx-dir with files you trust."
            )
        part.replace(target)
    return dest


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# tfds (ArrayRecord, no TensorFlow)


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

    splits = {}
    for split, size in SPLIT_SIZES.items():
        try:
            source = tfds.data_source(
                f"{TFDS_NAME}:{TFDS_VERSION}", split=split, data_dir=str(data_dir),
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
    return pathlib.Path(os.environ.get("MNIST_JAX_CACHE", "~/.cache/mnist-jax")).expanduser()


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
            f"No MNIST found: no tfds dataset at {prepared} and downloading is off. "
            + OFFLINE_HINT
        )
    folder = cache / "downloads"
    if not all(_has_idx(folder, stem) for stem, _, _ in IDX_FILES.values()):
        log.warning("No tfds MNIST at %s; downloading the IDX files to %s", prepared, folder)
        download_idx_files(folder)
    return _cached(cache, f"idx:{folder.resolve()}", folder, lambda: load_idx_folder(folder))


def _has_idx(folder: pathlib.Path, stem: str) -> bool:
    try:
        _find_idx_file(folder, stem)
        return True
    except DataNotFoundError:
        return False


def _source_fingerprint(path: pathlib.Path) -> list:
    """Names, sizes and mtimes of the source files: a changed file busts the cache."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _cached(cache: pathlib.Path, source: str, path: pathlib.Path, load) -> MNIST:
    key = hashlib.sha256(
        json.dumps([source, _source_fingerprint(path)]).encode()
    ).hexdigest()[:16]
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
                train_images=mnist.train.images, train_labels=mnist.train.labels,
                test_images=mnist.test.images, test_labels=mnist.test.labels,
            )
        os.replace(f.name, cache_file)  # Atomic: never a half-written cache.
    except OSError as e:
        log.warning("Could not write the cache %s (%s); the next load decodes again.", cache_file, e)
    return mnist


# ---------------------------------------------------------------------------
# Splits


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
    train: Split
    val: Split
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

    `train_size` / `test_size` take stratified subsets (of train before the
    validation split) for quick runs and tests.
    """
    train = mnist.train
    if train_size is not None:
        train = train.take(stratified_subset(train.labels, train_size, seed))
    test = mnist.test
    if test_size is not None:
        test = test.take(stratified_subset(test.labels, test_size, seed))
    train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    return Splits(train=train.take(train_idx), val=train.take(val_idx), test=test)
