"""Figures as images, rendered headless with matplotlib's Agg canvas: the one
name the project draws through, each family of figures in a module of its own.

    canvas             figure_to_array, save_png (and the figure every family draws on)
    charts             lines, bars and points: curves, training curves, labels
                       per split, pixel statistics, accuracy against training time
    image_grids        digits and activations: rows and captioned grids of
                       images, misclassified images, samples per label, feature
                       maps, a ViT's attention
    confusion_figures  a confusion matrix, or a table of them

matplotlib is imported by the first figure drawn, not with these modules: a
command that draws nothing (predict, a resumed run that is finished) does
not wait for it.
"""

from mnist_jax.canvas import figure_to_array, save_png
from mnist_jax.charts import (
    accuracy_vs_labels_figure,
    comparison_figure,
    curves_figure,
    label_distribution_figure,
    pixel_statistics_figure,
    training_curves_figure,
)
from mnist_jax.confusion_figures import (
    confusion_matrices_figure,
    confusion_matrix_figure,
    confusion_matrix_image,
)
from mnist_jax.image_grids import (
    attention_figure,
    feature_maps_figure,
    image_rows_figure,
    labelled_images_figure,
    misclassified_figure,
    reconstruction_grid_figure,
    reconstruction_grid_image,
    samples_per_label_figure,
)

__all__ = [
    "accuracy_vs_labels_figure",
    "attention_figure",
    "comparison_figure",
    "confusion_matrices_figure",
    "confusion_matrix_figure",
    "confusion_matrix_image",
    "curves_figure",
    "feature_maps_figure",
    "figure_to_array",
    "image_rows_figure",
    "label_distribution_figure",
    "labelled_images_figure",
    "misclassified_figure",
    "pixel_statistics_figure",
    "reconstruction_grid_figure",
    "reconstruction_grid_image",
    "samples_per_label_figure",
    "save_png",
    "training_curves_figure",
]
