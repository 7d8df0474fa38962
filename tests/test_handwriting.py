"""Digits that are not MNIST's (mnist_jax.handwriting, mnist_jax.strokes) and the reader
experiment that is scored on them."""

import json
import pathlib

import numpy as np
import pytest

from mnist_jax import digits, handwriting, optdigits, strokes


def fake_fonts(*names):
    return [pathlib.Path("/fonts") / name for name in names]


def test_fonts_split_by_family_and_no_evaluation_family_is_trained_on():
    fonts = fake_fonts(
        "Sans.ttf", "Sans-Bold.ttf", "SansCondensed-BoldOblique.ttf", "Serif.ttf",
        "Serif-Italic.ttf", "Mono.otf", "Mono-Bold.otf",
    )  # fmt: skip
    training, evaluation = handwriting.split_fonts(fonts)
    assert sorted(training + evaluation) == sorted(fonts)
    families = (
        {handwriting.family(f) for f in training},
        {handwriting.family(f) for f in evaluation},
    )
    assert families == ({"mono", "serif"}, {"sans"})  # Sorted: mono, sans, serif; every other.
    assert handwriting.split_fonts(fake_fonts("A.ttf", "A-Bold.ttf")) == (
        [],
        fake_fonts("A.ttf", "A-Bold.ttf"),
    )
    assert handwriting.split_fonts([]) == ([], [])


def test_the_machines_fonts_are_found_and_draw_ten_digits():
    fonts = handwriting.find_fonts()
    assert fonts, "matplotlib's fonts at least"
    assert len({f.name for f in fonts}) == len(fonts)
    training, evaluation = handwriting.split_fonts(fonts)
    assert evaluation and not {handwriting.family(f) for f in training} & {
        handwriting.family(f) for f in evaluation
    }


def test_the_evaluation_sets_are_the_same_for_a_seed_and_shaped_as_mnist():
    sets = handwriting.evaluation_sets(size=20, seed=3)
    again = handwriting.evaluation_sets(size=20, seed=3)
    other = handwriting.evaluation_sets(size=20, seed=4)
    assert tuple(sets) == handwriting.SETS
    for name, split in sets.items():
        assert split.images.shape == (20, 28, 28, 1) and split.images.dtype == np.uint8, name
        assert np.bincount(split.labels, minlength=10).tolist() == [2] * 10, name
        np.testing.assert_array_equal(split.images, again[name].images)
        np.testing.assert_array_equal(split.labels, again[name].labels)
        assert not np.array_equal(split.images, other[name].images), name
        assert split.images.max(axis=(1, 2, 3)).min() > 128, name  # Ink up to white, as MNIST's.


def test_font_digits_for_training_come_from_the_fonts_given_only(monkeypatch):
    training, evaluation = handwriting.split_fonts(handwriting.find_fonts())
    used = []
    draw = handwriting.font_page
    monkeypatch.setattr(
        handwriting, "font_page", lambda rng, f, d: used.append(f) or draw(rng, f, d)
    )
    split = handwriting.font_digits(training, 30, seed=1)
    assert len(split) == 30 and used and set(used) <= set(training)
    assert not set(used) & set(evaluation)
    with pytest.raises(ValueError, match="no fonts"):
        handwriting.font_digits([], 10)


def test_every_stroke_template_draws_a_digit_on_the_canvas():
    rng = np.random.default_rng(0)
    for digit, templates in strokes.TEMPLATES.items():
        assert len(templates) >= 2, digit
        for template in range(len(templates)):
            page = strokes.draw_digit(rng, digit, template)
            assert page.shape == (strokes.CANVAS, strokes.CANVAS) and page.dtype == np.float32
            assert page.min() == 0 and page[0].min() == 255  # Black ink, white margins.
            assert digits.to_mnist(page).max() > 192  # A thin pen: a little below white.


