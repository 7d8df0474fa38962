"""Checkpoints with Orbax: the policy, the latest N for resuming, the best apart.

The only module that imports Orbax. `CheckpointPolicy` says when a run
saves, how many it keeps and which is the best; every training loop
follows it. Two managers in one run directory:

    <workdir>/checkpoints/latest/<step>/   the newest `keep_latest`, for --resume
    <workdir>/checkpoints/best/<step>/     the best `keep_best` by the validation metric

They are kept apart because a manager with `best_fn` and `max_to_keep`
keeps the best N and may delete the newest, breaking resume (orbax #526).
Each checkpoint holds the train state (arrays) and a JSON `meta` item (the
config, history, best score, where in the epoch training stopped).
Restores go against an abstract target so that arrays come back with the
target's structure, dtypes and shardings (orbax #648, #678).

A checkpoint that cannot be read back (files missing, truncated or garbled)
is moved to `<workdir>/checkpoints/damaged/` with a warning, and the restore
falls back to the next older one: nothing is deleted, and the step can be
saved again by the resumed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from mnist_jax.faults import AFTER_FAILED_SAVE, SaveError, io_failure

log = logging.getLogger(__name__)

TMP_MARKER = ".orbax-checkpoint-tmp"
DAMAGED_DIR = "damaged"


class CheckpointError(Exception):
    """No usable checkpoint where one was expected."""


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) mirroring `tree`: a restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """When a run saves, what it keeps, and which checkpoint is the best.

    A latest checkpoint every `every_steps` steps into an epoch and at its
    end (the newest `keep_latest` kept, for --resume); at an epoch's end,
    a best checkpoint when `metric` improved (`mode` "max" or "min"; the
    best `keep_best` kept). "best" is saved before "latest": a run killed
    between the two replays the epoch from an older latest and finds this
    best saved already.
    """

    every_steps: int
    keep_latest: int
    keep_best: int
    metric: str  # A validation record's key, e.g. "val_accuracy".
    mode: str  # "max" or "min".

    @classmethod
    def of(cls, config) -> CheckpointPolicy:
        """The policy of a TrainConfig (its checkpoint fields and its task's selection)."""
        metric, mode = config.step_config().selection
        return cls(
            config.checkpoint_every_steps, config.keep_checkpoints, config.keep_best, metric, mode
        )

    def is_better(self, record: dict, best: dict | None) -> bool:
        if best is None:
            return True
        value = record[self.metric]
        return value > best[self.metric] if self.mode == "max" else value < best[self.metric]

    def open(self, workdir: str | pathlib.Path) -> RunCheckpoints:
        """The run's checkpoint managers, keeping what this policy keeps."""
        return RunCheckpoints(workdir, keep_latest=self.keep_latest, keep_best=self.keep_best)


class _Manager:
    """One Orbax CheckpointManager saving {state, meta} per step."""

    def __init__(self, directory: pathlib.Path, max_to_keep: int):
        self.directory = directory
        leftovers = (
            sorted(p.name for p in directory.glob(f"*{TMP_MARKER}*")) if directory.is_dir() else []
        )
        if leftovers:
            # A save killed half-way leaves these; they hold nothing complete
            # and can make the next save fail (openpi #566).
            log.warning("Removing incomplete checkpoint folders in %s: %s", directory, leftovers)
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                cleanup_tmp_directories=True,
                # "latest" and "best" can save the same step at once; across
                # processes their barriers would then share one name
                # ("_async_write_complete.<step>") and the second one hangs.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=directory.name
                ),
            ),
            item_names=("state", "meta"),
        )

    def save(self, step: int, state: Any, meta: dict) -> None:
        if step in self.manager.all_steps():
            # A resumed run replays the steps after its checkpoint exactly;
            # this step was saved before the process died (e.g. "best" saved,
            # "latest" not yet): the same state is already on disk.
            log.info("Checkpoint %s/%d exists already; kept as it is", self.directory, step)
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(target)), meta=ocp.args.JsonRestore()
            ),
        )
        return restored.state, dict(restored.meta)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_newest_good(self, target: Any) -> tuple[Any, dict, int]:
        """(state, meta, step) of the newest checkpoint that reads back.

        Damaged newer ones are moved aside (`set_aside`) with a warning.
        Raises CheckpointError when there is none, or none is readable.
        """
        self.wait()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        for step in steps:
            try:
                state, meta = self.restore(step, target)
                return state, meta, step
            # Orbax, TensorStore and json raise many kinds of error for
            # missing, truncated or garbled files, and ValueError for a
            # target that does not fit: read back as stored to tell them apart.
            except Exception as e:  # noqa: BLE001
                if self.readable(step):
                    raise CheckpointError(
                        f"checkpoint {self.directory / str(step)} holds another model or "
                        f"optimizer than the one asked for ({type(e).__name__}: {_first_line(e)})"
                    ) from e
                moved = self.set_aside(step)
                log.warning(
                    "Checkpoint %s is damaged and cannot be restored (%s: %s); moved it to %s "
                    "and falling back to the one before it.",
                    self.directory / str(step),
                    type(e).__name__,
                    _first_line(e),
                    moved,
                )
        raise CheckpointError(
            f"every checkpoint in {self.directory} is damaged (steps {sorted(steps)}, now in "
            f"{self.directory.parent / DAMAGED_DIR}); start a new run in another --workdir."
        )

    def readable(self, step: int) -> bool:
        """Whether the checkpoint of `step` reads back as stored (no target)."""
        try:
            self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                ),
            )
            return True
        except Exception:  # noqa: BLE001 (see restore_newest_good)
            return False

    def set_aside(self, step: int) -> pathlib.Path:
        """Moves the folder of `step` into checkpoints/damaged/ (kept for a
        look, out of the manager's way); returns where it went."""
        source = self.directory / str(step)
        damaged = self.directory.parent / DAMAGED_DIR
        damaged.mkdir(exist_ok=True)  # Every process: all of them look for a free name.
        target = damaged / f"{self.directory.name}-{step}"
        for n in itertools.count(1):
            if not target.exists():
                break
            target = damaged / f"{self.directory.name}-{step}.{n}"
        if jax.process_index() == 0:  # One process moves it; the folder is shared.
            try:
                source.rename(target)
            except OSError as e:
                log.warning("Could not move %s aside (%s); left where it is.", source, e)
                return source
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class RunCheckpoints:
    """The latest-N and best checkpoints of one training run.

    Saves are asynchronous; `close()` (or the context manager) waits for them
    so that errors surface and nothing is lost at exit (orbax #605).
    """

    def __init__(self, workdir: str | pathlib.Path, *, keep_latest: int = 3, keep_best: int = 1):
        root = pathlib.Path(workdir).expanduser().resolve() / "checkpoints"
        self.latest = _Manager(root / "latest", keep_latest)
        self.best = _Manager(root / "best", keep_best)

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # Already failing: the first error is the one to tell.
            self.close()
        except Exception:  # noqa: BLE001
            log.debug("Closing the checkpoint managers after an error failed too", exc_info=True)

    def save_latest(self, step: int, state: Any, meta: dict) -> None:
        with self._saving(step):
            self.latest.save(step, state, meta)

    def save_best(self, step: int, state: Any, meta: dict) -> None:
        with self._saving(step):
            self.best.save(step, state, meta)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, target: Any) -> tuple[Any, dict]:
        """The newest readable latest checkpoint (damaged newer ones set aside)."""
        state, meta, _ = self.latest.restore_newest_good(target)
        return state, meta

    def restore_best(self, target: Any) -> tuple[Any, dict]:
        state, meta, _ = self.best.restore_newest_good(target)
        return state, meta

    def wait(self) -> None:
        with self._saving(None):
            self.latest.wait()
            self.best.wait()

    def close(self) -> None:
        with self._saving(None):
            self.latest.close()
            self.best.close()

    @contextlib.contextmanager
    def _saving(self, step: int | None):
        """Turns a save that failed on the disk (asynchronous ones surface at
        the next save or wait) into a SaveError saying what is intact."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 (Orbax raises many kinds; io_failure tells)
            reason = io_failure(e)
            if reason is None:
                raise
            raise SaveError(self.save_failed(step, reason)) from e

    def save_failed(self, step: int | None, reason: str) -> str:
        what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
        good = None
        with contextlib.suppress(
            Exception
        ):  # Saves still in flight may succeed; the folder may be gone.
            self.latest.manager.wait_until_finished()
        with contextlib.suppress(Exception):
            self.latest.manager.reload()
            good = self.latest.latest_step()
        if not self.latest.directory.is_dir():
            intact = f"{self.latest.directory} no longer exists, nor what was saved there"
        elif good is None:
            intact = "no checkpoint was saved before it"
        else:
            intact = (
                f"the last good checkpoint, step {good}, is intact in "
                f"{self.latest.directory / str(good)}"
            )
        return (
            f"could not save {what} in {self.latest.directory.parent} ({reason}); {intact}. "
            f"{AFTER_FAILED_SAVE}"
        )


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
    """Whether `workdir` already holds a finished checkpoint of a run."""
    latest = pathlib.Path(workdir).expanduser() / "checkpoints" / "latest"
    return latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())
