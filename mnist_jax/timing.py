"""Where a command's time goes: `Phases`, the seconds of each named part.

A run records them in metrics.json ("phase_seconds") so that
`python -m experiments.benchmark --overhead` can tell start-up, data,
compilation, training and the work after it apart from the outside.
"""

from __future__ import annotations

import contextlib
import time


class Phases:
    """Seconds per phase, in the order the phases first ran; a phase timed
    twice adds up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
