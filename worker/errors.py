"""The worker's one-line errors: why it cannot join a study, or had to stop."""

from __future__ import annotations

from contract.errors import TunerError


class RunnerError(TunerError, RuntimeError):
    """The worker cannot join the study; one line for the user."""


class StudyMissing(RunnerError):
    """No study of that name (yet)."""


class StudyGone(RunnerError):
    """The study was deleted or replaced (``tuner create --overwrite``) while this worker ran."""

    def __init__(self, study_name: str) -> None:
        super().__init__(
            f"study {study_name!r} was replaced or deleted (`tuner create --overwrite`?); stopping this worker"
        )


class DatabaseLost(RunnerError):
    """The database stayed unreachable for longer than the grace period."""


__all__ = ["DatabaseLost", "RunnerError", "StudyGone", "StudyMissing"]
