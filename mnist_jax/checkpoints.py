"""Checkpoints with Orbax: the latest N for resuming, the best one apart.

The only module that imports Orbax. Two managers in one run directory:

    <workdir>/checkpoints/latest/<step>/   the newest `max_to_keep`, for --resume
    <workdir>/checkpoints/best/<step>/     the best by validation accuracy

They are kept apart because a manager with `best_fn` and `max_to_keep`
keeps the best N and may delete the newest, breaking resume (orbax #526).
Each checkpoint holds the train state (arrays) and a JSON `meta` item (the
config, history, best score, where in the epoch training stopped).
Restores go against an abstract target so that arrays come back with the
target's structure, dtypes and shardings (orbax #648, #678).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(Exception):
    """No usable checkpoint where one was expected."""


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) mirroring `tree`: a restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class _Manager:
    """One Orbax CheckpointManager saving {state, meta} per step."""

    def __init__(self, directory: pathlib.Path, max_to_keep: int):
        self.directory = directory
        leftovers = sorted(p.name for p in directory.glob(f"*{TMP_MARKER}*")) if directory.is_dir() else []
        if leftovers:
            # A save killed half-way leaves these; they hold nothing complete
            # and can make the next save fail (openpi #566).
            log.warning("Removing incomplete checkpoint folders in %s: %s", directory, leftovers)
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                # "latest" and "best" can save the same step at once; across
                # processes their barriers would then share one name
                # ("_async_write_complete.<step>") and the second one hangs.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=directory.name),
            ),
            item_names=("state", "meta"),
        )

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class RunCheckpoints:
    """The latest-N and best checkpoints of one training run.

    Saves are asynchronous; `close()` (or the context manager) waits for them
    so that errors surface and nothing is lost at exit (orbax #605).
    """

    def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 3):
        root = pathlib.Path(workdir).expanduser().resolve() / "checkpoints"
        self.latest = _Manager(root / "latest", max_to_keep)
        self.best = _Manager(root / "best", 1)

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save_latest(self, step: int, state: Any, meta: dict) -> None:
        self.latest.save(step, state, meta)

    def save_best(self, step: int, state: Any, meta: dict) -> None:
        self.best.save(step, state, meta)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, target: Any) -> tuple[Any, dict]:
        step = self.latest.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.latest.directory} to resume from")
        return self.latest.restore(step, target)

    def restore_best(self, target: Any) -> tuple[Any, dict]:
        self.best.wait()
        step = self.best.latest_step()
        if step is None:
            raise CheckpointError(f"no best checkpoint in {self.best.directory}")
        return self.best.restore(step, target)

    def wait(self) -> None:
        self.latest.wait()
        self.best.wait()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
    """Whether `workdir` already holds a finished checkpoint of a run."""
    latest = pathlib.Path(workdir).expanduser() / "checkpoints" / "latest"
    return latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())
