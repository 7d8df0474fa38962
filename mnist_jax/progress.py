"""An epoch's progress, told honestly: the rate counts training steps only.

On a terminal or in a notebook, `EpochProgress` draws a tqdm bar; when the
output goes to a file or a pipe it draws nothing (the loop prints a line
per epoch instead, so a log holds no carriage-return frames). Checkpoint
saves run inside `paused()`, which takes their time out of the bar's rate
and time left and out of `steps_per_second()`.
"""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm.auto import tqdm


def interactive() -> bool:
    """Whether a bar can redraw in place: a terminal, or a notebook's kernel
    (where tqdm.auto draws its widget)."""
    return sys.stderr.isatty() or _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


class EpochProgress:
    """The steps of one epoch: `update(n)` after each step call."""

    def __init__(self, total: int, initial: int, desc: str, *, enabled: bool):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            leave=False,
            disable=not (enabled and interactive()),
        )
        self.start, self.paused_seconds, self.done = time.perf_counter(), 0.0, 0
        self.end: float | None = None  # Set by close(): the epoch's validation comes after.

    def update(self, steps: int) -> None:
        self.done += steps
        self.bar.update(steps)

    def show_loss(self, loss: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}")

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside is left out of the rate (a checkpoint's save)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            pause = time.perf_counter() - began
            self.paused_seconds += pause
            if not self.bar.disable:  # tqdm's own `unpause` shifts these two the same way.
                self.bar.start_t += pause
                self.bar.last_print_t += pause

    def steps_per_second(self) -> float:
        busy = (self.end or time.perf_counter()) - self.start - self.paused_seconds
        return self.done / max(busy, 1e-9)

    def close(self) -> None:
        self.end = time.perf_counter()
        self.bar.close()
