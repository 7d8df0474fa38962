"""What a run has recorded so far, as its checkpoints' meta holds it.

`Meter`: the training metrics of the steps, summed on the host per log
window and per epoch. `RunRecord`: each member's epoch records and best,
and the run's clock.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

from mnist_jax import steps
from mnist_jax.checkpoints import CheckpointPolicy
from mnist_jax.faults import NonFiniteLossError
from mnist_jax.members import Members


class Meter:
    """The training metrics of the run's steps, for each member: sums of
    "loss_sum", "count" and the task's other terms (steps.train_step).

    `add` keeps a step call's metrics on the devices (fetching them would
    wait for the step); `count(upto)` fetches what was added, checks every
    step's loss is finite and moves the steps up to `upto` into the epoch's
    sums, returning each member's sums over just those steps (one log
    window). The epoch's sums go into every checkpoint's meta, so a run
    resumed mid-epoch ends the epoch with the same means.
    """

    def __init__(self, members: Members, nonfinite: Callable[[str, str, int], str]):
        self.members, self.nonfinite = members, nonfinite  # nonfinite: the error's message.
        self.epoch_sums: list[dict] = [{} for _ in range(members.count)]
        self.calls: list[tuple[int, dict, bool]] = []  # (first step, device sums, scanned)
        self.fetched: list[tuple[int, list[dict]]] = []  # (step, host sums per member)

    def new_epoch(self) -> None:
        self.epoch_sums = [{} for _ in range(self.members.count)]

    def add(self, first_step: int, metrics: dict, scanned: bool) -> None:
        self.calls.append((first_step, metrics, scanned))

    def count(self, upto: float = float("inf")) -> list[dict]:
        """Each member's sums over the steps up to `upto` not counted yet,
        added to the epoch's; raises NonFiniteLossError at a NaN/inf loss."""
        fetched = jax.device_get([metrics for _, metrics, _ in self.calls])
        for (first, _, scanned), metrics in zip(self.calls, fetched):
            for step, sums in _per_step(first, metrics, scanned):
                per_member = self.members.split(sums)
                for member_sums in per_member:
                    if not np.isfinite(member_sums["loss_sum"]):
                        loss = float(member_sums["loss_sum"]) / max(float(member_sums["count"]), 1)
                        raise NonFiniteLossError(
                            self.nonfinite("the training loss", str(loss), step)
                        )
                self.fetched.append((step, per_member))
        self.calls = []
        window = [sums for step, sums in self.fetched if step <= upto]
        self.fetched = [(step, sums) for step, sums in self.fetched if step > upto]
        parts = []
        for k, epoch in enumerate(self.epoch_sums):
            parts.append(_add({}, [sums[k] for sums in window]))
            _add(epoch, [parts[-1]])
        return parts

    def epoch_means(self, k: int) -> dict:
        return steps.metric_means(self.epoch_sums[k]) if self.epoch_sums[k] else {}

    def mean_loss(self) -> float:
        """The members' mean training loss so far this epoch (the bar shows it)."""
        return float(
            np.mean([self.epoch_means(k).get("loss", np.nan) for k in range(len(self.epoch_sums))])
        )


def _per_step(first_step: int, metrics: dict, scanned: bool) -> list[tuple[int, dict]]:
    """(global step, metric sums) of one fetched step call: one step, or a scan's stacked ones."""
    if not scanned:
        return [(first_step, metrics)]
    count = len(next(iter(metrics.values())))
    return [(first_step + i, {k: v[i] for k, v in metrics.items()}) for i in range(count)]


def _add(total: dict, step_sums: list[dict]) -> dict:
    """Adds the fetched metric sums of some steps into `total` (host floats); returns it."""
    for k in step_sums[0] if step_sums else ():
        total[k] = total.get(k, 0.0) + sum(float(m[k]) for m in step_sums)
    return total


@dataclasses.dataclass
class RunRecord:
    """Where a run stands, as a checkpoint's meta holds it: each member's
    epoch records and best (epoch, step, metric), the training seconds of
    earlier processes; the best states of stacked trials, kept in memory
    (mnist_jax.members.Members.best_to_save); and this process's clock."""

    histories: list[list[dict]]
    bests: list[dict | None]
    seconds_before: float = 0.0
    kept_best: object = None
    started: float = 0.0  # perf_counter() when the first step was called.
    first_step_seconds: float | None = None  # From `started` to the first call's end.

    def add_records(self, records: list[dict], writers: list, step: int) -> None:
        """Each member's epoch record into its history and its TensorBoard run."""
        for history, record, writer in zip(self.histories, records, writers):
            history.append(record)
            writer.scalars(step, _as_scalars(record))

    def improved(self, records: list[dict], policy: CheckpointPolicy) -> list[bool]:
        """Which members' validation improved on their best; their bests become these records."""
        better = [policy.is_better(r, b) for r, b in zip(records, self.bests)]
        for k in (k for k, b in enumerate(better) if b):
            record = records[k]
            self.bests[k] = {
                "epoch": record["epoch"],
                "step": record["step"],
                policy.metric: record[policy.metric],
            }
        return better

    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def time_first_call(self, metrics) -> None:
        jax.block_until_ready(metrics)
        self.first_step_seconds = time.perf_counter() - self.started


def _as_scalars(record: dict) -> dict:
    """A record as TensorBoard tags: "train/loss", "val/accuracy", "learning_rate"."""
    return {
        n.replace("_", "/", 1) if n.startswith(("train_", "val_")) else n: v
        for n, v in record.items()
        if n not in ("epoch", "step")
    }
