"""SignalGuard's logic, in-process (the end-to-end SIGTERM test is in test_distributed.py)."""

from __future__ import annotations

import os
import signal

import pytest

from worker.signals import Interrupted, SignalGuard


def test_signal_outside_training_only_requests_stop():
    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.stop_requested and guard.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_signal_during_training_raises_at_once():
    with SignalGuard() as guard, pytest.raises(Interrupted) as info:
        with guard.training():
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("not interrupted")  # pragma: no cover
    assert str(info.value) == "SIGINT"


def test_signal_before_training_starts_interrupts_on_entry():
    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Interrupted):
            with guard.training():
                pass  # pragma: no cover


def test_signal_during_database_call_waits_for_it():
    done = []
    with SignalGuard() as guard, pytest.raises(Interrupted):
        with guard.training():
            with guard.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("db call finished")
    assert done == ["db call finished"]
