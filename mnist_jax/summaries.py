"""TensorBoard logging through tensorboardX: the only place that writes events.

One `SummaryWriter` per run directory (`<workdir>/tensorboard`). Hparams go
into the same run rather than a timestamped sub-run (tensorboardX's
`add_hparams` default, lanpa/tensorboardX #519), so one trial is one run.
"""

from __future__ import annotations

import pathlib
from typing import Mapping

import numpy as np
import tensorboardX
from tensorboardX.summary import hparams as hparams_summaries


class MetricWriter:
    """Writes scalars, images and hparams of one run.

    enabled=False writes nothing: in a multi-process run only process 0 writes.
    """

    def __init__(self, logdir: str | pathlib.Path, *, enabled: bool = True):
        self.logdir = pathlib.Path(logdir)
        self._writer = tensorboardX.SummaryWriter(str(self.logdir)) if enabled else None

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
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

    def hparams(self, hparams: Mapping[str, bool | int | float | str], metrics: Mapping[str, float]) -> None:
        """Records this run's hyperparameters and final metrics for the HParams dashboard."""
        if self._writer is None:
            return
        file_writer = self._writer._get_file_writer()
        for summary in hparams_summaries(dict(hparams), dict(metrics)):
            file_writer.add_summary(summary)
        self.scalars(0, metrics)

    def flush(self) -> None:
        if self._writer is None:
            return
        self._writer.flush()

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
