"""What the epoch loop trains: the `Members` protocol, and `Single`, one model.

The epoch loop (mnist_jax.loop.train_members) is written once for every kind
of run. What differs between a plain run and a sweep's trials trained
together (mnist_jax.trial_group.TrialGroup: K states stacked along a leading
axis) is behind `Members`: the initial state, the jitted step functions and
their extra arguments, how batches are shuffled and sharded, how a step's
metrics split into one dict per member, and what a checkpoint's meta holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np

from mnist_jax import parallel, pipeline, steps
from mnist_jax.config import TrainConfig, check_resumable
from mnist_jax.optim import make_optimizer
from mnist_jax.tasks import StepConfig


class Members(Protocol):
    """What one run of the epoch loop trains: `count` members advanced by one
    jitted step, their states one pytree (stacked along a leading axis where
    there are several)."""

    config: TrainConfig  # The settings the members share (epochs, batch size, cadences).
    count: int  # How many members.
    leading: int  # Axes before the batch axis in the step index arrays: (steps, [K,] B).
    step_args: tuple  # Extra arguments of the step functions, after the state.

    def initial_state(self, steps_per_epoch: int, sample: jax.Array) -> Any:
        """The (stacked) train state to start from; sample: a float batch (1, 28, 28, 1)."""

    def host_step(self, spec: StepConfig, mesh: jax.sharding.Mesh) -> Callable:
        """The jitted step `state, *step_args, batch -> state, metric sums`."""

    def device_steps(self, spec: StepConfig, mesh: jax.sharding.Mesh) -> Callable:
        """The jitted scan `state, *step_args, data, indices, masks -> state, metric sums`."""

    def shard_batch(self, batch: dict, mesh: jax.sharding.Mesh) -> dict:
        """A gathered batch placed on the mesh."""

    def index_arrays(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Placeholder (indices, masks) of `length` steps, to compile with."""

    def epoch_batches(self, epoch: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, masks), each (steps, [K,] B): the batches of `epoch`."""

    def member(self, state: Any, k: int) -> steps.TrainState:
        """Member k's train state."""

    def split(self, sums: dict) -> list[dict]:
        """One step's metric sums, one dict per member."""

    def best_to_save(self, kept: Any, state: Any, improved: list[bool]) -> tuple[Any, Any]:
        """(the state to save as "best", what to keep of it in memory), given
        which members improved and what was kept before."""

    def to_meta(self, histories: list, bests: list, epoch_sums: list, train_seconds: float) -> dict:
        """A checkpoint's meta: enough to resume exactly, mid-epoch too."""

    def from_meta(self, saved: dict) -> tuple[list, list, list, float]:
        """(histories, bests, epoch sums, train seconds) of a saved meta;
        ResumeError where it was written with other settings."""

    def epoch_line(self, epoch: int, records: list[dict]) -> str:
        """The line printed at an epoch's end."""


class Single:
    """The members of a plain run: one model trained from one config, its
    train state as it is (unstacked)."""

    count = 1
    leading = 1  # Axes before the batch axis in the step index arrays: (steps, B).
    step_args = ()  # Extra arguments of the step functions, after the state.

    def __init__(self, config: TrainConfig, model: nn.Module, pretrained: dict | None = None):
        self.config, self.model, self.pretrained = config, model, pretrained

    def initial_state(self, steps_per_epoch: int, sample: jax.Array) -> steps.TrainState:
        state = steps.create_train_state(
            self.model,
            make_optimizer(self.config, steps_per_epoch),
            self.config.seed,
            sample,
            ema=self.config.ema_decay > 0,
        )
        return steps.load_pretrained(state, self.pretrained) if self.pretrained else state

    def host_step(self, spec, mesh) -> Callable:
        return steps.make_train_step(spec, mesh)

    def device_steps(self, spec, mesh) -> Callable:
        return steps.make_device_train_steps(spec, mesh)

    def shard_batch(self, batch: dict, mesh) -> dict:
        return parallel.shard_batch(batch, mesh)

    def index_arrays(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Placeholder (indices, masks) of `length` steps, to compile with."""
        size = self.config.batch_size
        return pipeline.batch_indices(np.zeros(length * size, np.int64), size)

    def epoch_batches(self, epoch: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, masks) (steps, B) of `epoch`, shuffled from the run's seed."""
        order = pipeline.epoch_order(steps.run_keys(self.config.seed)[2], epoch, num_examples)
        return pipeline.batch_indices(order, self.config.batch_size)

    def member(self, state, k: int):
        return state

    def split(self, sums: dict) -> list[dict]:
        """A step's metric sums, one dict per member."""
        return [sums]

    def best_to_save(self, kept, state, improved: list[bool]):
        """(the state to save as "best", what to keep of it in memory)."""
        return state, None

    def to_meta(self, histories, bests, epoch_sums, train_seconds: float) -> dict:
        """A checkpoint's meta: enough to resume exactly, mid-epoch too."""
        return {
            "history": histories[0],
            "best": bests[0],
            "epoch_sums": epoch_sums[0],
            "train_seconds": train_seconds,
            "config": self.config.to_dict(),
        }

    def from_meta(self, saved: dict) -> tuple[list, list, list, float]:
        check_resumable(saved["config"], self.config)
        return [saved["history"]], [saved["best"]], [saved["epoch_sums"]], saved["train_seconds"]

    def epoch_line(self, epoch: int, records: list[dict]) -> str:
        shown = "  ".join(
            f"{k.replace('_', ' ')} {v:.4f}"
            for k, v in records[0].items()
            if k.startswith(("train_", "val_")) and not k.endswith(("cross_entropy", "psnr"))
        )
        return f"epoch {epoch + 1:>3}/{self.config.epochs}  {shown}"
