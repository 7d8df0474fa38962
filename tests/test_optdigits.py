"""UCI's optical digits, the reader's set of real handwriting (mnist_jax.optdigits):
read from files the tests write, found in the documented order, downloaded
whole or not at all."""

import gzip
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_jax import digits, idx, optdigits
from mnist_jax.data import DataError, DataNotFoundError, DownloadError


def block_counts(image: np.ndarray) -> np.ndarray:
    """A digit (28, 28) as UCI counted theirs: a 32x32 bitmap, ink pixels per 4x4 block."""
    bitmap = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.NEAREST)) > 127
    return bitmap.reshape(8, 4, 8, 4).sum(axis=(1, 3))  # (8, 8), 0-16


def uci_text(counts: np.ndarray, labels: np.ndarray) -> str:
    return "".join(
        ",".join(map(str, [*c.ravel(), label])) + "\r\n" for c, label in zip(counts, labels)
    )


@pytest.fixture
def no_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` raises ImportError.


def test_a_uci_file_is_read_plain_or_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    counts, labels = rng.integers(0, 17, (12, 8, 8)), np.arange(12) % 10
    plain, packed = tmp_path / "optdigits.tes", tmp_path / "digits.csv.gz"
    plain.write_text(uci_text(counts, labels) + "\n")
    packed.write_bytes(gzip.compress(uci_text(counts, labels).encode()))
    for path in (plain, packed):
        got, got_labels = optdigits.read(path)
        assert got.dtype == np.uint8 and got.shape == (12, 8, 8)
        np.testing.assert_array_equal(got, counts)
        np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    "line", ["1,2,3", ",".join(["17"] * 64 + ["1"]), ",".join(["0"] * 64 + ["10"]), "a,b"]
)
def test_a_line_out_of_the_format_is_named(tmp_path, line):
    path = tmp_path / "bad.tes"
    path.write_text(",".join(["0"] * 64 + ["3"]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=r"bad.tes, line 2: not a digit of UCI's optdigits"):
        optdigits.read(path)


def test_an_empty_or_missing_file_says_what_to_give(tmp_path):
    (tmp_path / "empty.tes").write_text("\n")
    with pytest.raises(DataError, match="holds no digits; give UCI's optdigits.tes"):
        optdigits.read(tmp_path / "empty.tes")
    with pytest.raises(DataNotFoundError, match="does not exist: give the path of UCI's"):
        optdigits.read(tmp_path / "none.tes")


def test_a_page_is_dark_ink_on_white_with_the_ink_where_the_counts_are():
    counts = np.zeros((8, 8), np.uint8)
    counts[2:6, 3] = 16  # A bar: a 1.
    page = optdigits.page(counts)
    assert page.shape == (48, 48) and page.dtype == np.uint8
    assert page[:8].min() == 255 and page[:, :8].min() == 255  # The margin is paper.
    ink = page < 128
    rows, cols = np.nonzero(ink)
    assert 8 + 4 * 2 <= rows.mean() <= 8 + 4 * 6 and 8 + 4 * 3 <= cols.mean() <= 8 + 4 * 4
    assert digits.to_mnist(page).shape == (28, 28, 1)


def test_counts_made_from_mnist_digits_come_back_as_those_digits(real_mnist):
    """UCI's counting applied to real digits, undone by page() and to_mnist:
    each picture is like the digit it was counted from (and unlike its negative)."""
    images = real_mnist.test.images[:100, ..., 0]  # (100, 28, 28)
    back = [digits.to_mnist(optdigits.page(block_counts(im)))[..., 0] for im in images]
    likeness = [
        np.corrcoef(b.ravel().astype(float), im.ravel().astype(float))[0, 1]
        for b, im in zip(back, images)
    ]
    assert np.mean(likeness) > 0.6 and np.min(likeness) > 0.2


def test_the_cached_file_comes_first_then_scikit_learns_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path))
    counts, labels, source = optdigits.find(download_missing=False)
    assert source.startswith("scikit-learn") and counts.shape == (optdigits.TEST_FILE_DIGITS, 8, 8)
    assert counts.max() == 16 and sorted(set(labels)) == list(range(10))
    assert min(np.bincount(labels)) > 170  # About 180 of each digit.
    cached = tmp_path / "downloads" / optdigits.FILENAME
    cached.parent.mkdir()
    cached.write_text(uci_text(counts[:20], labels[:20]))
    got, got_labels, source = optdigits.find(download_missing=False)
    assert source == str(cached) and len(got) == 20
    split, source = optdigits.load(cached)
    assert split.images.shape == (20, 28, 28, 1) and source == str(cached)
    np.testing.assert_array_equal(split.labels, labels[:20])


def test_offline_without_a_copy_the_error_says_where_to_put_it(tmp_path, monkeypatch, no_sklearn):
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="downloading is off. Put UCI's optdigits.tes"):
        optdigits.find(download_missing=False)

    def offline(url, dest, *, timeout, hint):
        raise DownloadError(f"Could not download {url}; this machine may be offline. " + hint)

    monkeypatch.setattr(idx, "fetch_url", offline)
    with pytest.raises(DownloadError, match="may be offline. Put UCI's optdigits.tes in"):
        optdigits.find()
    assert not list((tmp_path / "downloads").glob("optdigits*"))


def test_a_download_is_kept_only_whole(tmp_path, monkeypatch, no_sklearn):
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path))
    rng = np.random.default_rng(1)
    rows = optdigits.TEST_FILE_DIGITS
    counts, labels = rng.integers(0, 17, (rows, 8, 8)), np.arange(rows) % 10
    served = {"text": uci_text(counts[:100], labels[:100])}  # Broken off.

    def fetch(url, dest, *, timeout, hint):
        assert url == optdigits.URL
        dest.write_text(served["text"])

    monkeypatch.setattr(idx, "fetch_url", fetch)
    with pytest.raises(DataError, match=f"is not UCI's test file of {rows} digits"):
        optdigits.find()
    assert not list((tmp_path / "downloads").glob("optdigits*"))
    served["text"] = uci_text(counts, labels)
    got, got_labels, source = optdigits.find()
    assert source == optdigits.URL and len(got) == rows
    np.testing.assert_array_equal(got, counts)
    kept = tmp_path / "downloads" / optdigits.FILENAME
    assert kept.is_file() and optdigits.find()[2] == str(kept)  # Not fetched again.
