"""Figures as images, rendered headless with matplotlib's Agg canvas.

matplotlib is imported by the first figure drawn, not with this module: a
command that draws nothing (predict, a resumed run that is finished) does
not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders a figure to an (H, W, 3) uint8 array; no window ever opens."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

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
            ax.text(
                j, i, str(int(cm[i, j])), ha="center", va="center", color=color, fontsize=fontsize
            )
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)


def confusion_matrix_figure(cm: np.ndarray, title: str = "Confusion matrix") -> Figure:
    """A heatmap of counts, true labels down, predictions across."""
    fig = _figure(figsize=(6, 5.4), dpi=100)
    _draw_confusion_matrix(fig.add_subplot(), cm, title)
    fig.tight_layout()
    return fig


def confusion_matrices_figure(grid: dict[str, dict[str, np.ndarray]]) -> Figure:
    """A table of confusion matrices: grid[row][column], e.g. [model][test set]."""
    rows, cols = list(grid), list(next(iter(grid.values())))
    fig = _figure(figsize=(4.6 * len(cols), 4.4 * len(rows)), dpi=100)
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


def save_png(image: np.ndarray, path) -> None:
    from PIL import Image  # Pillow comes with matplotlib.

    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def image_rows_figure(rows: dict[str, np.ndarray], title: str = "") -> Figure:
    """One row of images per entry, labelled by its key; (N, 28, 28, 1) in [0, 1]."""
    n = next(iter(rows.values())).shape[0]
    fig = _figure(figsize=(1.1 * n, 0.4 + 1.1 * len(rows)), dpi=100)
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


def reconstruction_grid_figure(
    originals: np.ndarray, reconstructions: np.ndarray, title: str = "Reconstructions"
) -> Figure:
    """Originals on the top row, their reconstructions below; (N, 28, 28, 1) in [0, 1]."""
    return image_rows_figure({"original": originals, "reconstructed": reconstructions}, title)


def reconstruction_grid_image(
    originals: np.ndarray, reconstructions: np.ndarray, title: str = "Reconstructions"
) -> np.ndarray:
    """(H, W, 3) uint8 picture of originals above reconstructions."""
    return figure_to_array(reconstruction_grid_figure(originals, reconstructions, title))


def curves_figure(
    curves: dict[str, list[tuple[float, float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
    percent: bool = True,
    marks: dict[str, float] | None = None,
) -> Figure:
    """One line per name through its (x, y) points; y as a percentage if
    `percent`; a dashed vertical line at each x of `marks`, labelled by its key."""
    fig = _figure(figsize=(6.4, 4.2), dpi=100)
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


def accuracy_vs_labels_figure(
    curves: dict[str, list[tuple[int, float]]], title: str = "Test accuracy against labelled images"
) -> Figure:
    """One line per method: (number of labels, test accuracy) points, log x."""
    return curves_figure(
        curves,
        xlabel="labelled training images",
        ylabel="test accuracy (%)",
        title=title,
        log_x=True,
    )


def _hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def training_curves_figure(
    history: list[dict], title: str = "Training curves", scored_epoch: int | None = None
) -> Figure:
    """Loss, and accuracy where there is one, per epoch: train and validation;
    a dashed line at `scored_epoch`, the checkpoint the test set was scored on.

    history: a run's per-epoch records (metrics.json "history"), with keys
    "epoch", "train_loss", "val_loss" and maybe "train_accuracy", "val_accuracy".
    """
    from matplotlib import ticker

    if not history:
        raise ValueError("no epochs in the history to plot")
    panels = [("loss", "loss", False)]
    if "val_accuracy" in history[0]:
        panels.append(("accuracy", "accuracy (%)", True))
    fig = _figure(figsize=(5.2 * len(panels), 4.0), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    epochs = [h["epoch"] for h in history]
    for ax, (metric, ylabel, percent) in zip(axes, panels):
        for split in ("train", "val"):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is None for v in values):
                continue
            ax.plot(
                epochs,
                [100 * v if percent else v for v in values],
                marker="o",
                label="validation" if split == "val" else split,
            )
        if scored_epoch is not None:
            ax.axvline(
                scored_epoch,
                linestyle="--",
                color="gray",
                linewidth=1,
                label=f"scored on test (epoch {scored_epoch})",
            )
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def labelled_images_figure(
    images: np.ndarray, captions: list[str], title: str = "", columns: int = 10
) -> Figure:
    """A grid of (N, 28, 28, 1) images in [0, 1], each with a caption above."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    n = max(len(images), 1)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig = _figure(figsize=(1.15 * columns, 0.5 + 1.3 * rows), dpi=100)
    # One mosaic in one axes: 30 small axes would take most of a second to draw.
    h, w = images.shape[1:3]
    cell_h, cell_w = h + 12, w + 4  # Room for the caption above each image.
    mosaic = np.ones((rows * cell_h, columns * cell_w))
    for i in range(len(images)):
        r, c = divmod(i, columns)
        mosaic[r * cell_h + 10 : r * cell_h + 10 + h, c * cell_w + 2 : c * cell_w + 2 + w] = (
            np.clip(images[i, ..., 0], 0, 1)
        )
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.6 / fig.get_figheight()))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for i, caption in enumerate(captions):
        r, c = divmod(i, columns)
        ax.text(
            c * cell_w + cell_w / 2, r * cell_h + 8, caption, ha="center", va="bottom", fontsize=7
        )
    fig.suptitle(title, fontsize=9)
    return fig


