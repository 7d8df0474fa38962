"""Digits from image files (mnist_jax.digits) and the prediction command line."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mnist_jax import digits, predict, steps, tasks


def centre_of_mass(picture: np.ndarray) -> np.ndarray:
    grey = picture[..., 0].astype(np.float64)
    rows, cols = np.indices(grey.shape)
    return np.array([(grey * rows).sum(), (grey * cols).sum()]) / grey.sum()


def bounding_box(picture: np.ndarray, threshold: int = 64) -> tuple[int, int]:
    rows, cols = np.nonzero(picture[..., 0] >= threshold)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def as_photo(picture: np.ndarray, scale: float, paper: int = 235) -> Image.Image:
    """An MNIST digit as someone's scan: dark ink on light paper, larger,
    off-centre on a bigger sheet, in RGB."""
    ink = Image.fromarray(255 - picture[..., 0])
    size = round(28 * scale)
    sheet = Image.new("L", (size * 2, round(size * 1.5)), 255)
    sheet.paste(ink.resize((size, size), Image.Resampling.BILINEAR), (size // 5, size // 4))
    grey = np.asarray(sheet, np.float64) * (paper / 255)  # Greyish paper.
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def test_a_bar_keeps_its_aspect_ratio_and_lands_centred():
    sheet = np.zeros((300, 200))
    sheet[40:240, 150:170] = 255  # A "1": 200 x 20 pixels, far right.
    picture = digits.to_mnist(sheet)
    assert picture.shape == (28, 28, 1) and picture.dtype == np.uint8
    height, width = bounding_box(picture)
    assert height == digits.BOX and width <= 3
    np.testing.assert_allclose(centre_of_mass(picture), [digits.CENTRE, digits.CENTRE], atol=0.5)


@pytest.mark.slow
def test_light_paper_is_inverted_and_the_same_digit_results(real_mnist):
    picture = real_mnist.test.images[0]
    dark_on_light = digits.to_mnist(255 - picture[..., 0].astype(np.float64))
    light_on_dark = digits.to_mnist(picture[..., 0])
    np.testing.assert_array_equal(dark_on_light, light_on_dark)
    assert dark_on_light[0, 0, 0] == 0  # White ink on black, as MNIST.
    with pytest.raises(digits.ImageError, match="blank"):  # Forced the wrong way: no ink.
        digits.to_mnist(np.full((40, 40), 255.0), invert=False)


@pytest.mark.slow
def test_mnist_digits_come_back_as_themselves_from_scans(real_mnist, tmp_path):
    pictures = real_mnist.test.images[:20]
    for i, picture in enumerate(pictures):
        as_photo(picture, scale=3 + i % 4).save(tmp_path / f"{i}.jpg", quality=90)
        back = digits.load_digit(tmp_path / f"{i}.jpg")
        # The same box and centre as the original, to a pixel...
        np.testing.assert_allclose(centre_of_mass(back), centre_of_mass(picture), atol=1.0)
        assert max(bounding_box(back)) >= 18
        # ... and the same strokes: grey levels close where MNIST has ink.
        assert np.abs(back.astype(int) - picture.astype(int)).mean() < 25, i


def test_transparent_and_deep_images_read_as_digits(tmp_path):
    ink = np.zeros((60, 40), np.uint8)
    ink[10:50, 18:24] = 255
    rgba = np.zeros((60, 40, 4), np.uint8)
    rgba[..., 3] = ink  # Black strokes drawn on a transparent sheet.
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    Image.fromarray(ink.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grey.
    Image.fromarray(ink).convert("P").save(tmp_path / "palette.gif")
    expected = digits.to_mnist(ink)
    for name in ("transparent.png", "deep.png", "palette.gif"):
        np.testing.assert_array_equal(digits.load_digit(tmp_path / name), expected, err_msg=name)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an image Pillow can read"),
        (b"hello, this is text", "not an image Pillow can read"),
        (None, "blank"),
    ],
)
def test_files_that_hold_no_digit_get_errors_naming_them(tmp_path, content, message):
    path = tmp_path / "file.png"
    if content is None:
        Image.new("RGB", (30, 30), (200, 200, 200)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(digits.ImageError, match=message) as error:
        digits.load_digit(path)
    assert str(path) in str(error.value)
    with pytest.raises(digits.ImageError, match="no such file"):
        digits.load_digit(tmp_path / "missing.png")


@pytest.fixture(scope="module")
def scans(real_mnist, tmp_path_factory):
    """30 test digits as scans of several sizes and formats, and the labels."""
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for i, picture in enumerate(real_mnist.test.images[:30]):
        path = folder / f"digit{i}.{('png', 'jpg', 'bmp')[i % 3]}"
        as_photo(picture, scale=2 + i % 5).save(path)
        paths.append(path)
    return paths, real_mnist.test.labels[:30], real_mnist.test.images[:30]


@pytest.mark.slow
def test_predict_reads_scans_as_the_model_reads_the_originals(quick_runs, scans, capsys):
    paths, labels, originals = scans
    workdir = quick_runs.get("cnn")["workdir"]
    results = predict.main(["--checkpoint", str(workdir), *map(str, paths)])
    out = capsys.readouterr().out
    assert [r["image"] for r in results] == list(map(str, paths))
    run = predict.load_classifier(workdir)
    on_originals = predict.Classifier(run).probabilities(originals).argmax(-1)
    from_scans = np.array([r["digit"] for r in results])
    assert (from_scans == on_originals).mean() >= 0.9, (from_scans, on_originals)
    assert (from_scans == labels).mean() >= 0.8
    for result, line in zip(results, out.splitlines()):
        probs = [t["probability"] for t in result["top3"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert result["top3"][0]["digit"] == result["digit"]
        assert line.startswith(f"{result['image']}: {result['digit']}  (top 3: ")


@pytest.mark.slow
def test_bad_files_get_errors_and_the_others_are_still_read(quick_runs, scans, tmp_path, capsys):
    paths, _, _ = scans
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("L", (20, 20), 255).save(tmp_path / "white.png")
    bad = [
        tmp_path / "empty.png",
        tmp_path / "notes.png",
        tmp_path / "white.png",
        tmp_path / "missing.jpg",
    ]
    files = [paths[0], *bad, paths[1]]
    with pytest.raises(SystemExit) as exit_info:
        predict.main(
            ["--checkpoint", str(quick_runs.get("cnn")["workdir"]), "--json", *map(str, files)]
        )
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert [r["image"] for r in results] == list(map(str, files))
    assert "digit" in results[0] and "digit" in results[-1]
    for result, path in zip(results[1:-1], bad):
        assert "digit" not in result and str(path) in result["error"]


@pytest.mark.slow
def test_a_run_that_is_not_a_classifier_or_holds_another_model_is_refused(
    quick_runs, tmp_path, scans, capsys
):
    paths, _, _ = scans
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(quick_runs.get("conv_ae")["workdir"]), str(paths[0])])
    assert exit_info.value.code == 2
    assert "does not classify digits" in capsys.readouterr().err
    # metrics.json says CNN, the checkpoints are the simple CNN's.
    mixed = tmp_path / "mixed"
    shutil.copytree(quick_runs.get("cnn")["workdir"], mixed)
    shutil.rmtree(mixed / "checkpoints")
    shutil.copytree(quick_runs.get("simple_cnn")["workdir"] / "checkpoints", mixed / "checkpoints")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(mixed / "metrics.json"), str(paths[0])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds another model" in err and str(mixed / "checkpoints" / "best") in err
    assert not (mixed / "checkpoints" / "damaged").exists()  # Not mistaken for damage.


@pytest.mark.slow
def test_predict_is_the_models_inference(quick_runs, real_mnist):
    """Probabilities are the softmax of the inference-mode logits (no
    dropout, running BN statistics)."""
    run = predict.load_classifier(quick_runs.get("cnn")["workdir"])
    images = real_mnist.test.images[:8]
    logits = steps.infer(run.state, tasks.model_inputs(images, None, run.config.step_config())[0])
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(
        predict.Classifier(run).probabilities(images),
        expected / expected.sum(-1, keepdims=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_uneven_light_does_not_widen_the_digits_box():
    page = np.full((200, 200), 230.0)
    page[50:150, 95:105] = 20.0  # A "1".
    shadow = page * np.linspace(0.6, 1.0, 200)[None, :]  # Light falling off to the left.
    even, uneven = digits.to_mnist(page), digits.to_mnist(shadow)

    def box(picture):  # The ink's (height, width).
        rows, cols = np.nonzero(picture[..., 0] > 64)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    assert box(uneven) == box(even) == (digits.BOX, 2)
    assert abs(int(uneven.sum()) - int(even.sum())) < 0.05 * int(even.sum())
    # The border's median alone leaves the shadow in, and the box takes in some of it.
    flat = digits.prepare(shadow, digits.Preprocessing(flatten=False))
    assert box(flat)[1] > 2 * box(even)[1]


def test_a_speck_far_from_the_digit_does_not_shrink_it():
    page = np.full((600, 600), 240.0)
    page[250:350, 295:305] = 20.0  # A "1" in the middle of a large photo.
    alone = digits.to_mnist(page)
    for row, col in ((20, 20), (580, 300), (300, 590)):  # Dust in a corner, at an edge.
        specked = page.copy()
        specked[row - 3 : row + 3, col - 3 : col + 3] = 30.0
        np.testing.assert_array_equal(digits.to_mnist(specked), alone)
    # Two specks, and a stray line as long as a fifth of the digit: still left out.
    specked = page.copy()
    specked[40:46, 40:46] = specked[500:506, 520:526] = 30.0
    specked[560:563, 60:80] = 30.0
    np.testing.assert_array_equal(digits.to_mnist(specked), alone)


def test_the_separate_parts_of_a_digit_stay_in_its_box():
    """A 5's flag, a broken stroke's pieces, a dot just off the end of a
    stroke: small blobs near the digit are part of it."""
    page = np.full((300, 300), 240.0)
    page[60:200, 100:112] = 20.0  # A long stroke ...
    page[60:72, 112:200] = 20.0  # ... and its bar, one blob.
    page[215:240, 100:112] = 20.0  # A piece broken off below: 10 % of the ink.
    page[250:256, 140:146] = 20.0  # A small dot just off the end.
    rows, cols = np.nonzero(digits.to_mnist(page)[..., 0] > 64)
    height = rows.max() - rows.min() + 1
    assert height == digits.BOX  # The box spans 60-256: the dot and the piece are in it.
    whole = np.full((300, 300), 240.0)
    whole[60:256, 100:200] = 20.0
    assert digits._digit_box(255 - whole) == digits._digit_box(255 - page)
