"""The one epoch loop: steps, logging, validation, checkpoints, faults and signals.

`train_members` trains what its `members` object says: `Single` (one model
from one config, the plain run that `fit` starts) or a sweep's trials
stacked along a leading axis (mnist_jax.trial_group.TrialGroup), which advance
together in one jitted step. Everything else is written once, here:

- where the training set lives and how steps are called (mnist_jax.placement:
  one call a step from the host, or `lax.scan` over the steps between two
  checkpoints on the devices), every program compiled before the clock;
- per-step losses logged every `log_every_steps`, each member's validation
  record at every epoch's end;
- checkpoints by the config's `CheckpointPolicy` ("best" before "latest"),
  resumed exactly, mid-epoch too; a run without checkpoints (`ckpts=None`,
  the speedrun) and one without validation (`splits.val is None`) too;
- the faults of mnist_jax.faults: NaN/inf losses and parameters, SIGINT and
  SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import checkpoints, parallel, pipeline, steps, summaries
from mnist_jax.checkpoints import CheckpointPolicy
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.data import Splits
from mnist_jax.faults import (
    NonFiniteLossError,
    TrainingInterrupted,
    all_finite,
    nonfinite_message,
    stop_signals_caught,
)
from mnist_jax.members import Single
from mnist_jax.optim import current_learning_rate
from mnist_jax.placement import DeviceSteps, HostSteps, chunks, resolve_data_placement
from mnist_jax.progress import EpochProgress

log = logging.getLogger(__name__)


def _check_can_resume(ckpts: checkpoints.RunCheckpoints | None) -> None:
    if ckpts is None or ckpts.latest_step() is None:
        where = (
            "this run keeps no checkpoints"
            if ckpts is None
            else f"no checkpoint in {ckpts.latest.directory}"
        )
        raise ResumeError(f"--resume: {where} to resume from.")


def global_step(state) -> int:
    """The step a state is at (a stacked state's members all are at one step)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _per_step(first_step: int, metrics: dict, stacked_steps: bool) -> list[tuple[int, dict]]:
    """(global step, metric sums) of one fetched step call: one step, or a scan's stacked ones."""
    if not stacked_steps:
        return [(first_step, metrics)]
    count = len(next(iter(metrics.values())))
    return [(first_step + i, {k: v[i] for k, v in metrics.items()}) for i in range(count)]


def _add(total: dict, step_sums: list[dict]) -> None:
    """Adds the fetched metric sums of some steps into `total` (host floats)."""
    for k in step_sums[0] if step_sums else ():
        total[k] = total.get(k, 0.0) + sum(float(m[k]) for m in step_sums)


class _Loop:
    """One call of `train_members`: the state and where the run stands. Each
    method is one part of an epoch; `train_members` calls them in order."""

    def __init__(
        self,
        members,
        splits: Splits,
        ckpts: checkpoints.RunCheckpoints | None,
        writers: list,
        mesh,
        *,
        progress: bool,
        on_step: Callable[[int], None] | None,
    ):
        self.members, self.config = members, members.config
        self.splits, self.ckpts, self.writers, self.mesh = splits, ckpts, writers, mesh
        self.progress, self.on_step = progress, on_step
        self.spec = self.config.step_config()
        self.policy = CheckpointPolicy.of(self.config)
        self.steps_per_epoch = pipeline.num_batches(len(splits.train), self.config.batch_size)
        sample = jnp.zeros((1, *splits.train.images.shape[1:]), jnp.float32)
        start = time.perf_counter()
        # Replicated before any restore: Orbax restores into the target's shardings.
        self.state = parallel.replicate(members.initial_state(self.steps_per_epoch, sample), mesh)
        jax.block_until_ready(self.state)
        self.init_seconds = time.perf_counter() - start
        self.save_seconds = 0.0  # In the checkpoint saves (asynchronous: their start) and waits.
        count = members.count
        self.histories, self.bests, self.sums = (
            [[] for _ in range(count)],
            [None] * count,
            [{} for _ in range(count)],
        )
        self.elapsed_before = 0.0
        self.kept_best = None  # What the members keep of their best states (stacked trials).
        self.last_saved: int | None = None  # The newest good latest checkpoint.
        self.stop_signals: list[int] = []
        self.pending: list[tuple[int, dict, bool]] = []  # (first step, device-side sums, scanned)
        self.unlogged: list[tuple[int, list[dict]]] = []  # (step, host-side sums per member)
        self.first_step_seconds = None
        self.bar: EpochProgress | None = None  # The epoch's progress, from its first step.

    def resume(self) -> None:
        """Continues from the newest readable latest checkpoint, exactly where it stopped."""
        _check_can_resume(self.ckpts)
        try:
            self.state, saved = self.ckpts.restore_latest(
                self.state
            )  # Damaged newer ones set aside.
        except checkpoints.CheckpointError as e:
            raise ResumeError(f"--resume: {e}") from e
        self.histories, self.bests, self.sums, self.elapsed_before = self.members.from_meta(saved)
        if self.members.count > 1 and any(b is not None for b in self.bests):
            self.kept_best, _ = self.ckpts.restore_best(self.state)
        self.last_saved = global_step(self.state)
        log.info("Resumed at step %d", self.last_saved)

    def compile(self) -> float:
        """Picks the data placement and compiles every program the run will
        call (the evaluation step too); returns the seconds it took."""
        placement = resolve_data_placement(self.config, self.splits.train, self.mesh)
        runner = DeviceSteps if placement == "device" else HostSteps
        self.runner = runner(self.members, self.spec, self.mesh, self.splits.train)
        print(f"training data on the {placement}: {self.runner.description}", flush=True)
        self.runner.compile(self.state, global_step(self.state), self.steps_per_epoch)
        start = (
            time.perf_counter()
        )  # The eval step (one example padded to a full batch), the finite check.
        probe = self.splits.val if self.splits.val is not None else self.splits.test
        steps.evaluate(
            self.members.member(self.state, 0),
            probe.take(np.arange(1)),
            self.config.eval_batch_size,
            self.spec,
            self.mesh,
        )
        all_finite(self.state.params).block_until_ready()
        return self.runner.program.seconds + time.perf_counter() - start

    def start_clock(self) -> None:
        self.clock = time.perf_counter()

    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock

    def meta(self) -> dict:
        return self.members.to_meta(
            self.histories, self.bests, [dict(s) for s in self.sums], self.seconds()
        )

    def train_epoch(self, epoch: int, start: int) -> int:
        """The epoch's steps from `start` (a global step); returns the step it ends at."""
        epoch_start = epoch * self.steps_per_epoch
        offset = start - epoch_start if epoch == start // self.steps_per_epoch else 0
        indices, masks = self.members.epoch_batches(
            epoch, len(self.splits.train)
        )  # (steps, [K,] B) each
        self.bar = bar = EpochProgress(
            self.steps_per_epoch,
            offset,
            f"epoch {epoch + 1}/{self.config.epochs}",
            enabled=self.progress,
        )
        for begin, end in chunks(offset, self.steps_per_epoch, self.runner.chunk_length):
            self.state, step_metrics = self.runner(self.state, indices, masks, begin, end)
            self.pending.append(
                (epoch_start + begin + 1, step_metrics, self.runner.name == "device")
            )
            if self.first_step_seconds is None:
                jax.block_until_ready(step_metrics)
                self.first_step_seconds = time.perf_counter() - self.clock
            self.after_steps(epoch_start + begin, epoch_start + end, end == self.steps_per_epoch)
            bar.update(end - begin)
            if self.on_step is not None:
                self.on_step(epoch_start + end)
            if end != self.steps_per_epoch:  # At the end, after the epoch's validation.
                self.stop_if_asked(epoch_start + end)
        bar.close()
        return epoch_start + self.steps_per_epoch

    def after_steps(self, first: int, step: int, end_of_epoch: bool) -> None:
        """Logs the steps (first, step] that reach a log step; a mid-epoch checkpoint if due."""
        log_steps = [s for s in range(first + 1, step + 1) if s % self.config.log_every_steps == 0]
        if end_of_epoch and step not in log_steps:
            log_steps.append(step)
        if log_steps:
            self.fetch_pending()
            for log_step in log_steps:
                window = [sums for s, sums in self.unlogged if s <= log_step]
                self.unlogged = [(s, sums) for s, sums in self.unlogged if s > log_step]
                for k, writer in enumerate(self.writers):
                    part: dict = {}
                    _add(part, [sums[k] for sums in window])
                    _add(self.sums[k], [part])
                    writer.scalars(
                        log_step,
                        {
                            "train/loss_step": part.get("loss_sum", 0.0)
                            / max(part.get("count", 0.0), 1)
                        },
                    )
            losses = [
                steps.metric_means(s).get("loss", float("nan")) if s else float("nan")
                for s in self.sums
            ]
            self.bar.show_loss(float(np.mean(losses)))
        if (step % self.steps_per_epoch) % self.policy.every_steps == 0 and not end_of_epoch:
            self.save_latest(step)

    def end_epoch(self, epoch: int, step: int) -> None:
        """Each member's validation and record, then the best and latest checkpoints."""
        records = [self.record(epoch, step, k) for k in range(self.members.count)]
        print(
            f"{self.members.epoch_line(epoch, records)}  ({self.bar.steps_per_second():.1f} steps/s)",
            flush=True,
        )
        self.prepare_save(step)
        improved = [
            self.splits.val is not None and self.policy.is_better(r, b)
            for r, b in zip(records, self.bests)
        ]
        for k, better in enumerate(improved):  # "best" before "latest" (CheckpointPolicy).
            if better:
                self.bests[k] = {
                    "epoch": epoch + 1,
                    "step": step,
                    self.policy.metric: records[k][self.policy.metric],
                }
        if any(improved):
            to_save, self.kept_best = self.members.best_to_save(
                self.kept_best, self.state, improved
            )
            if self.ckpts is not None:
                with self.saving():
                    self.ckpts.save_best(step, to_save, self.meta())
        self.save_latest(step)
        self.stop_if_asked(step)

    def record(self, epoch: int, step: int, k: int) -> dict:
        """Member k's record of the epoch: train means, validation ("val_raw_*" too with a moving
        average: the raw weights beside it), learning rate; logged."""
        state = self.members.member(self.state, k)
        train = steps.metric_means(self.sums[k]) if self.sums[k] else {}
        record = {"epoch": epoch + 1, "step": step, **{f"train_{n}": v for n, v in train.items()}}
        evaluated = {"val": steps.averaged(state), **({"val_raw": state} if state.ema else {})}
        for prefix, weights in evaluated.items() if self.splits.val is not None else ():
            val = steps.evaluate(
                weights, self.splits.val, self.config.eval_batch_size, self.spec, self.mesh
            )
            record.update({f"{prefix}_{n}": v for n, v in val.items() if n != "predictions"})
        record["learning_rate"] = current_learning_rate(state.opt_state)
        self.histories[k].append(record)
        self.sums[k] = {}
        self.writers[k].scalars(
            step,
            {
                n.replace("_", "/", 1) if n.startswith(("train_", "val_")) else n: v
                for n, v in record.items()
                if n not in ("epoch", "step")
            },
        )
        return record

    def fetch_pending(self) -> None:
        """Brings the steps' metric sums to the host; checks their losses are finite."""
        fetched = jax.device_get([p[1] for p in self.pending])
        for (first, _, scanned), metrics in zip(self.pending, fetched):
            for step, sums in _per_step(first, metrics, scanned):
                per_member = self.members.split(sums)
                for member_sums in per_member:
                    if not np.isfinite(member_sums["loss_sum"]):
                        loss = float(member_sums["loss_sum"]) / max(
                            float(member_sums["count"]), 1.0
                        )
                        raise NonFiniteLossError(
                            self.nonfinite("the training loss", str(loss), step)
                        )
                self.unlogged.append((step, per_member))
        self.pending = []

    def prepare_save(self, step: int) -> None:
        """Fetches every step's metrics into the epoch's sums; raises
        NonFiniteLossError unless the losses and parameters are finite."""
        self.fetch_pending()
        for k in range(self.members.count):
            _add(self.sums[k], [sums[k] for _, sums in self.unlogged])
        self.unlogged = []
        if not bool(all_finite(self.state.params)):
            raise NonFiniteLossError(self.nonfinite("the parameters", "NaN or infinite", step))

    def save_latest(self, step: int) -> None:
        self.prepare_save(step)
        if self.ckpts is not None:
            with self.bar.paused(), self.saving():
                self.ckpts.save_latest(step, self.state, self.meta())
            self.last_saved = step

    @contextlib.contextmanager
    def saving(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.save_seconds += time.perf_counter() - start

    def stop_if_asked(self, step: int) -> None:
        """After SIGINT/SIGTERM: a checkpoint of this step, then TrainingInterrupted."""
        if not self.stop_signals:
            return
        name = signal.Signals(self.stop_signals[0]).name
        where = f"epoch {step / self.steps_per_epoch:.2f} of {self.config.epochs}"
        if self.ckpts is None:
            raise TrainingInterrupted(
                f"{name} received: stopped at step {step} ({where}); this run keeps no "
                "checkpoints.",
                self.stop_signals[0],
                step,
            )
        if self.last_saved != step:
            self.save_latest(step)
        self.ckpts.wait()
        raise TrainingInterrupted(
            f"{name} received: stopped at step {step} ({where}) after saving checkpoint "
            f"{self.ckpts.latest.directory / str(step)}; run again with --resume to continue.",
            self.stop_signals[0],
            step,
        )

    def nonfinite(self, what: str, value: str, step: int) -> str:
        saved = (
            None if self.last_saved is None else self.ckpts.latest.directory / str(self.last_saved)
        )
        return nonfinite_message(
            what, value, step, self.steps_per_epoch, self.config.learning_rate, saved
        )


def train_members(
    members,
    splits: Splits,
    ckpts: checkpoints.RunCheckpoints | None,
    writers: list[summaries.MetricWriter],
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Trains `members` (Single, or a sweep's TrialGroup) for members.config.epochs.

    writers: one MetricWriter per member. on_step: called with the global
    step after each call of the step function (every step with the data on
    the host, every scan with it on the device; tests interrupt runs there).

    Returns {"state", "histories", "bests" (one per member), "train_seconds",
    "compile_seconds", "first_step_seconds", "init_seconds",
    "checkpoint_seconds", "data_placement"}: train_seconds leaves out
    compile_seconds, the ahead-of-time compilation of the train programs and
    the evaluation step, and init_seconds, the initial state's; it includes
    checkpoint_seconds, spent starting the (asynchronous) checkpoint saves
    and waiting for the last.
    """
    mesh = mesh or parallel.data_mesh()
    parallel.check_batch_size(members.config.batch_size, mesh, "training batch size")
    if resume and ckpts is not None and ckpts.latest_step() is None:
        # Killed before its first checkpoint: the command a preemptible
        # machine repeats must still work.
        print(
            f"--resume: nothing saved in {ckpts.latest.directory} yet; starting from the beginning",
            flush=True,
        )
        resume = False
    if resume:
        _check_can_resume(ckpts)  # Before the state's initialisation, which takes a while.
    run = _Loop(members, splits, ckpts, writers, mesh, progress=progress, on_step=on_step)
    if resume:
        run.resume()
    compile_seconds = run.compile()
    start = global_step(run.state)
    run.start_clock()
    with stop_signals_caught() as run.stop_signals:
        for epoch in range(start // run.steps_per_epoch, members.config.epochs):
            step = run.train_epoch(epoch, start)
            run.end_epoch(epoch, step)
    if ckpts is not None:
        with run.saving():
            ckpts.wait()
    jax.block_until_ready(run.state)
    return {
        "state": run.state,
        "histories": run.histories,
        "bests": run.bests,
        "train_seconds": run.seconds(),
        "compile_seconds": compile_seconds,
        "first_step_seconds": run.first_step_seconds,
        "init_seconds": run.init_seconds,
        "checkpoint_seconds": run.save_seconds,
        "data_placement": run.runner.name,
    }


def fit(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    ckpts: checkpoints.RunCheckpoints | None,
    writer: summaries.MetricWriter | None = None,
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    pretrained: dict | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Trains one model (train_members with `Single`), checkpoints by
    CheckpointPolicy.of(config) into `ckpts` (None: none).

    pretrained: top-level parameter groups to start from (see
    `steps.load_pretrained`); ignored on resume, where the checkpoint has them.

    Returns {"state", "history", "best", "train_seconds", "compile_seconds",
    "first_step_seconds", "init_seconds", "checkpoint_seconds",
    "data_placement"} (see train_members).
    """
    writer = writer or summaries.MetricWriter(".", enabled=False)
    result = train_members(
        Single(config, model, pretrained),
        splits,
        ckpts,
        [writer],
        resume=resume,
        on_step=on_step,
        progress=progress,
        mesh=mesh,
    )
    histories, bests = result.pop("histories"), result.pop("bests")
    return {"state": result.pop("state"), "history": histories[0], "best": bests[0], **result}
