"""Our side of `--vs-torch`: a training run's own pieces, stepped `steps` steps a call.

What `fit` trains and how its loop calls the steps, taken from the library
rather than copied: the members of a plain run (mnist_jax.members.Single:
the initial state, each epoch's shuffled and padded batches), the data
placement `fit` picks (mnist_jax.placement.resolve_data_placement) and the
step runner of that placement, compiled ahead of time: on the host
(placement.HostSteps) each batch gathered there and one jitted call a step,
on the CPU; on the devices (placement.DeviceSteps) the steps of a call as
one `lax.scan` over data there, on GPU and TPU.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models, parallel, pipeline, placement
from mnist_jax.config import TrainConfig
from mnist_jax.data import Split
from mnist_jax.members import Single


class JaxTrainer:
    """`config`'s model trained as `fit` trains it, on all local devices, on
    `images` (N, 28, 28, 1) uint8 and `labels`; `run` times `steps` steps."""

    def __init__(self, config: TrainConfig, images: np.ndarray, labels: np.ndarray, steps: int):
        # A device run's scans end at its checkpoints: `steps` steps apart, one scan a call.
        config = dataclasses.replace(config, checkpoint_every_steps=steps)
        self.steps, self.train, self.mesh = steps, Split(images, labels), parallel.data_mesh()
        parallel.check_batch_size(config.batch_size, self.mesh, "training batch size")
        self.members = Single(config, models.get_model(config.model))
        self.steps_per_epoch = pipeline.num_batches(len(labels), config.batch_size)
        sample = jnp.zeros((1, *images.shape[1:]), jnp.float32)
        self.state = parallel.replicate(
            self.members.initial_state(self.steps_per_epoch, sample), self.mesh
        )
        where = placement.resolve_data_placement(config, self.train, self.mesh)
        runner = placement.DeviceSteps if where == "device" else placement.HostSteps
        self.runner = runner(self.members, config.step_config(), self.mesh, self.train)
        # Where the batches stand: the epoch drawn, its (indices, masks), the next step of it.
        # The first epoch is drawn here, with the one-time compilation of its shuffle.
        self.epoch, self.position = 0, 0
        self.epoch_batches = self.members.epoch_batches(0, len(self.train))

    def batches(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, masks), each (steps, B): the next `steps` batches of a
        training run's epochs (members.epoch_batches), on into the next epoch."""
        parts, needed = [], steps
        while needed:
            if self.position == self.steps_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
                self.epoch_batches = self.members.epoch_batches(self.epoch, len(self.train))
            end = min(self.position + needed, self.steps_per_epoch)
            parts.append([a[self.position : end] for a in self.epoch_batches])
            needed, self.position = needed - (end - self.position), end
        indices, masks = (np.concatenate(p) for p in zip(*parts))
        return indices, masks

    def compile(self) -> float:
        """Seconds to compile the programs that `run(steps)` calls: every call
        is one `steps`-step chunk (placement.chunks), as in an epoch that long."""
        self.runner.compile(self.state, 0, self.steps)
        return self.runner.program.seconds

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps as the loop calls them, drawing (and on
        the host gathering) their batches included."""
        jax.block_until_ready(self.state)
        start = time.perf_counter()
        indices, masks = self.batches(steps)
        for begin, end in placement.chunks(0, steps, self.runner.chunk_length):
            self.state, metrics = self.runner(self.state, indices, masks, begin, end)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start

    def device_peak_bytes(self) -> int | None:
        stats = jax.local_devices()[0].memory_stats()
        return stats.get("peak_bytes_in_use") if stats else None

    def describe(self) -> str:
        return parallel.format_devices(parallel.describe(self.mesh))