def misclassified_figure(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    title: str = "Misclassified test images",
    limit: int = 30,
) -> Figure:
    """The first `limit` images whose prediction is wrong, captioned
    "true T / pred P"; images uint8 (N, 28, 28, 1)."""
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predictions))
    if not len(wrong):
        fig = _figure(figsize=(5, 1.2), dpi=100)
        fig.text(0.5, 0.5, f"{title}: none of {len(labels)}", ha="center", va="center", fontsize=10)
        return fig
    shown = wrong[:limit]
    captions = [f"true {labels[i]} / pred {predictions[i]}" for i in shown]
    return labelled_images_figure(
        np.asarray(images)[shown] / 255.0,
        captions,
        f"{title} ({len(shown)} shown of {len(wrong)} wrong in {len(labels)})",
    )


def label_distribution_figure(
    counts: dict[str, np.ndarray], title: str = "Labels per split"
) -> Figure:
    """Grouped bars: for each digit, its count in every split ({split: (10,) counts})."""
    fig = _figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        xs = np.arange(len(values)) + (i - (len(counts) - 1) / 2) * width
        ax.bar(xs, values, width=width, label=f"{split} ({int(np.sum(values)):,})")
    ax.set(
        xticks=range(len(next(iter(counts.values())))), xlabel="digit", ylabel="images", title=title
    )
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def samples_per_label_figure(
    images: np.ndarray, labels: np.ndarray, per_label: int = 5, title: str = "Samples per label"
) -> Figure:
    """A row per digit with its first `per_label` images; uint8 (N, 28, 28, 1)."""
    classes = np.unique(labels)
    fig = _figure(figsize=(1.0 * per_label + 0.6, 0.4 + 1.0 * len(classes)), dpi=100)
    axes = fig.subplots(len(classes), per_label, squeeze=False)
    for row, label in enumerate(classes):
        picks = np.flatnonzero(labels == label)[:per_label]
        for col in range(per_label):
            ax = axes[row, col]
            _hide_ticks(ax)
            if col < len(picks):
                ax.imshow(images[picks[col], ..., 0], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_ylabel(str(label), rotation=0, labelpad=10)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def pixel_statistics_figure(
    mean_image: np.ndarray,
    std_image: np.ndarray,
    histograms: dict[str, np.ndarray],
    title: str = "Pixel statistics",
) -> Figure:
    """The mean and standard deviation per pixel (28, 28) in [0, 1], and a
    log-scale histogram of pixel values per split ({split: (256,) counts})."""
    fig = _figure(figsize=(12, 3.8), dpi=100)
    ax_mean, ax_std, ax_hist = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, image, name in (
        (ax_mean, mean_image, "mean"),
        (ax_std, std_image, "standard deviation"),
    ):
        shown = ax.imshow(image, cmap="viridis")
        fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(f"{name} per pixel", fontsize=9)
        _hide_ticks(ax)
    for split, counts in histograms.items():
        fractions = np.asarray(counts, np.float64) / max(np.sum(counts), 1)
        ax_hist.step(np.arange(len(counts)), fractions, where="mid", label=split)
    ax_hist.set(
        yscale="log",
        xlabel="pixel value (0-255)",
        ylabel="fraction of pixels",
        title="pixel values",
    )
    ax_hist.legend()
    ax_hist.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _channel_grid(maps: np.ndarray, columns: int) -> tuple[int, int]:
    n = maps.shape[-1]
    columns = min(columns, n)
    return -(-n // columns), columns


def feature_maps_figure(maps: np.ndarray, title: str, columns: int = 8) -> Figure:
    """One layer's activations (h, w, C): a panel per channel, each scaled to
    its own range (a flat channel shows as uniform grey)."""
    rows, columns = _channel_grid(maps, columns)
    fig = _figure(figsize=(1.2 * columns, 0.5 + 1.2 * rows), dpi=100)
    axes = fig.subplots(rows, columns, squeeze=False)
    for c, ax in enumerate(axes.flat):
        _hide_ticks(ax)
        if c < maps.shape[-1]:
            ax.imshow(maps[..., c], cmap="viridis")
            ax.set_title(str(c), fontsize=6, pad=2)
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _overlay(ax, image: np.ndarray, heat: np.ndarray) -> None:
    """image (H, W) in [0, 1] in grey, `heat` (g, g) stretched over it."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(
        heat,
        cmap="inferno",
        alpha=0.6,
        extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5),
        interpolation="nearest",
    )
    _hide_ticks(ax)


def attention_figure(
    image: np.ndarray, cls_maps: np.ndarray, rollout: np.ndarray, title: str = "ViT attention"
) -> Figure:
    """The image; the rollout over it; then a row per layer with each head's
    CLS attention (depth, heads, g, g) over the image. image: (28, 28) in [0, 1]."""
    depth, heads = cls_maps.shape[:2]
    fig = _figure(figsize=(1.3 * (heads + 1), 0.6 + 1.3 * (depth + 1)), dpi=100)
    axes = fig.subplots(depth + 1, heads + 1, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=7)
    _overlay(axes[0, 1], image, rollout)
    axes[0, 1].set_title("rollout", fontsize=7)
    for layer in range(depth):
        axes[layer + 1, 0].text(
            0.5, 0.5, f"layer {layer + 1}", ha="center", va="center", fontsize=8
        )
        for head in range(heads):
            ax = axes[layer + 1, head + 1]
            _overlay(ax, image, cls_maps[layer, head])
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=7)
    for ax in axes[:, 1:].flat:
        ax.axis("on")
        _hide_ticks(ax)
    for ax in axes[0, 2:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def comparison_figure(rows: list[dict], title: str = "Accuracy against training time") -> Figure:
    """Test accuracy against training time, one point per model.

    rows: {"label", "accuracy", "train_seconds"} and optionally
    "accuracy_std", "train_seconds_std" (error bars, over seeds) and
    "reference" ({"accuracy", "train_seconds"}: the report's point, hollow,
    joined to ours by a dotted line). Accuracies are fractions.
    """
    fig = _figure(figsize=(10, 4.8), dpi=100)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for row, color in zip(rows, colors):
        x, y = row["train_seconds"], 100 * row["accuracy"]
        ax.errorbar(
            x,
            y,
            xerr=row.get("train_seconds_std"),
            yerr=100 * (row.get("accuracy_std") or 0),
            fmt="o",
            color=color,
            capsize=3,
            label=row["label"],
        )
        ax.annotate(row["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        reference = row.get("reference") or {}
        if reference.get("accuracy") is not None and reference.get("train_seconds") is not None:
            rx, ry = reference["train_seconds"], 100 * reference["accuracy"]
            ax.plot([rx], [ry], marker="o", markerfacecolor="none", color=color, linestyle="none")
            ax.plot([x, rx], [y, ry], linestyle=":", color=color, linewidth=1)
    ax.plot(
        [],
        [],
        marker="o",
        markerfacecolor="none",
        color="gray",
        linestyle="none",
        label="report (PyTorch)",
    )
    ax.set(
        xscale="log", xlabel="training time (s, log scale)", ylabel="test accuracy (%)", title=title
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )  # Beside the points, not on them.
    fig.tight_layout()
    return fig
