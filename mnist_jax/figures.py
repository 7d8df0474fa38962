"""The pictures every training run leaves behind, as PNG files beside its
metrics.json and as TensorBoard images and projector embeddings.

  curves.png            loss (and accuracy) per epoch, train and validation; the
                        epoch whose checkpoint was scored on the test set marked
  confusion_matrix.png  classifiers: test confusion matrix
  misclassified.png     classifiers: wrong test predictions, true and predicted labels
  reconstructions.png   autoencoders: test images above their reconstructions
  TensorBoard projector the model's embedding of the first EMBEDDING_POINTS
                        test images, with their labels and pictures
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import inspection, summaries, tasks, viz
from mnist_jax.data import Split
from mnist_jax.steps import infer
from mnist_jax.tasks import StepConfig

# Test images shown in the projector: enough to see the clusters, and a
# sprite (32 x 32 images of 28 pixels) well within TensorBoard's 8192 pixels.
EMBEDDING_POINTS = 1000
FILES = ("curves.png", "confusion_matrix.png", "misclassified.png", "reconstructions.png")


def reconstruction_examples(state, split: Split, spec: StepConfig, count: int = 10):
    """(originals, reconstructions) of the split's first `count` images, [0, 1] floats."""
    inputs, clean = tasks.model_inputs(jnp.asarray(split.images[:count]), None, spec)
    recon = tasks.reconstruction(jax.jit(infer, static_argnums=2)(state, inputs, spec.dtype), spec)
    return np.asarray(clean), np.asarray(recon)


def write_run_figures(
    workdir: pathlib.Path,
    writer: summaries.MetricWriter,
    *,
    experiment: str,
    state,
    test: Split,
    spec: StepConfig,
    history: list[dict],
    step: int,
    scored_epoch: int | None = None,
    predictions: np.ndarray | None = None,
    confusion_matrix: np.ndarray | None = None,
    test_pictures: np.ndarray | None = None,
) -> list[str]:
    """Writes the run's figures (FILES) and their TensorBoard images and embedding.

    Args:
      workdir: the run directory the PNG files go to.
      writer: the run's TensorBoard writer.
      experiment: the experiment's name, in the figures' titles.
      state: the evaluated (best) state, of epoch `scored_epoch`.
      test: the test split, N examples.
      spec: the run's step settings.
      history: the per-epoch metrics, for the curves; empty: no curves.
      step: the TensorBoard step the images and the embedding are logged at.
      scored_epoch: the epoch marked on the curves.
      predictions: (N,) the state's test predictions, where the task
        classifies; None: none.
      confusion_matrix: its test confusion matrix, where the task
        classifies; None: none.
      test_pictures: (N, 28, 28, 1) uint8 pictures of the test split where
        `test.images` are not pictures (cached transfer-learning features);
        None: `test.images` are the pictures.

    Returns:
      The names of the files written.
    """
    pictures = test_pictures if test_pictures is not None else test.images
    has_pictures = pictures.dtype == np.uint8 and pictures.ndim == 4
    written = []

    def save(name: str, image: np.ndarray, tag: str | None = None) -> None:
        viz.save_png(image, workdir / name)
        if tag:
            writer.image(tag, step, image)
        written.append(name)

    if history:
        curves = viz.training_curves_figure(history, f"{experiment}: training curves", scored_epoch)
        save("curves.png", viz.figure_to_array(curves), "train/curves")
    if confusion_matrix is not None:
        save(
            "confusion_matrix.png",
            viz.confusion_matrix_image(
                np.asarray(confusion_matrix), f"{experiment}: test confusion matrix"
            ),
            "test/confusion_matrix",
        )
    if predictions is not None and has_pictures:
        save(
            "misclassified.png",
            viz.figure_to_array(
                viz.misclassified_figure(
                    pictures, test.labels, predictions, f"{experiment}: misclassified test images"
                )
            ),
            "test/misclassified",
        )
    if spec.reconstructs and test.images.dtype == np.uint8:
        grid = viz.reconstruction_grid_image(
            *reconstruction_examples(state, test, spec), f"{experiment}: test reconstructions"
        )
        save("reconstructions.png", grid, "test/reconstructions")
    if has_pictures:
        _write_embedding(writer, step, state, test, spec, pictures, predictions)
    return written


def _write_embedding(writer, step: int, state, test: Split, spec, pictures, predictions) -> None:
    """The projector's embedding of the first EMBEDDING_POINTS test images,
    labelled and, where the task classifies, with the predicted digit."""
    count = min(EMBEDDING_POINTS, len(test))
    features = inspection.embeddings(state, test.images[:count], spec)
    metadata = {"label": test.labels[:count]}
    if predictions is not None:
        metadata["predicted"] = np.asarray(predictions)[:count]
    writer.embedding("test/embedding", step, features, pictures[:count], metadata)
