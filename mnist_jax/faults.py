"""The faults a training run stops on, and how it tells the user.

- NaN or infinite losses or parameters: `NonFiniteLossError`, naming the
  step and the last good checkpoint (kept intact; nothing later is saved).
- SIGINT and SIGTERM: noted while training (`stop_signals_caught`); the loop
  finishes the current step call, saves a checkpoint and raises
  `TrainingInterrupted`. A second signal gets the previous handler.
"""

from __future__ import annotations

import contextlib
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


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every value of every array in `tree` is finite (one jitted reduction)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def nonfinite_message(what: str, value: str, step: int, steps_per_epoch: int, learning_rate: float,
                      last_saved_path) -> str:
    """What became non-finite where, what is kept, and what to do."""
    kept = (f"The last good checkpoint, step {last_saved_path.name}, is intact in {last_saved_path}."
            if last_saved_path is not None else "No checkpoint had been saved yet.")
    return (f"{what} became {value} at step {step} (epoch {(step - 1) // steps_per_epoch + 1}); "
            f"training stopped and nothing from that step on was saved. {kept} The usual cause is a "
            f"learning rate too high for the model (this run: {learning_rate:g}): start a "
            "new run in another --workdir with a lower --learning-rate.")


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
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.signal(signum, note)
        previous[signum] = signal.SIG_DFL if handler is None else handler
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
