"""Charts of numbers: lines through points (accuracy against noise or labels),
a run's training curves, labels per split, pixel statistics, and test
accuracy against training time, ours beside a report's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mnist_jax.canvas import hide_ticks, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    """One line per name through its (x, y) points, with a legend.

    Args:
      curves: {name: [(x, y), ...]}, a line each; the points are drawn in x order.
      xlabel: the x axis's label.
      ylabel: the y axis's label.
      title: the figure's title.
      log_x: a log-scale x axis.
      percent: y drawn as a percentage (100 y): y values are fractions.
      marks: {label: x}: a dashed grey vertical line at each x, in the legend
        under its label.

    Returns:
      The matplotlib Figure (draw it with canvas.figure_to_array).
    """
    fig = new_figure(figsize=(6.4, 4.2), dpi=100)
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
    fig = new_figure(figsize=(5.2 * len(panels), 4.0), dpi=100)
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


def label_distribution_figure(
    counts: dict[str, np.ndarray], title: str = "Labels per split"
) -> Figure:
    """Grouped bars: for each digit, its count in every split ({split: (10,) counts})."""
    fig = new_figure(figsize=(8, 4), dpi=100)
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


def pixel_statistics_figure(
    mean_image: np.ndarray,
    std_image: np.ndarray,
    histograms: dict[str, np.ndarray],
    title: str = "Pixel statistics",
) -> Figure:
    """The mean and standard deviation per pixel (28, 28) in [0, 1], and a
    log-scale histogram of pixel values per split ({split: (256,) counts})."""
    fig = new_figure(figsize=(12, 3.8), dpi=100)
    ax_mean, ax_std, ax_hist = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, image, name in (
        (ax_mean, mean_image, "mean"),
        (ax_std, std_image, "standard deviation"),
    ):
        shown = ax.imshow(image, cmap="viridis")
        fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(f"{name} per pixel", fontsize=9)
        hide_ticks(ax)
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


def comparison_figure(rows: list[dict], title: str = "Accuracy against training time") -> Figure:
    """Test accuracy against training time, one point per model.

    rows: {"label", "accuracy", "train_seconds"} and optionally
    "accuracy_std", "train_seconds_std" (error bars, over seeds) and
    "reference" ({"accuracy", "train_seconds"}: the report's point, hollow,
    joined to ours by a dotted line). Accuracies are fractions.
    """
    fig = new_figure(figsize=(10, 4.8), dpi=100)
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
