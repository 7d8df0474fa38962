"""MNIST's original IDX files: read one, load a folder of them, download them.

A folder may hold the files gzipped or not (Kaggle ships them un-gzipped,
some with `.idx3-ubyte` names); each file's uncompressed bytes are checked
against the original's MD5. A download comes from the mirror tfds itself
uses, each file checked against tfds's registered sha256.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import logging
import os
import pathlib
import urllib.error
import urllib.request
import zlib

import numpy as np

from mnist_jax.data import (
    IMAGE_SHAPE,
    MNIST,
    NUM_CLASSES,
    OFFLINE_HINT,
    ChecksumError,
    CorruptDataError,
    DataNotFoundError,
    DownloadError,
    Split,
)

log = logging.getLogger(__name__)

# IDX file stem -> (magic number, MD5 of the uncompressed original bytes).
IDX_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", 2051, "6bbc9ace898e44ae57da46a324031adb"),
    ("train", "labels"): ("train-labels-idx1-ubyte", 2049, "a25bea736e30d166cdddb491f175f624"),
    ("test", "images"): ("t10k-images-idx3-ubyte", 2051, "2646ac647ad5339dbf082846283269ea"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", 2049, "27ae3e4e09519cfbb04c329615203637"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped or not) into a uint8 array.

    Checks the magic number (two zero bytes, type 0x08 = uint8, rank), that
    the header is complete, and that the data length is exactly the product
    of the dimensions.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {path} does not exist.")
    raw = read_maybe_gzip(path)
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


def read_maybe_gzip(path: pathlib.Path) -> bytes:
    """The file's bytes, uncompressed where it is gzipped (by its magic number, not its name)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"\x1f\x8b":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as e:
        raise CorruptDataError(
            f"{path} is a damaged gzip file ({e}); it is probably truncated. Download it again."
        ) from e


def find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
    """Finds an IDX file under the names the original mirror and Kaggle use."""
    kaggle = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
    candidates = [
        folder / name for base in (stem, kaggle) for name in (base, base + ".gz", f"{base}/{base}")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        f"{folder} has no {stem} (looked for "
        f"{', '.join(dict.fromkeys(str(c.relative_to(folder)) for c in candidates))}). "
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
        path = find_idx_file(folder, stem)
        array = read_idx(path)
        raw_magic = 0x800 + array.ndim
        if raw_magic != magic:
            raise CorruptDataError(
                f"{path} holds a rank-{array.ndim} array (magic {raw_magic}), but {stem} "
                f"must have magic {magic}. Are the files swapped or renamed?"
            )
        if verify_md5:
            digest = hashlib.md5(read_maybe_gzip(path)).hexdigest()
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
    except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
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
        part = target.with_name(f"{target.name}.{os.getpid()}.part")  # This process's own.
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
