"""Where every figure is drawn: matplotlib's Agg canvas, headless, and the
figure as an (H, W, 3) array or a PNG file.

matplotlib is imported by the first figure drawn, not with this module: a
command that draws nothing (predict, a resumed run that is finished) does
not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs) -> Figure:
    """A matplotlib Figure (no pyplot: no GUI backend, no window)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders a figure to an (H, W, 3) uint8 array; no window ever opens."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path) -> None:
    from PIL import Image  # Pillow comes with matplotlib.

    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
