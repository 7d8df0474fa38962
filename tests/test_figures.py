"""Every figure is written as a valid PNG of the expected size (synthetic data);
the projector embedding; the data statistics behind the EDA."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from mnist_jax import data_stats, summaries, viz
from tests.conftest import synthetic_split

SPLIT = synthetic_split(200, seed=5)
HISTORY = [
    {
        "epoch": e,
        "train_loss": 1 / e,
        "val_loss": 1.2 / e,
        "train_accuracy": 1 - 0.1 / e,
        "val_accuracy": 1 - 0.12 / e,
    }
    for e in (1, 2, 3)
]
RNG = np.random.default_rng(0)

# name -> (builder, expected (width, height) in pixels: figsize x 100 dpi)
FIGURES = {
    "curves": (lambda: viz.training_curves_figure(HISTORY), (1040, 400)),
    "curves_without_accuracy": (
        lambda: viz.training_curves_figure(
            [{k: v for k, v in h.items() if "accuracy" not in k} for h in HISTORY]
        ),
        (520, 400),
    ),
    "misclassified": (
        lambda: viz.misclassified_figure(SPLIT.images, SPLIT.labels, (SPLIT.labels + 1) % 10),
        (1150, 440),
    ),  # 30 shown: 3 rows of 10.
    "none_misclassified": (
        lambda: viz.misclassified_figure(SPLIT.images, SPLIT.labels, SPLIT.labels),
        (500, 120),
    ),
    "labels": (
        lambda: viz.label_distribution_figure(
            {
                "train": data_stats.label_counts(SPLIT.labels),
                "test": data_stats.label_counts(SPLIT.labels[:50]),
            }
        ),
        (800, 400),
    ),
    "samples": (lambda: viz.samples_per_label_figure(SPLIT.images, SPLIT.labels, 5), (560, 1040)),
    "pixels": (
        lambda: viz.pixel_statistics_figure(
            RNG.random((28, 28)),
            RNG.random((28, 28)),
            {"train": np.arange(256), "test": np.ones(256)},
        ),
        (1200, 380),
    ),
    "feature_maps": (
        lambda: viz.feature_maps_figure(RNG.normal(size=(14, 14, 20)), "layer"),
        (960, 410),
    ),
    "attention": (
        lambda: viz.attention_figure(
            RNG.random((28, 28)), RNG.random((2, 3, 7, 7)), RNG.random((7, 7))
        ),
        (520, 450),
    ),
    "comparison": (
        lambda: viz.comparison_figure(
            [
                {
                    "label": "cnn",
                    "accuracy": 0.99,
                    "accuracy_std": 0.001,
                    "train_seconds": 80,
                    "train_seconds_std": 3,
                    "reference": {"accuracy": 0.9938, "train_seconds": 88.29},
                },
                {"label": "vit", "accuracy": 0.98, "train_seconds": 200, "reference": {}},
            ]
        ),
        (1000, 480),
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_each_figure_is_a_png_of_its_size(name, tmp_path):
    build, size = FIGURES[name]
    path = tmp_path / f"{name}.png"
    viz.save_png(viz.figure_to_array(build()), path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size and image.mode == "RGB"
        assert np.asarray(image).std() > 0  # Something was drawn.


def test_the_curves_mark_the_scored_epoch():
    plain = viz.figure_to_array(viz.training_curves_figure(HISTORY))
    marked = viz.figure_to_array(viz.training_curves_figure(HISTORY, scored_epoch=2))
    assert (
        plain.shape == marked.shape and (plain != marked).any(axis=-1).sum() > 500
    )  # The line and its legend.


def test_figures_refuse_what_they_cannot_draw():
    with pytest.raises(ValueError, match="no epochs"):
        viz.training_curves_figure([])
    with pytest.raises(ValueError, match="captions"):
        viz.labelled_images_figure(np.zeros((2, 28, 28, 1)), ["one"])


def test_misclassified_captions_say_true_and_predicted():
    predictions = SPLIT.labels.copy()
    predictions[[3, 7]] = (predictions[[3, 7]] + 1) % 10
    fig = viz.misclassified_figure(SPLIT.images, SPLIT.labels, predictions)
    captions = [text.get_text() for text in fig.axes[0].texts]
    assert captions == [f"true {SPLIT.labels[i]} / pred {predictions[i]}" for i in (3, 7)]
    assert "2 shown of 2 wrong in 200" in fig._suptitle.get_text()


def test_label_counts_and_pixel_statistics():
    np.testing.assert_array_equal(
        data_stats.label_counts(np.array([0, 2, 2, 9])), [1, 0, 2] + [0] * 6 + [1]
    )
    with pytest.raises(ValueError, match="labels must be in"):
        data_stats.label_counts(np.array([10]))
    stats = data_stats.pixel_statistics(SPLIT.images, chunk=64)  # Chunks of 64 sum as one block.
    pixels = SPLIT.images.astype(np.float64) / 255
    assert stats["mean"] == pytest.approx(pixels.mean()) and stats["std"] == pytest.approx(
        pixels.std()
    )
    np.testing.assert_allclose(stats["mean_image"], pixels.mean(0)[..., 0])
    np.testing.assert_allclose(stats["std_image"], pixels.std(0)[..., 0], atol=1e-7)
    assert stats["histogram"].sum() == SPLIT.images.size
    assert stats["zero_fraction"] == pytest.approx((SPLIT.images == 0).mean())
    with pytest.raises(ValueError, match="uint8"):
        data_stats.pixel_statistics(pixels)


def test_projector_embedding_with_labels_and_sprite_is_replaced_not_repeated(tmp_path):
    features = RNG.normal(size=(20, 4))
    with summaries.MetricWriter(tmp_path) as writer:
        for _ in range(2):  # A resumed run writes it again.
            writer.embedding(
                "test/embedding",
                7,
                features,
                SPLIT.images[:20],
                {"label": SPLIT.labels[:20], "predicted": SPLIT.labels[:20]},
            )
        with pytest.raises(ValueError, match="one row per point"):
            writer.embedding("bad", 7, features, SPLIT.images[:19], {"label": SPLIT.labels[:20]})
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 1 and "sprite" in config
    folder = tmp_path / "00007" / "test%2fembedding"
    metadata = (folder / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tpredicted" and len(metadata) == 21
    assert np.loadtxt(folder / "tensors.tsv").shape == (20, 4)
    with Image.open(folder / "sprite.png") as sprite:
        cells = (
            np.asarray(sprite.convert("L"))
            .reshape(5, 28, 5, 28)
            .transpose(0, 2, 1, 3)
            .reshape(25, 28, 28)
        )
    # 20 images, 5 to a row, in order; the 5 cells left over black (tensorboardX
    # leaves them uninitialised).
    np.testing.assert_array_equal(cells[:20], SPLIT.images[:20, ..., 0])
    assert not cells[20:].any()


@pytest.mark.slow
def test_no_figure_code_imports_pyplot():
    """Figures go through matplotlib's Agg canvas, never pyplot: no GUI
    backend is chosen and no window can open, also without a display."""
    import subprocess
    import sys

    code = (
        "import sys; from mnist_jax import figures, viz; "
        "import experiments.eda, experiments.compare, experiments.feature_maps; "
        "viz.figure_to_array(viz.label_distribution_figure({'a': [1, 2]})); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")},
        cwd=pathlib.Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
