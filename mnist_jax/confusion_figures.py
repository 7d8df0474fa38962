"""Confusion matrices as heatmaps of counts: one, or a table of them (model by test set, say)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mnist_jax.canvas import figure_to_array, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _draw_confusion_matrix(ax, cm: np.ndarray, title: str, fontsize: float = 7) -> None:
    n = cm.shape[0]
    ax.imshow(cm, cmap="Blues")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(
                j, i, str(int(cm[i, j])), ha="center", va="center", color=color, fontsize=fontsize
            )
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)


def confusion_matrix_figure(cm: np.ndarray, title: str = "Confusion matrix") -> Figure:
    """A heatmap of counts, true labels down, predictions across."""
    fig = new_figure(figsize=(6, 5.4), dpi=100)
    _draw_confusion_matrix(fig.add_subplot(), cm, title)
    fig.tight_layout()
    return fig


def confusion_matrices_figure(grid: dict[str, dict[str, np.ndarray]]) -> Figure:
    """A table of confusion matrices: grid[row][column], e.g. [model][test set]."""
    rows, cols = list(grid), list(next(iter(grid.values())))
    fig = new_figure(figsize=(4.6 * len(cols), 4.4 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            _draw_confusion_matrix(
                axes[r, c], np.asarray(grid[row][col]), f"{row} / {col}", fontsize=6
            )
    fig.tight_layout()
    return fig


def confusion_matrix_image(cm: np.ndarray, title: str = "Confusion matrix") -> np.ndarray:
    """(H, W, 3) uint8 picture of the confusion matrix."""
    return figure_to_array(confusion_matrix_figure(cm, title))
