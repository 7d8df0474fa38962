"""The faults a training run stops on, and how it tells the user.

- NaN or infinite losses or parameters: `NonFiniteLossError`, naming the
  step and the last good checkpoint (kept intact; nothing later is saved).
- SIGINT and SIGTERM: noted while training (`stop_signals_caught`); the loop
  finishes the current step call, saves a checkpoint and raises
  `TrainingInterrupted`. A second signal gets the previous handler.
- A save that fails for want of space, permission or the folder itself:
  `SaveError`, naming the folder, the step and the last good checkpoint
  (`io_failure` tells such errors from others).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import jax
import jax.numpy as jnp


class NonFiniteLossError(FloatingPointError):
    """The training loss or the parameters became NaN or infinite; nothing
    from that step on was saved."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step


class SaveError(OSError):
    """A checkpoint or result could not be written: a full disk, a read-only
    or vanished folder. What was saved before is intact."""


# What to do after a SaveError or any other failed write of a run.
AFTER_FAILED_SAVE = (
    "Free some space (or make the folder writable again), then run the same command with --resume."
)

_IO_FAILURES = (
    "No space left on device",
    "Read-only file system",
    "Permission denied",
    "Disk quota exceeded",
    "No such file or directory",
)


def io_failure(error: BaseException) -> str | None:
    """Why `error` (or an error it was raised from) is a failed write to
    the disk, in a few words ("No space left on device"); None when it is
    not one. Orbax surfaces TensorStore's failures as ValueError with the
    OS's words in the message."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return os.strerror(error.errno)
        found = [reason for reason in _IO_FAILURES if reason in str(error)]
        if found:
            return found[0]
        error = error.__cause__ or error.__context__
    return None


def quiet_background_failures() -> None:
    """Keeps the echoes of a failed asynchronous save off the terminal: when
    Orbax gives up a save it closes its event loop, and TensorStore's
    callbacks then report "Event loop is closed" once per array. The save's
    own error reaches the main thread (SaveError); others pass as before."""
    default = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        default(unraisable)

    sys.unraisablehook = hook


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every value of every array in `tree` is finite (one jitted reduction)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def nonfinite_message(
    what: str, value: str, step: int, steps_per_epoch: int, learning_rate: float, last_saved_path
) -> str:
    """What became non-finite where, what is kept, and what to do.

    Args:
      what: what became non-finite: "the training loss", "the parameters".
      value: what it became, as printed: the loss's value, "NaN or infinite".
      step: the step (from 1) at which it did.
      steps_per_epoch: training steps per epoch, to name the epoch.
      learning_rate: the run's learning rate, named in the advice.
      last_saved_path: the directory of the last checkpoint saved (its
        name is its step); None: none saved yet.

    Returns:
      The error's message, in a few sentences.
    """
    kept = (
        f"The last good checkpoint, step {last_saved_path.name}, is intact in {last_saved_path}."
        if last_saved_path is not None
        else "No checkpoint had been saved yet."
    )
    return (
        f"{what} became {value} at step {step} (epoch {(step - 1) // steps_per_epoch + 1}); "
        f"training stopped and nothing from that step on was saved. {kept} The usual cause is a "
        f"learning rate too high for the model (this run: {learning_rate:g}): start a "
        "new run in another --workdir with a lower --learning-rate."
    )


@contextlib.contextmanager
def stop_signals_caught():
    """While training: SIGINT and SIGTERM are noted (the yielded list of
    signal numbers) for the loop to save a checkpoint and stop; a second
    one gets the previous handler (Ctrl-C twice stops at once)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # Python runs handlers in the main thread only.
        return
    previous = {}

    def note(signum, frame):
        received.append(signum)
        signal.signal(signum, previous[signum])
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.signal(signum, note)
        previous[signum] = signal.SIG_DFL if handler is None else handler
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
