"""SIGTERM/SIGINT in a worker: stop before the next trial, or interrupt the training one.

A stopping container (compose, systemd, Slurm) sends SIGTERM and waits only a short while; a
trial must then be failed and queued again at once rather than left RUNNING until its
heartbeat goes stale.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import signal
import threading
from types import FrameType
from typing import Any


class Interrupted(BaseException):
    """SIGTERM/SIGINT during training.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` inside
    Keras or our own code swallows it on the way out of ``fit``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Turn SIGTERM/SIGINT into "finish cleanly".

    Outside training a signal only asks the loop to stop before the next trial. During training
    it raises :class:`Interrupted` in the main thread at once, so a one-hour epoch does not keep
    a stopping container alive; the trial is then failed and re-queued, never left RUNNING.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._training = False
        self._wake = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def stop_requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        if self.stop_requested:  # a signal arrived between ask and training
            raise Interrupted(self.signum)  # type: ignore[arg-type]
        self._training = True
        try:
            yield
        finally:
            self._training = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals back during a database call inside training, then act on them.

        Raising in the middle of a transaction would leave the trial's session half-used; the
        database call is short, so the interruption waits for it.
        """
        was_training, self._training = self._training, False
        try:
            yield
        finally:
            self._training = was_training
        if was_training and self.stop_requested:
            self._training = False
            raise Interrupted(self.signum)  # type: ignore[arg-type]

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once on a signal."""
        self._wake.wait(seconds)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._wake.set()
        if self._training:
            self._training = False  # raise once; a second signal during cleanup only stops
            raise Interrupted(signum)


__all__ = ["Interrupted", "SignalGuard"]
