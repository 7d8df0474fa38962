"""Figures as images, rendered headless with matplotlib's Agg canvas."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders a figure to an (H, W, 3) uint8 array; no window ever opens."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _draw_confusion_matrix(ax, cm: np.ndarray, title: str, fontsize: float = 7) -> None:
    n = cm.shape[0]
    ax.imshow(cm, cmap="Blues")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color, fontsize=fontsize)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)


def confusion_matrix_figure(cm: np.ndarray, title: str = "Confusion matrix") -> Figure:
    """A heatmap of counts, true labels down, predictions across."""
    fig = Figure(figsize=(6, 5.4), dpi=100)
    _draw_confusion_matrix(fig.add_subplot(), cm, title)
    fig.tight_layout()
    return fig


def confusion_matrices_figure(grid: dict[str, dict[str, np.ndarray]]) -> Figure:
    """A table of confusion matrices: grid[row][column], e.g. [model][test set]."""
    rows, cols = list(grid), list(next(iter(grid.values())))
    fig = Figure(figsize=(4.6 * len(cols), 4.4 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            _draw_confusion_matrix(axes[r, c], np.asarray(grid[row][col]), f"{row} / {col}", fontsize=6)
    fig.tight_layout()
    return fig


def confusion_matrix_image(cm: np.ndarray, title: str = "Confusion matrix") -> np.ndarray:
    """(H, W, 3) uint8 picture of the confusion matrix."""
    return figure_to_array(confusion_matrix_figure(cm, title))


def save_png(image: np.ndarray, path) -> None:
    from PIL import Image  # Pillow comes with matplotlib.

    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def image_rows_figure(rows: dict[str, np.ndarray], title: str = "") -> Figure:
    """One row of images per entry, labelled by its key; (N, 28, 28, 1) in [0, 1]."""
    n = next(iter(rows.values())).shape[0]
    fig = Figure(figsize=(1.1 * n, 0.4 + 1.1 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        for i in range(n):
            ax = axes[row, i]
            ax.imshow(np.clip(images[i, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def reconstruction_grid_figure(originals: np.ndarray, reconstructions: np.ndarray,
                               title: str = "Reconstructions") -> Figure:
    """Originals on the top row, their reconstructions below; (N, 28, 28, 1) in [0, 1]."""
    return image_rows_figure({"original": originals, "reconstructed": reconstructions}, title)


def reconstruction_grid_image(originals: np.ndarray, reconstructions: np.ndarray,
                              title: str = "Reconstructions") -> np.ndarray:
    """(H, W, 3) uint8 picture of originals above reconstructions."""
    return figure_to_array(reconstruction_grid_figure(originals, reconstructions, title))


def curves_figure(curves: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str,
                  title: str, log_x: bool = False, percent: bool = True,
                  marks: dict[str, float] | None = None) -> Figure:
    """One line per name through its (x, y) points; y as a percentage if
    `percent`; a dashed vertical line at each x of `marks`, labelled by its key."""
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot()
    for name, points in curves.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, [100 * y if percent else y for y in ys], marker="o", label=name)
    for label, x in (marks or {}).items():
        ax.axvline(x, linestyle="--", color="gray", linewidth=1, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def accuracy_vs_labels_figure(curves: dict[str, list[tuple[int, float]]],
                              title: str = "Test accuracy against labelled images") -> Figure:
    """One line per method: (number of labels, test accuracy) points, log x."""
    return curves_figure(curves, xlabel="labelled training images", ylabel="test accuracy (%)",
                         title=title, log_x=True)
