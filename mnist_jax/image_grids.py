"""Pictures of digits and of what a model computes from them: rows and
captioned grids of images, the misclassified test images, samples per
label, one layer's feature maps, a ViT's attention over its input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mnist_jax.canvas import figure_to_array, hide_ticks, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def image_rows_figure(rows: dict[str, np.ndarray], title: str = "") -> Figure:
    """One row of images per entry, labelled by its key; (N, 28, 28, 1) in [0, 1]."""
    n = next(iter(rows.values())).shape[0]
    fig = new_figure(figsize=(1.1 * n, 0.4 + 1.1 * len(rows)), dpi=100)
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


def labelled_images_figure(
    images: np.ndarray, captions: list[str], title: str = "", columns: int = 10
) -> Figure:
    """A grid of (N, 28, 28, 1) images in [0, 1], each with a caption above."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    n = max(len(images), 1)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig = new_figure(figsize=(1.15 * columns, 0.5 + 1.3 * rows), dpi=100)
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
    "true T / pred P".

    Args:
      images: uint8 (N, 28, 28, 1), as MNIST stores them.
      labels: the true digits, (N,).
      predictions: the predicted digits, (N,).
      title: the figure's title, followed by how many are shown of how many wrong.
      limit: at most this many images (the first wrong ones, in order).

    Returns:
      The matplotlib Figure: a captioned grid of the wrong images, or one line
      saying that none of the N is wrong.
    """
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predictions))
    if not len(wrong):
        fig = new_figure(figsize=(5, 1.2), dpi=100)
        fig.text(0.5, 0.5, f"{title}: none of {len(labels)}", ha="center", va="center", fontsize=10)
        return fig
    shown = wrong[:limit]
    captions = [f"true {labels[i]} / pred {predictions[i]}" for i in shown]
    return labelled_images_figure(
        np.asarray(images)[shown] / 255.0,
        captions,
        f"{title} ({len(shown)} shown of {len(wrong)} wrong in {len(labels)})",
    )


def samples_per_label_figure(
    images: np.ndarray, labels: np.ndarray, per_label: int = 5, title: str = "Samples per label"
) -> Figure:
    """A row per digit with its first `per_label` images; uint8 (N, 28, 28, 1)."""
    classes = np.unique(labels)
    fig = new_figure(figsize=(1.0 * per_label + 0.6, 0.4 + 1.0 * len(classes)), dpi=100)
    axes = fig.subplots(len(classes), per_label, squeeze=False)
    for row, label in enumerate(classes):
        picks = np.flatnonzero(labels == label)[:per_label]
        for col in range(per_label):
            ax = axes[row, col]
            hide_ticks(ax)
            if col < len(picks):
                ax.imshow(images[picks[col], ..., 0], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_ylabel(str(label), rotation=0, labelpad=10)
    fig.suptitle(title, fontsize=9)
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
    fig = new_figure(figsize=(1.2 * columns, 0.5 + 1.2 * rows), dpi=100)
    axes = fig.subplots(rows, columns, squeeze=False)
    for c, ax in enumerate(axes.flat):
        hide_ticks(ax)
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
    hide_ticks(ax)


def attention_figure(
    image: np.ndarray, cls_maps: np.ndarray, rollout: np.ndarray, title: str = "ViT attention"
) -> Figure:
    """The image; the rollout over it; then a row per layer with each head's
    CLS attention (depth, heads, g, g) over the image. image: (28, 28) in [0, 1]."""
    depth, heads = cls_maps.shape[:2]
    fig = new_figure(figsize=(1.3 * (heads + 1), 0.6 + 1.3 * (depth + 1)), dpi=100)
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
        hide_ticks(ax)
    for ax in axes[0, 2:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
