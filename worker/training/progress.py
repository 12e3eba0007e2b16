"""What a run tells while it works: phase changes with their start times, and printed lines.

TensorFlow-free: the trial loop hears the phases (``contract.trial_attrs.PHASES``) through a
callback, and a verbose run prints one line per step to ``out`` (``None``: silent).
"""

from __future__ import annotations

from collections.abc import Callable
import math
import time
from typing import IO

PhaseCallback = Callable[[str], None]

#: What a phase line adds where a new user would otherwise wonder why nothing happens.
PHASE_HINTS = {
    "compiling": ": the first epoch of each new model shape is traced and compiled first, "
    "tens of seconds without output on a CPU",
}


class Clock:
    """Phase changes (told to the caller and printed) and the seconds since the run started."""

    def __init__(self, started: float, out: IO[str] | None, callback: PhaseCallback | None):
        self.started, self.out, self.callback = started, out, callback
        self.timings: dict[str, float] = {}
        self._last = started
        self.current = ""

    def phase(self, name: str) -> None:
        """Announce phase ``name``; the time is when it starts (seconds into the run), not its length."""
        self.current = name
        hint = PHASE_HINTS.get(name, "")
        say(self.out, f"phase: {name} (from {time.perf_counter() - self.started:.1f}s into the trial){hint}")
        if self.callback is not None:
            self.callback(name)

    def mark(self, key: str) -> None:
        """Record the seconds spent since the previous mark under ``key``."""
        now = time.perf_counter()
        self.timings[key] = now - self._last
        self._last = now

    def first_batch(self) -> None:
        self.timings["first_batch_s"] = time.perf_counter() - self.started


def say(out: IO[str] | None, line: str) -> None:
    """Print ``line`` to ``out`` at once (progress is read while the run goes on); ``None``: nothing."""
    if out is not None:
        print(line, file=out, flush=True)


def fmt(value: float) -> str:
    """A score to 4 decimals, or ``nan``."""
    return "nan" if math.isnan(value) else f"{value:.4f}"
