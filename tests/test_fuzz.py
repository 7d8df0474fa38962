"""Random and mutated bytes into the IDX reader and the image loader
(hypothesis): they raise the project's own errors, never crash or hang.

Derandomised, so a run is repeatable; a failure prints the bytes that
caused it.
"""

import contextlib
import gzip
import io
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_jax import data, digits, idx

FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_EXAMPLE = 10  # Far beyond what one file takes: longer is a hang.
FOLDER = Path(tempfile.mkdtemp(prefix="mnist_jax_fuzz_"))


@contextlib.contextmanager
def no_hang(seconds: int = SECONDS_PER_EXAMPLE):
    """Fails the example if it runs longer than `seconds` (SIGALRM)."""

    def hung(signum, frame):
        raise AssertionError(f"no result after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def written(content: bytes, name: str) -> Path:
    path = FOLDER / name
    path.write_bytes(content)
    return path


def mutated(base: bytes):
    """`base` with bytes flipped, cut off, inserted or appended."""

    def mutate(ops):
        content = bytearray(base)
        for kind, position, value in ops:
            position %= max(len(content), 1)
            if kind == "flip" and content:
                content[position] ^= value or 1
            elif kind == "cut":
                del content[position:]
            elif kind == "insert":
                content[position:position] = bytes([value])
            else:
                content += bytes([value]) * (position % 64 + 1)
        return bytes(content)

    op = st.tuples(
        st.sampled_from(["flip", "cut", "insert", "append"]),
        st.integers(0, 1 << 20),
        st.integers(0, 255),
    )
    return st.lists(op, min_size=1, max_size=6).map(mutate)


# --- IDX files ---------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


VALID_IDX = idx_bytes(np.arange(3 * 5 * 4).reshape(3, 5, 4) % 256)
VALID_LABELS_GZ = gzip.compress(idx_bytes(np.arange(7) % 10))


def loaded_or_clear_error(load, error: type, content: bytes, name: str):
    """load(file holding `content`): its result, or None where it raised
    `error` naming the file; anything else, or a hang, fails."""
    with no_hang():
        try:
            return load(written(content, name))
        except error as e:
            assert name in str(e)  # Names the file.
            return None


def read_idx_or_data_error(content: bytes, name: str) -> None:
    array = loaded_or_clear_error(idx.read_idx, data.DataError, content, name)
    assert array is None or (array.dtype == np.uint8 and 1 <= array.ndim <= 4)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=512))
def test_idx_reader_on_random_bytes(content):
    read_idx_or_data_error(content, "random-idx3-ubyte")


@FUZZ
@given(mutated(VALID_IDX))
def test_idx_reader_on_mutated_files(content):
    read_idx_or_data_error(content, "mutated-idx3-ubyte")


@FUZZ
@given(mutated(VALID_LABELS_GZ))
def test_idx_reader_on_mutated_gzip_files(content):
    read_idx_or_data_error(content, "mutated-idx1-ubyte.gz")


def test_the_valid_seeds_of_the_mutations_read_back():
    np.testing.assert_array_equal(
        idx.read_idx(written(VALID_IDX, "valid-idx3-ubyte")), np.arange(60).reshape(3, 5, 4)
    )
    np.testing.assert_array_equal(
        idx.read_idx(written(VALID_LABELS_GZ, "valid-idx1-ubyte.gz")), np.arange(7)
    )


# --- Image files ---------------------------------------------------------------


def encoded(format_: str, **kwargs) -> bytes:
    picture = np.full((24, 18), 230, np.uint8)
    picture[4:20, 7:11] = 20  # A dark "1" on light paper.
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=format_, **kwargs)
    return buffer.getvalue()


VALID_IMAGES = {
    "png": encoded("PNG"),
    "jpg": encoded("JPEG", quality=90),
    "gif": encoded("GIF"),
    "bmp": encoded("BMP"),
}


def load_or_image_error(content: bytes, name: str) -> None:
    picture = loaded_or_clear_error(digits.load_digit, digits.ImageError, content, name)
    assert picture is None or (picture.shape == (28, 28, 1) and picture.dtype == np.uint8)


@FUZZ
@given(st.binary(max_size=512))
def test_image_loader_on_random_bytes(content):
    load_or_image_error(content, "random.png")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(VALID_IMAGES))
def test_image_loader_on_mutated_files(kind):
    @FUZZ
    @given(mutated(VALID_IMAGES[kind]))
    def check(content):
        load_or_image_error(content, f"mutated.{kind}")

    check()


@pytest.mark.parametrize("kind", sorted(VALID_IMAGES))
def test_the_valid_seeds_of_the_image_mutations_load(kind):
    picture = digits.load_digit(written(VALID_IMAGES[kind], f"valid.{kind}"))
    assert picture.max() > 200 and picture[0, 0, 0] == 0  # Inverted: white ink on black.


def test_an_image_too_large_to_be_a_digit_is_refused_before_decoding():
    # A PNG header announcing 10,000 x 10,000 pixels, with almost no data.
    big = Image.new("1", (10_000, 10_000))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    with no_hang(), pytest.raises(digits.ImageError, match="too large"):
        digits.load_digit(written(buffer.getvalue(), "huge.png"))
