"""How a run is carried out and recorded: `RunOptions`, beside its config.

A `TrainConfig` (mnist_jax.config) holds what decides a run's numbers; the
options hold the rest of what `train.train_and_evaluate` and `loop.fit`
take: whether to resume, where to show progress, the devices, what to
record. They never change the numbers, except `pretrained`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from mnist_jax import timing


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run is carried out and recorded, besides its config, model,
    data and run directory (`train.train_and_evaluate`, `fit`). Nothing here
    changes the run's numbers except `pretrained`, the weights it starts from.

    experiment: the name metrics.json records and the figures' titles carry.
    resume: continue from the newest checkpoint (a finished run: scored again).
    progress: a progress bar where the output is a terminal or a notebook.
    mesh: the devices (default: all of them).
    pretrained: top-level parameter groups to start from (see
      `steps.load_pretrained`); ignored on resume, where the checkpoint has them.
    on_step: called with the global step after each call of the step
      function (every step with the data on the host, every scan with it on
      the device; the tests interrupt runs there).
    extra: fields added to metrics.json.
    test_pictures: the test images as uint8 pictures, for the figures,
      where `splits.test` holds something else (cached features).
    phases: where the caller's time went so far (loading the data); the
      run's own phases are added and written to metrics.json.
    """

    experiment: str = "run"
    resume: bool = False
    progress: bool = True
    mesh: jax.sharding.Mesh | None = None
    pretrained: dict | None = None
    on_step: Callable[[int], None] | None = None
    extra: dict | None = None
    test_pictures: np.ndarray | None = None
    phases: timing.Phases | None = None
