"""The one epoch loop: steps, logging, validation, checkpoints, faults and signals.

`train_members` trains what its `members` object says (mnist_jax.members:
`Single`, one model, the plain run that `fit` starts; or a sweep's trials
stacked along a leading axis, mnist_jax.trial_group.TrialGroup, which
advance together in one jitted step). Its loop, `_run_epochs`, reads top to
bottom: a call of the step function, its metrics into the run's `Meter`,
then each cadence as one line (the loss logged every `log_every_steps`, a
latest checkpoint every `checkpoint_every_steps` into an epoch, a stop
asked for by SIGINT/SIGTERM), and at the epoch's end each member's
validation record and the checkpoints of the config's `CheckpointPolicy`
("best" before "latest"). Everything else is written once, here or below:

- where the training set lives and how steps are called (mnist_jax.placement:
  one call a step from the host, or `lax.scan` over the steps between two
  checkpoints on the devices), every program compiled before the clock;
- resuming exactly, mid-epoch too; a run without checkpoints (`ckpts=None`,
  the speedrun) and one without validation (`splits.val is None`);
- the faults of mnist_jax.faults: NaN/inf losses and parameters (never
  saved), SIGINT and SIGTERM (a checkpoint, then TrainingInterrupted).
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
from mnist_jax.members import Members, Single
from mnist_jax.optim import current_learning_rate
from mnist_jax.options import RunOptions
from mnist_jax.placement import DeviceSteps, HostSteps, chunks, resolve_data_placement
from mnist_jax.progress import EpochProgress
from mnist_jax.records import Meter, RunRecord

log = logging.getLogger(__name__)


class _Saves:
    """The run's saves by its CheckpointPolicy (none without `ckpts`), and
    what each one needs first: every step's metrics counted (`meter`), the
    parameters finite (a NaN is never saved), the meta to resume from. Keeps
    the newest good latest step and the seconds spent saving."""

    def __init__(self, ckpts, members: Members, run: RunRecord, steps_per_epoch: int):
        self.ckpts, self.members, self.run = ckpts, members, run
        self.policy = CheckpointPolicy.of(members.config)
        self.steps_per_epoch = steps_per_epoch
        self.meter = Meter(members, self.nonfinite)
        self.last_saved: int | None = None
        self.seconds = 0.0  # Starting the (asynchronous) saves, and waiting for them.

    def prepare(self, state, step: int) -> dict:
        """The meta of a save at `step`, once every step's metrics are counted
        and the parameters are known to be finite."""
        self.meter.count()
        if not bool(all_finite(state.params)):
            raise NonFiniteLossError(self.nonfinite("the parameters", "NaN or infinite", step))
        sums = [dict(s) for s in self.meter.epoch_sums]
        return self.members.to_meta(
            self.run.histories, self.run.bests, sums, self.run.train_seconds()
        )

    def best(self, state, step: int, meta: dict, improved: list[bool]) -> None:
        to_save, self.run.kept_best = self.members.best_to_save(self.run.kept_best, state, improved)
        if self.ckpts is not None:
            with self._timed():
                self.ckpts.save_best(step, to_save, meta)

    def latest(self, state, step: int, meta: dict, bar: EpochProgress) -> None:
        if self.ckpts is not None:
            with bar.paused(), self._timed():
                self.ckpts.save_latest(step, state, meta)
            self.last_saved = step

    def stop(self, state, step: int, signum: int, bar: EpochProgress):
        """After SIGINT/SIGTERM: a checkpoint of this step, then TrainingInterrupted."""
        name = signal.Signals(signum).name
        epochs = self.members.config.epochs
        where = f"step {step} (epoch {step / self.steps_per_epoch:.2f} of {epochs})"
        if self.ckpts is None:
            message = f"{name} received: stopped at {where}; this run keeps no checkpoints."
            raise TrainingInterrupted(message, signum, step)
        if self.last_saved != step:
            self.latest(state, step, self.prepare(state, step), bar)
        self.wait()
        raise TrainingInterrupted(
            f"{name} received: stopped at {where} after saving checkpoint "
            f"{self.ckpts.latest.directory / str(step)}; run again with --resume to continue.",
            signum,
            step,
        )

    def wait(self) -> None:
        if self.ckpts is not None:
            with self._timed():
                self.ckpts.wait()

    @contextlib.contextmanager
    def _timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def nonfinite(self, what: str, value: str, step: int) -> str:
        saved = self.last_saved
        path = None if saved is None else self.ckpts.latest.directory / str(saved)
        rate = self.members.config.learning_rate
        return nonfinite_message(what, value, step, self.steps_per_epoch, rate, path)


def _run_epochs(
    state,
    saves: _Saves,
    runner,
    splits: Splits,
    validate,
    writers: list,
    options: RunOptions,
    stop_signals: list[int],
):
    """The epochs from the state's step to config.epochs; returns the final state."""
    members, run, meter, policy = saves.members, saves.run, saves.meter, saves.policy
    config, steps_per_epoch, step = members.config, saves.steps_per_epoch, global_step(state)
    for epoch in range(step // steps_per_epoch, config.epochs):
        indices, masks = members.epoch_batches(epoch, len(splits.train))  # (steps, [K,] B) each
        title = f"epoch {epoch + 1}/{config.epochs}"
        bar = EpochProgress(
            steps_per_epoch, step % steps_per_epoch, title, enabled=options.progress
        )
        for begin, end in chunks(step % steps_per_epoch, steps_per_epoch, runner.chunk_length):
            first, step = step, epoch * steps_per_epoch + end
            state, metrics = runner(state, indices, masks, begin, end)
            meter.add(first + 1, metrics, scanned=runner.name == "device")
            if run.first_step_seconds is None:
                run.time_first_call(metrics)
            last = end == steps_per_epoch  # At the epoch's end, its validation comes first.
            for log_step in _log_steps(first, step, config.log_every_steps, last):
                _log_losses(log_step, meter, writers, bar)
            if not last and end % policy.every_steps == 0:
                saves.latest(state, step, saves.prepare(state, step), bar)
            bar.update(end - begin)
            if options.on_step is not None:
                options.on_step(step)
            if not last and stop_signals:
                saves.stop(state, step, stop_signals[0], bar)
        bar.close()
        records = [
            _record(members.member(state, k), epoch, step, meter.epoch_means(k), validate)
            for k in range(members.count)
        ]
        meter.new_epoch()
        run.add_records(records, writers, step)
        print(
            f"{members.epoch_line(epoch, records)}  ({bar.steps_per_second():.1f} steps/s)",
            flush=True,
        )
        improved = run.improved(records, policy) if validate else [False] * members.count
        meta = saves.prepare(state, step)
        if any(improved):  # "best" before "latest" (CheckpointPolicy).
            saves.best(state, step, meta, improved)
        saves.latest(state, step, meta, bar)
        if stop_signals:
            saves.stop(state, step, stop_signals[0], bar)
    return state


def _log_steps(first: int, step: int, every: int, epoch_end: bool) -> list[int]:
    """The log steps among (first, step]: the multiples of `every`, and the epoch's last step."""
    due = [s for s in range(first + 1, step + 1) if s % every == 0]
    return due + [step] if epoch_end and step not in due else due


def _log_losses(step: int, meter: Meter, writers: list, bar: EpochProgress) -> None:
    """Each member's mean loss over the steps since its last log; the bar's loss so far."""
    for writer, part in zip(writers, meter.count(step)):
        writer.scalars(
            step, {"train/loss_step": part.get("loss_sum", 0.0) / max(part.get("count", 0.0), 1)}
        )
    bar.show_loss(meter.mean_loss())


def _record(state, epoch: int, step: int, train: dict, validate) -> dict:
    """A member's record of the epoch: its train means, its validation
    ("val_raw_*" too with a moving average: the raw weights beside it),
    its learning rate."""
    record = {"epoch": epoch + 1, "step": step, **{f"train_{n}": v for n, v in train.items()}}
    evaluated = {"val": steps.averaged(state), **({"val_raw": state} if state.ema else {})}
    for prefix, weights in evaluated.items() if validate is not None else ():
        record.update(
            {f"{prefix}_{n}": v for n, v in validate(weights).items() if n != "predictions"}
        )
    record["learning_rate"] = current_learning_rate(state.opt_state)
    return record


def global_step(state) -> int:
    """The step a state is at (a stacked state's members all are at one step)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def train_members(
    members: Members,
    splits: Splits,
    ckpts: checkpoints.RunCheckpoints | None,
    writers: list[summaries.MetricWriter],
    options: RunOptions = RunOptions(),
) -> dict:
    """Trains `members` for members.config.epochs.

    Args:
      members: what trains: members.Single (one model), or a sweep's
        trial_group.TrialGroup.
      splits: the data; without a validation split (`splits.val` None) no
        best checkpoint is kept.
      ckpts: where CheckpointPolicy.of(config) saves; None: nowhere.
      writers: one MetricWriter per member.
      options: `resume`, `progress`, `mesh` and `on_step` are read here.

    Returns:
      {"state", "histories", "bests" (one per member), "train_seconds",
      "compile_seconds", "first_step_seconds", "init_seconds",
      "checkpoint_seconds", "data_placement"}: train_seconds leaves out
      compile_seconds, the ahead-of-time compilation of the train programs
      and the evaluation step, and init_seconds, the initial state's; it
      includes checkpoint_seconds, spent starting the (asynchronous)
      checkpoint saves and waiting for the last.
    """
    config, mesh = members.config, options.mesh or parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "training batch size")
    resume = _resuming(options.resume, ckpts)
    steps_per_epoch = pipeline.num_batches(len(splits.train), config.batch_size)
    start = time.perf_counter()
    sample = jnp.zeros((1, *splits.train.images.shape[1:]), jnp.float32)
    # Replicated before any restore: Orbax restores into the target's shardings.
    state = jax.block_until_ready(
        parallel.replicate(members.initial_state(steps_per_epoch, sample), mesh)
    )
    init_seconds = time.perf_counter() - start
    run = RunRecord([[] for _ in range(members.count)], [None] * members.count)
    saves = _Saves(ckpts, members, run, steps_per_epoch)
    if resume:
        state = _resume(state, saves)
    validate = _validator(splits.val, config, mesh)
    runner, compile_seconds = _compile(members, splits, state, steps_per_epoch, validate, mesh)
    run.started = time.perf_counter()
    with stop_signals_caught() as stop_signals:
        state = _run_epochs(state, saves, runner, splits, validate, writers, options, stop_signals)
    saves.wait()
    jax.block_until_ready(state)
    return {
        "state": state,
        "histories": run.histories,
        "bests": run.bests,
        "train_seconds": run.train_seconds(),
        "compile_seconds": compile_seconds,
        "first_step_seconds": run.first_step_seconds,
        "init_seconds": init_seconds,
        "checkpoint_seconds": saves.seconds,
        "data_placement": runner.name,
    }


def _resuming(resume: bool, ckpts: checkpoints.RunCheckpoints | None) -> bool:
    """Whether to resume: a run killed before its first checkpoint starts
    again (the command a preemptible machine repeats must still work);
    ResumeError where this run keeps no checkpoints (before the state's
    initialisation, which takes a while)."""
    if resume and ckpts is None:
        raise ResumeError("--resume: this run keeps no checkpoints to resume from.")
    if resume and ckpts.latest_step() is None:
        print(
            f"--resume: nothing saved in {ckpts.latest.directory} yet; starting from the beginning",
            flush=True,
        )
        return False
    return resume


def _resume(state, saves: _Saves):
    """The newest readable latest checkpoint (damaged newer ones set aside),
    and where the run stood then."""
    try:
        state, saved = saves.ckpts.restore_latest(state)
    except checkpoints.CheckpointError as e:
        raise ResumeError(f"--resume: {e}") from e
    run = saves.run
    run.histories, run.bests, saves.meter.epoch_sums, run.seconds_before = saves.members.from_meta(
        saved
    )
    if saves.members.count > 1 and any(b is not None for b in run.bests):
        run.kept_best, _ = saves.ckpts.restore_best(state)
    saves.last_saved = global_step(state)
    log.info("Resumed at step %d", saves.last_saved)
    return state


def _validator(val, config: TrainConfig, mesh) -> Callable | None:
    """weights -> the validation split's scores; None without a validation split."""
    if val is None:
        return None
    spec = config.step_config()
    return lambda state: steps.evaluate(state, val, config.eval_batch_size, spec, mesh)


def _compile(members: Members, splits: Splits, state, steps_per_epoch: int, validate, mesh):
    """The data placement's runner, with every program the run will call
    compiled (the evaluation step and the finiteness check too); returns
    (runner, the seconds it took)."""
    config = members.config
    placement = resolve_data_placement(config, splits.train, mesh)
    runner = (DeviceSteps if placement == "device" else HostSteps)(
        members, config.step_config(), mesh, splits.train
    )
    print(f"training data on the {placement}: {runner.description}", flush=True)
    runner.compile(state, global_step(state), steps_per_epoch)
    start = (
        time.perf_counter()
    )  # The eval step (one example padded to a full batch), the finite check.
    probe = splits.val if splits.val is not None else splits.test
    steps.evaluate(
        members.member(state, 0),
        probe.take(np.arange(1)),
        config.eval_batch_size,
        config.step_config(),
        mesh,
    )
    all_finite(state.params).block_until_ready()
    return runner, runner.program.seconds + time.perf_counter() - start


def fit(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    ckpts: checkpoints.RunCheckpoints | None = None,
    writer: summaries.MetricWriter | None = None,
    options: RunOptions = RunOptions(),
) -> dict:
    """Trains one model: train_members with members.Single.

    Args:
      config: the run's settings.
      model: the linen module to train (models.get_model).
      splits: train, val (None: no best checkpoint) and test (unused here).
      ckpts: where CheckpointPolicy.of(config) saves; None: nowhere.
      writer: the TensorBoard writer; None: nothing logged.
      options: `resume`, `progress`, `mesh`, `on_step` and `pretrained`.

    Returns:
      {"state", "history", "best", "train_seconds", "compile_seconds",
      "first_step_seconds", "init_seconds", "checkpoint_seconds",
      "data_placement"} (see train_members).
    """
    writer = writer or summaries.MetricWriter(".", enabled=False)
    members = Single(config, model, options.pretrained)
    result = train_members(members, splits, ckpts, [writer], options)
    histories, bests = result.pop("histories"), result.pop("bests")
    return {"state": result.pop("state"), "history": histories[0], "best": bests[0], **result}
