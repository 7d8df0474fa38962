"""Data sources, their clear errors, the cache and the splits."""

import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from mnist_jax import data, idx, sources
from tests import real_data
from tests.conftest import ROOT
from tests.real_data import idx_bytes


def write_fake_idx_folder(folder, n_train=20, n_test=10, gz=False):
    """Four structurally valid IDX files (not the real MNIST: MD5s differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


# --- IDX reader -------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    path = tmp_path / "x"
    path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
    np.testing.assert_array_equal(idx.read_idx(path), array)


def test_truncated_file_is_named(tmp_path):
    raw = idx_bytes(np.zeros((3, 28, 28)))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(raw[:-100])
    with pytest.raises(data.CorruptDataError, match=r"truncated.*\(3, 28, 28\)"):
        idx.read_idx(path)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28))))[:-30])
    with pytest.raises(data.CorruptDataError, match="damaged gzip"):
        idx.read_idx(path)


def test_truncated_header_is_named(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(data.CorruptDataError, match="header"):
        idx.read_idx(path)


def test_wrong_magic_is_named(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"PK\x03\x04" + bytes(100))  # A zip file, say.
    with pytest.raises(data.CorruptDataError, match="magic number 0x504b0304"):
        idx.read_idx(path)


def test_swapped_files_are_caught(tmp_path):
    write_fake_idx_folder(tmp_path)
    images = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(images)
    with pytest.raises(data.CorruptDataError, match="swapped"):
        idx.load_idx_folder(tmp_path, verify_md5=False)


def test_missing_folder(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="does not exist.*--idx-dir"):
        sources.load_mnist(idx_dir=tmp_path / "nowhere", cache_dir=tmp_path)


def test_missing_file(tmp_path):
    write_fake_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataNotFoundError, match="no t10k-labels-idx1-ubyte"):
        idx.load_idx_folder(tmp_path, verify_md5=False)


def test_checksum_mismatch(tmp_path):
    write_fake_idx_folder(tmp_path)
    with pytest.raises(data.ChecksumError, match="MD5.*6bbc9ace898e44ae57da46a324031adb"):
        idx.load_idx_folder(tmp_path)


def test_kaggle_names_and_gzip_are_found(tmp_path):
    arrays = write_fake_idx_folder(tmp_path, gz=True)
    for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # Kaggle's dotted names
        (tmp_path / f"{stem}.gz").rename(tmp_path / stem.replace("-idx", ".idx"))
    mnist = idx.load_idx_folder(tmp_path, verify_md5=False)
    np.testing.assert_array_equal(mnist.train.images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(mnist.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert mnist.train.images.shape == (20, 28, 28, 1) and mnist.train.labels.dtype == np.int32


def test_named_tfds_dir_without_mnist(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="holds no prepared tfds MNIST"):
        sources.load_mnist(data_dir=tmp_path, cache_dir=tmp_path)


def test_nothing_found_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(data.DataNotFoundError, match="downloading is off"):
        sources.load_mnist(download=False, cache_dir=tmp_path)


# --- download (from a server on loopback, over files the test makes) ------


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/served over HTTP on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def remote_files(served, base_url, corrupt=None):
    files = []
    for path in sorted(served.iterdir()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if path.name == corrupt:
            sha = "0" * 64
        files.append(idx.RemoteFile(f"{base_url}/{path.name}", path.stat().st_size, sha, path.name))
    return files


def test_download_verifies_and_loads_real_files(tmp_path, file_server, monkeypatch, real_idx_files):
    served, url = file_server
    for path in real_idx_files.paths:
        shutil.copy(path, served)
    files = remote_files(served, url)
    assert len(files) == 4
    monkeypatch.setattr(idx, "registered_mnist_files", lambda: files)
    # The MD5s the loading checks: the originals', unless the files were written from tfds's arrays.
    monkeypatch.setattr(idx, "IDX_FILES", real_idx_files.table)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    mnist = sources.load_mnist(cache_dir=tmp_path / "cache")
    assert len(mnist.train) == 60_000 and len(mnist.test) == 10_000
    assert sorted(p.name for p in (tmp_path / "cache" / "downloads").iterdir()) == sorted(
        f.filename for f in files
    )


def test_download_checksum_mismatch_leaves_no_file(tmp_path, file_server):
    served, url = file_server
    write_fake_idx_folder(served, gz=True)
    files = remote_files(served, url, corrupt="t10k-images-idx3-ubyte.gz")
    with pytest.raises(data.ChecksumError, match="sha256"):
        idx.download_idx_files(tmp_path / "dl", files)
    assert not (tmp_path / "dl" / "t10k-images-idx3-ubyte.gz").exists()
    assert not list((tmp_path / "dl").glob("*.part"))


LOAD = """
import hashlib, json, sys
from mnist_jax import idx, sources
files = [idx.RemoteFile(*f) for f in json.loads(sys.argv[1])]
idx.registered_mnist_files = lambda: files
md5s = json.loads(sys.argv[3])
idx.IDX_FILES = {k: (stem, magic, md5s[stem]) for k, (stem, magic, _) in idx.IDX_FILES.items()}
mnist = sources.load_mnist(cache_dir=sys.argv[2])
print(hashlib.sha256(mnist.train.images.tobytes() + mnist.test.labels.tobytes()).hexdigest())
"""


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tfds", "download"])
def test_two_processes_on_an_empty_cache_both_load_it_and_leave_one(
    source, tmp_path, file_server, monkeypatch, real_idx_files, request
):
    """Started together, each finds MNIST; one downloads and decodes while
    the other waits for the cache's lock, then reads what it wrote. (Without
    the lock, two downloads into one folder shared a .part file, and both
    failed, one with a checksum error.)"""
    served, url = file_server
    for path in real_idx_files.paths:
        shutil.copy(path, served)
    files = [[f.url, f.size, f.sha256, f.filename] for f in remote_files(served, url)]
    env = {
        **os.environ,
        "TFDS_DATA_DIR": str(
            request.getfixturevalue("real_tfds_dir") if source == "tfds" else tmp_path / "no-tfds"
        ),
    }
    cache = tmp_path / "cache"
    md5s = json.dumps(real_idx_files.md5s)  # The originals', unless written from tfds's arrays.
    together = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD, json.dumps(files), str(cache), md5s],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    digests = []
    for process in together:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        digests.append(out.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64
    assert len(list(cache.glob("mnist-*.npz"))) == 1 and not list(cache.rglob("*.tmp"))
    if source == "download":
        assert sorted(p.name for p in (cache / "downloads").iterdir()) == sorted(
            f[3] for f in files
        )
    monkeypatch.setenv("TFDS_DATA_DIR", env["TFDS_DATA_DIR"])
    for decoder in ("load_tfds", "load_idx_folder"):
        monkeypatch.setattr(
            sources, decoder, lambda *a, **k: pytest.fail("decoded again: the cache was not valid")
        )
    assert sources.load_mnist(cache_dir=cache).train.images.shape == (60_000, 28, 28, 1)


def test_no_network_gives_clear_error(tmp_path):
    with socket.socket() as s:  # A port nobody listens on.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = [
        idx.RemoteFile(
            f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz",
            1,
            "0" * 64,
            "train-images-idx3-ubyte.gz",
        )
    ]
    with pytest.raises(
        data.DownloadError, match="offline.*--data-dir DIR or the TFDS_DATA_DIR.*--idx-dir"
    ):
        idx.download_idx_files(tmp_path, files, timeout=5)


def test_an_empty_idx_folder_names_each_file_it_looked_for_once(tmp_path):
    with pytest.raises(data.DataNotFoundError) as error:
        sources.load_mnist(idx_dir=tmp_path, cache_dir=tmp_path / "cache")
    looked_for = str(error.value).split("(looked for ", 1)[1].split(")", 1)[0].split(", ")
    assert len(looked_for) == len(set(looked_for)) == 6
    assert {
        "train-images-idx3-ubyte.gz",
        "train-images.idx3-ubyte",
        "train-images.idx3-ubyte/train-images.idx3-ubyte",
    } <= set(looked_for)


def test_registered_checksums_are_tfds_mnist():
    files = idx.registered_mnist_files()
    assert sorted(f.filename for f in files) == sorted(
        f"{stem}.gz" for stem, _, _ in idx.IDX_FILES.values()
    )
    assert all(len(f.sha256) == 64 and f.url.startswith("https://") for f in files)


# --- cache -------------------------------------------------------------------


def test_second_load_comes_from_cache(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    write_fake_idx_folder(folder)
    monkeypatch.setattr(
        sources, "load_idx_folder", functools.partial(idx.load_idx_folder, verify_md5=False)
    )
    first = sources.load_mnist(idx_dir=folder, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(sources, "load_idx_folder", lambda *a, **k: pytest.fail("decoded again"))
    second = sources.load_mnist(idx_dir=folder, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)


def test_changed_source_is_decoded_again(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    write_fake_idx_folder(folder)
    monkeypatch.setattr(
        sources, "load_idx_folder", functools.partial(idx.load_idx_folder, verify_md5=False)
    )
    sources.load_mnist(idx_dir=folder, cache_dir=tmp_path / "cache")
    write_fake_idx_folder(folder, n_train=30)
    assert len(sources.load_mnist(idx_dir=folder, cache_dir=tmp_path / "cache").train) == 30


@pytest.mark.slow
def test_decoding_tfds_mnist_says_nothing_about_opencv(real_tfds_dir, tmp_path):
    # In a process of its own: absl logs tfds's notice once per process, and
    # this session decoded MNIST already.
    code = f"from mnist_jax import sources; sources.load_tfds({str(real_tfds_dir)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MNIST_JAX_CACHE": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert "OpenCV" not in done.stderr + done.stdout


# --- splits ------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), np.arange(100, 200, 10))
    rest, held = data.stratified_split(labels, 0.1, seed=3)
    assert np.intersect1d(rest, held).size == 0
    assert rest.size + held.size == labels.size
    np.testing.assert_array_equal(np.bincount(labels[held]), np.round(0.1 * np.bincount(labels)))
    again_rest, again_held = data.stratified_split(labels, 0.1, seed=3)
    np.testing.assert_array_equal(held, again_held)
    _, other = data.stratified_split(labels, 0.1, seed=4)
    assert not np.array_equal(held, other)


# --- where the tests find the real MNIST (tests/real_data.py) ----------------------


def test_the_tests_look_for_mnist_where_ci_says_else_where_the_library_looks(tmp_path, monkeypatch):
    tfds_dir, user = tmp_path / "tfds", tmp_path / "user"
    (tfds_dir / "mnist" / "3.0.1").mkdir(parents=True)
    (tfds_dir / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    write_fake_idx_folder(user / "downloads", gz=True)
    monkeypatch.delenv(real_data.TEST_DATA, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    monkeypatch.setenv(real_data.USER_CACHE, str(user))
    found = real_data.locate()
    assert found == real_data.RealData(tfds_dir, user / "downloads")
    assert found.flags == ["--data-dir", str(tfds_dir)]  # As load_mnist, tfds first.

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    found = real_data.locate()
    assert found == real_data.RealData(None, user / "downloads")
    assert found.flags == ["--idx-dir", str(user / "downloads")]

    write_fake_idx_folder(tmp_path / "ci" / "mnist")
    monkeypatch.setenv(real_data.TEST_DATA, str(tmp_path / "ci"))
    assert real_data.locate() == real_data.RealData(None, tmp_path / "ci" / "mnist")


def test_the_tests_download_mnist_where_none_is_found_and_say_what_to_do_offline(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(real_data.TEST_DATA, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv(real_data.USER_CACHE, str(tmp_path / "user"))
    fetched = []

    def download(dest):
        fetched.append(dest)
        write_fake_idx_folder(dest, gz=True)

    monkeypatch.setattr(idx, "download_idx_files", download)
    assert real_data.locate() == real_data.RealData(None, tmp_path / "user" / "downloads")
    assert fetched == [tmp_path / "user" / "downloads"]

    def offline(dest):
        raise data.DownloadError("Could not download it; this machine may be offline.")

    shutil.rmtree(tmp_path / "user" / "downloads")
    monkeypatch.setattr(idx, "download_idx_files", offline)
    with pytest.raises(real_data.NotFound) as error:
        real_data.locate()
    sentence = str(error.value)
    assert "set TFDS_DATA_DIR" in sentence and str(tmp_path / "user" / "downloads") in sentence
    assert sentence.endswith(".") and ". " not in sentence  # One sentence.


def test_the_files_the_tests_write_read_back_as_they_were_written(
    tmp_path, monkeypatch, synthetic_splits
):
    mnist = data.MNIST(synthetic_splits.train, synthetic_splits.test, source="synthetic")
    written = real_data.write_idx_files(mnist, tmp_path / "idx")
    monkeypatch.setattr(idx, "IDX_FILES", written.table)  # Their MD5s, checked.
    from_idx = idx.load_idx_folder(written.folder)
    sizes = {"train": len(mnist.train), "test": len(mnist.test)}
    monkeypatch.setattr(sources, "SPLIT_SIZES", sizes)
    from_tfds = sources.load_tfds(real_data.write_tfds(mnist, tmp_path / "tfds"))
    for read in (from_idx, from_tfds):
        for split in sizes:
            np.testing.assert_array_equal(getattr(read, split).images, getattr(mnist, split).images)
            np.testing.assert_array_equal(getattr(read, split).labels, getattr(mnist, split).labels)


# --- the real MNIST ------------------------------------------------------------


def test_real_mnist_from_tfds(real_tfds_dir):
    import sys

    from_tfds = sources.load_mnist(data_dir=real_tfds_dir, download=False)
    assert "tensorflow" not in sys.modules  # tfds.data_source reads ArrayRecord without it.
    assert from_tfds.source.startswith("tfds:")
    assert from_tfds.train.images.shape == (60_000, 28, 28, 1)
    assert from_tfds.test.images.shape == (10_000, 28, 28, 1)
    assert from_tfds.train.images.dtype == np.uint8
    assert set(np.unique(from_tfds.train.labels)) == set(range(10))


@pytest.mark.slow
def test_real_idx_files_hold_the_same_examples_as_tfds(real_source):
    """The original IDX files (MD5-verified) and tfds's MNIST hold the same
    examples, in different orders: each source found is checked against the
    originals' digests, so a session with both compares the two."""
    found = {}
    if real_source.idx_dir is not None:
        found["idx"] = idx.load_idx_folder(real_source.idx_dir)  # MD5-verified.
    if real_source.tfds_dir is not None:
        found["tfds"] = sources.load_mnist(data_dir=real_source.tfds_dir, download=False)
    assert found
    for name, mnist in found.items():
        for split, digest in real_data.ORIGINAL_DIGESTS.items():
            assert real_data.examples_digest(getattr(mnist, split)) == digest, (name, split)


def test_real_splits_are_stratified_and_disjoint_from_test(real_mnist):
    splits = data.make_splits(real_mnist, val_fraction=0.1, seed=0)
    # 10 % of each class, rounded per class.
    assert len(splits.train) + len(splits.val) == 60_000 and abs(len(splits.val) - 6_000) <= 5
    assert len(splits.test) == 10_000
    val_share = np.bincount(splits.val.labels) / np.bincount(real_mnist.train.labels)
    np.testing.assert_allclose(val_share, 0.1, atol=0.001)
    # No validation image is also a training image (as arrays: MNIST has no duplicates).
    train_keys = {img.tobytes() for img in splits.train.images[:20_000]}
    assert not any(img.tobytes() in train_keys for img in splits.val.images)