def test_a_scan_is_darker_paper_and_the_digit_survives_it():
    rng = np.random.default_rng(1)
    page = strokes.draw_digit(rng, 3)
    scan = handwriting.scanned(rng, page)
    assert scan.shape == page.shape and np.median(scan) < 250
    clean, back = digits.to_mnist(page), digits.to_mnist(scan)
    assert np.abs(clean.astype(int) - back.astype(int)).mean() < 30


@pytest.mark.slow
def test_reader_quick_trains_scores_every_set_and_evaluates_runs(
    tmp_path, real_source, real_mnist, capsys
):
    from experiments import reader

    workdir = tmp_path / "reader"
    flags = [*real_source.flags, "--no-progress", "--set-size", "50"]
    summary = reader.main(["--quick", "--workdir", str(workdir), *flags])
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["experiment"] == "reader" and saved["font_digits"] == reader.QUICK_FONT_DIGITS
    made, real = saved["handwriting"], saved["handwriting"].pop(reader.REAL)
    assert set(made) == set(handwriting.SETS)
    assert set(summary["handwriting"]) == {*made, reader.REAL}
    for scores in made.values():
        assert scores["images"] == 50 and 0 <= scores["accuracy"] <= 1
    # The real set (scikit-learn's copy, installed with the test extra): every digit of it.
    assert real["images"] == optdigits.TEST_FILE_DIGITS and 0 <= real["accuracy"] <= 1
    assert saved["optdigits"].startswith("scikit-learn")
    assert saved["data"]["train"] == 4501 + reader.QUICK_FONT_DIGITS
    out = capsys.readouterr().out
    assert "| scanned_strokes | optdigits |" in out
    assert f"{100 * saved['test']['accuracy']:.2f} %" in out
    out_file = tmp_path / "scores.json"
    evaluate = ["--evaluate", str(workdir), str(workdir), "--ensemble", "--out", str(out_file)]
    rows = reader.main([*evaluate, *flags])
    assert rows["ensemble"]["sets"] == rows[str(workdir)]["sets"]  # Two copies: the same model.
    kept = json.loads(out_file.read_text())
    assert kept["runs"] == json.loads(json.dumps(rows))
    assert kept["evaluation_sets"]["images_each"] == 50
    row = kept["runs"][str(workdir)]
    assert row["sets"] == summary["handwriting"] and row["mnist_test"] == saved["test"]["accuracy"]
    assert kept["evaluation_sets"]["optdigits"] == saved["optdigits"]
    assert row["experiment"] == "reader" and row["train_seconds"] == saved["train_seconds"]


def test_reader_out_without_evaluate_is_refused_before_anything_trains(tmp_path, capsys):
    from experiments import reader

    with pytest.raises(SystemExit) as stop:
        reader.main(["--out", str(tmp_path / "scores.json"), "--workdir", str(tmp_path / "r")])
    assert stop.value.code == 2 and "--out goes with --evaluate" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "scores.json").exists()


def test_reader_optdigits_file_that_cannot_be_read_stops_it_before_training(tmp_path, capsys):
    from experiments import reader

    bad = tmp_path / "optdigits.tes"
    bad.write_text("not, a, digit\n")
    for given in (bad, tmp_path / "none.tes"):
        argv = ["--optdigits", str(given), "--set-size", "10", "--workdir", str(tmp_path / "r")]
        with pytest.raises(SystemExit) as stop:
            reader.main(argv)
        assert stop.value.code == 2 and f"error: {given}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_reader_scores_without_the_real_set_where_none_is_found(tmp_path, monkeypatch, capsys):
    from experiments import reader
    from mnist_jax.data import DataNotFoundError

    def nowhere(path=None, *, download_missing=True, prepare=None):
        raise DataNotFoundError("no optdigits.tes found and downloading is off")

    monkeypatch.setattr(optdigits, "load", nowhere)
    args = reader.build_reader_parser().parse_args(["--no-download"])
    sets, source = reader.evaluation_sets(args, 10, digits.to_mnist)
    assert source is None and set(sets) == set(handwriting.SETS)
    assert "optdigits (real handwriting) not scored: no optdigits.tes" in capsys.readouterr().err
