"""This worker's line to its study: database calls that ride out outages, tells safe to repeat.

Every call a worker makes on its study during a trial goes through :class:`StudyLink`, so that
an outage of up to the study's grace period costs nothing (the call is retried meanwhile) and a
longer one surfaces as one exception, :class:`GaveUp`, that the trial loop turns into a
re-queued trial or a one-line stop. A tell can be repeated after a lost reply, and the link
says whether the study was replaced under the worker (``tuner create --overwrite``).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from storage.optuna_internals import study_id, trial_id
from storage.retry import DatabaseUnavailable, is_transient, with_db_retry
from storage.retry import describe as describe_db_error
from worker.errors import StudyGone

T = TypeVar("T")


class GaveUp(DatabaseUnavailable):
    """A database call kept failing for the whole grace period (raised through Keras' fit)."""

    def __init__(self, what: str, seconds: float, cause: BaseException) -> None:
        super().__init__(f"database unavailable for {seconds:.0f}s during {what} ({describe_db_error(cause)})")
        self.what = what


@dataclasses.dataclass
class StudyLink:
    """The joined study, its storage and how long its database calls may keep retrying."""

    study: optuna.Study
    rdb: optuna.storages.RDBStorage
    url: str
    grace_period: int
    say: Callable[[str], None]

    def call(self, call: Callable[[], T], what: str) -> T:
        """``call`` with retries for the study's grace period, then :class:`GaveUp`."""
        return call_within_grace(call, what, self.grace_period, self.say)

    def tell(self, trial: optuna.Trial, **kwargs: Any) -> None:
        """:meth:`tell_now` with retries."""
        self.call(lambda: self.tell_now(trial, **kwargs), "reporting the trial's end")

    def tell_now(self, trial: optuna.Trial, **kwargs: Any) -> None:
        """``study.tell``, safe to repeat; a trial finished by someone else is UpdateFinishedTrialError.

        A tell whose reply was lost (connection killed after the commit) is retried and finds
        the trial finished: if it holds what this tell says, the tell had worked. Otherwise the
        trial was failed as stale before this tell (Optuna raises a plain ValueError for that,
        and UpdateFinishedTrialError only for a race inside the tell); the trial loop turns
        both into "dropped".
        """
        stored = self.rdb.get_trial(trial_id(trial))
        if stored.state.is_finished():
            if _holds(stored, **kwargs):
                return
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is already finished")
        self.study.tell(trial, **kwargs)

    def replaced(self) -> bool:
        """True when the study this worker joined no longer exists under its name."""
        try:
            return self.rdb.get_study_id_from_name(self.study.study_name) != study_id(self.study)
        except KeyError:
            return True
        except Exception:  # noqa: BLE001 - cannot tell (database away): not replaced as far as we know
            return False

    def gone(self) -> StudyGone:
        return StudyGone(self.study.study_name)

    def close(self) -> None:
        self.rdb.engine.dispose()


def call_within_grace(call: Callable[[], T], what: str, grace_period: float, say: Callable[[str], None]) -> T:
    """``call`` with retries for ``grace_period`` seconds, then :class:`GaveUp`."""
    grace = float(grace_period)
    try:
        return with_db_retry(call, what=what, max_wait_s=grace, on_retry=say)
    except Exception as exc:
        if is_transient(exc) and not isinstance(exc, DatabaseUnavailable):
            raise GaveUp(what, grace, exc) from exc
        raise


def _holds(
    stored: optuna.trial.FrozenTrial, *, state: TrialState | None = None, values: float | list[float] | None = None
) -> bool:
    """Whether a finished trial holds what ``study.tell(state=..., values=...)`` would have stored."""
    if values is not None:
        wanted = values if isinstance(values, list) else [values]
        return stored.state == TrialState.COMPLETE and stored.values == wanted
    return stored.state == state


__all__ = ["GaveUp", "StudyLink", "call_within_grace"]
