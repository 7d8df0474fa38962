"""Where the training set lives during a run, and how its steps are called.

- "host": batches gathered on the host, one jitted call a step (`HostSteps`).
- "device": the set on the devices, the steps between two checkpoints as
  one `lax.scan` call, each step gathering its batch there (`DeviceSteps`).

`resolve_data_placement` picks one for config.data_placement "auto". Every
program a run will call is compiled ahead of time (`AheadOfTime`), so the
loop's clock leaves compilation out. What the steps train (one model, or a
sweep's trials stacked) is the loop's `members` object: it gives the jitted
step functions, their extra arguments and how batches are sharded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from mnist_jax import parallel, pipeline
from mnist_jax.config import TrainConfig
from mnist_jax.data import Split


def resolve_data_placement(config: TrainConfig, train: Split, mesh: jax.sharding.Mesh) -> str:
    """ "device" or "host": where the training set lives during the run
    (see config.DATA_PLACEMENTS)."""
    if config.data_placement != "auto":
        return config.data_placement
    if mesh.devices.flat[0].platform == "cpu":
        return "host"
    nbytes = train.images.nbytes + train.labels.nbytes
    return "device" if parallel.fits_on_devices(nbytes, mesh) else "host"


class AheadOfTime:
    """A jitted function's programs compiled before they run, one per input
    shape (e.g. per scan length), so that training time can leave
    compilation out; `seconds` adds up the compile time."""

    def __init__(self, jitted: Callable):
        self.jitted, self.programs, self.seconds = jitted, {}, 0.0

    @staticmethod
    def _key(args) -> tuple:
        # The state (args[0]) keeps its shapes through a run: only the inputs vary.
        return tuple((x.shape, x.dtype) for x in jax.tree.leaves(args[1:]))

    def compile(self, *args):
        key = self._key(args)
        if key not in self.programs:
            start = time.perf_counter()
            self.programs[key] = self.jitted.lower(*args).compile()
            self.seconds += time.perf_counter() - start
        return self.programs[key]

    def __call__(self, *args):
        return self.compile(*args)(*args)


def chunks(offset: int, steps_per_epoch: int, length: int) -> list[tuple[int, int]]:
    """[begin, end) step ranges of an epoch from `offset`, cut at multiples of `length`."""
    first_cut = (offset // length + 1) * length
    bounds = [offset, *range(first_cut, steps_per_epoch, length), steps_per_epoch]
    return list(zip(bounds[:-1], bounds[1:]))


class HostSteps:
    """The training set on the host: one jitted call a step, on a gathered batch."""

    name = "host"
    description = "one jitted call a step"
    chunk_length = 1

    def __init__(self, members, spec, mesh, train: Split):
        self.members, self.mesh, self.train = members, mesh, train
        self.program = AheadOfTime(members.host_step(spec, mesh))

    def _batch(self, indices, mask):
        batch = pipeline.gather_batch(self.train.images, self.train.labels, indices, mask)
        return self.members.shard_batch(batch, self.mesh)

    def compile(self, state, start: int, steps_per_epoch: int) -> None:
        indices, masks = self.members.index_arrays(1)
        self.program.compile(state, *self.members.step_args, self._batch(indices[0], masks[0]))

    def __call__(self, state, indices, masks, begin: int, end: int):
        return self.program(
            state, *self.members.step_args, self._batch(indices[begin], masks[begin])
        )


class DeviceSteps:
    """The training set on the devices: the steps between two checkpoints
    as one `lax.scan` call, each gathering its batch there."""

    name = "device"

    def __init__(self, members, spec, mesh, train: Split):
        self.members, self.mesh = members, mesh
        self.chunk_length = members.config.checkpoint_every_steps
        self.description = f"lax.scan over up to {self.chunk_length} steps a call"
        self.data = parallel.replicate({"image": train.images, "label": train.labels}, mesh)
        self.program = AheadOfTime(members.device_steps(spec, mesh))

    def _call_args(self, indices, masks):
        steps_input = parallel.shard_steps(
            (indices, masks), self.mesh, leading=self.members.leading
        )
        return (*self.members.step_args, self.data, *steps_input)

    def compile(self, state, start: int, steps_per_epoch: int) -> None:
        # Every scan length the run will use (the first epoch's may start
        # mid-way, on resume).
        first_offset = start % steps_per_epoch
        lengths = {
            e - b
            for offset in (first_offset, 0)
            for b, e in chunks(offset, steps_per_epoch, self.chunk_length)
        }
        for length in sorted(lengths):
            self.program.compile(state, *self._call_args(*self.members.index_arrays(length)))

    def __call__(self, state, indices, masks, begin: int, end: int):
        return self.program(state, *self._call_args(indices[begin:end], masks[begin:end]))
