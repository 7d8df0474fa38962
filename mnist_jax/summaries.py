"""TensorBoard logging through tensorboardX: the only place that writes events.

One `SummaryWriter` per run directory (`<workdir>/tensorboard`). Hparams go
into the same run rather than a timestamped sub-run (tensorboardX's
`add_hparams` default, lanpa/tensorboardX #519), so one trial is one run.

tensorboardX is imported when the first writer opens, and without PyTorch:
its writer module imports torch wherever torch is installed (only to name a
type in its annotations), which costs seconds of every run's start-up.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import shutil
import sys
from collections.abc import Mapping

import numpy as np


def _tensorboardx():
    """The tensorboardX package, imported without torch (see the module docstring)."""
    blocked = "tensorboardX" not in sys.modules and "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = (
            None  # `import torch` raises ImportError, which tensorboardX expects.
        )
    try:
        import tensorboardX
        import tensorboardX.embedding
        import tensorboardX.summary
    finally:
        if blocked:
            del sys.modules["torch"]  # A later `import torch` works as ever.
    return tensorboardX


def sprite(images: np.ndarray) -> np.ndarray:
    """The projector's sprite of uint8 images (N, H, H, 1): a square grid of
    ceil(sqrt(N)) cells a side, filled row by row, the cells left over
    black. Returns (S, S, 3) uint8."""
    count, size = len(images), images.shape[1]
    side = math.ceil(math.sqrt(count))
    cells = np.zeros((side * side, size, size), np.uint8)
    cells[:count] = images[..., 0]
    grid = (
        cells.reshape(side, side, size, size)
        .transpose(0, 2, 1, 3)
        .reshape(side * size, side * size)
    )
    return np.repeat(grid[..., None], 3, axis=-1)


class MetricWriter:
    """Writes scalars, images and hparams of one run.

    enabled=False writes nothing: in a multi-process run only process 0 writes.
    """

    def __init__(self, logdir: str | pathlib.Path, *, enabled: bool = True):
        self.logdir = pathlib.Path(logdir)
        self._writer = _tensorboardx().SummaryWriter(str(self.logdir)) if enabled else None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (a full disk, say): the first error is the one to tell.
        with contextlib.suppress(OSError):
            self.close()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), int(step))

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """image: (H, W, C) uint8 or float in [0, 1], HWC as JAX/numpy lay it out."""
        if self._writer is None:
            return
        self._writer.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def hparams(
        self, hparams: Mapping[str, bool | int | float | str], metrics: Mapping[str, float]
    ) -> None:
        """Records this run's hyperparameters and final metrics for the HParams dashboard."""
        if self._writer is None:
            return
        file_writer = self._writer._get_file_writer()
        for summary in _tensorboardx().summary.hparams(dict(hparams), dict(metrics)):
            file_writer.add_summary(summary)
        self.scalars(0, metrics)

    def embedding(
        self,
        tag: str,
        step: int,
        features: np.ndarray,
        images: np.ndarray,
        metadata: Mapping[str, np.ndarray],
    ) -> None:
        """Points for TensorBoard's projector, each shown as its image.

        Written again (a resumed run), the embedding replaces the old one
        instead of being listed twice.

        Args:
          tag: the embedding's name.
          step: the step it is written at.
          features: (N, D) the points.
          images: (N, H, H, 1) uint8, drawn into the projector's sprite.
          metadata: columns of N values each, e.g. {"label": ..., "predicted": ...}.
        """
        if self._writer is None:
            return
        features = np.asarray(features, np.float32)
        columns = {name: np.asarray(values) for name, values in metadata.items()}
        if (
            features.ndim != 2
            or np.asarray(images).shape[0] != len(features)
            or any(len(v) != len(features) for v in columns.values())
        ):
            raise ValueError(
                f"embedding {tag!r}: features {features.shape}, images "
                f"{np.asarray(images).shape} and metadata must have one row per point"
            )
        # tensorboardX's add_embedding would draw a sprite of its own (leaving
        # the cells past the last image uninitialised: garbage pixels) and
        # format each value in Python; its file helpers are used instead, with
        # our sprite (black cells) and numpy's writer.
        projector = _tensorboardx().embedding
        logdir = pathlib.Path(self._writer._get_file_writer().get_logdir())
        subdir = f"{int(step):05d}/{self._writer._encode(tag)}"
        folder = logdir / subdir
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        rows = [[str(v) for v in row] for row in zip(*columns.values())]
        projector.make_tsv(
            rows if len(columns) > 1 else [r[0] for r in rows],
            str(folder),
            metadata_header=list(columns) if len(columns) > 1 else None,
        )
        np.savetxt(folder / "tensors.tsv", features, fmt="%.9g", delimiter="\t")  # float32 exactly.
        from PIL import Image

        Image.fromarray(sprite(np.asarray(images))).save(folder / "sprite.png")
        config = logdir / "projector_config.pbtxt"
        before = config.read_text() if config.exists() else ""
        size = np.asarray(images).shape[1]
        # append_pbtxt reads only the (N, C, H, W) shape of the images it is given.
        projector.append_pbtxt(
            columns, np.empty((0, 1, size, size)), str(logdir), subdir, int(step), tag
        )
        added = config.read_text()[len(before) :]
        if added in before:  # Written again (a resumed run): keep one entry per embedding.
            config.write_text(before)

    def flush(self) -> None:
        if self._writer is None:
            return
        self._writer.flush()

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
