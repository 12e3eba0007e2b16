"""The worker's next trial: ask within the shared budget, or wait while others may still need a retry."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import TrialState
import sqlalchemy

from worker.budget import ask_within_budget
from worker.errors import DatabaseLost
from worker.signals import Interrupted, SignalGuard
from worker.study_link import GaveUp, StudyLink

#: Longest sleep between two looks at a fully allocated budget (shorter with a shorter heartbeat).
WAIT_POLL_S = 10.0


def next_trial(
    link: StudyLink, n_trials: int, heartbeat_interval_s: float, say: Callable[[str], None], guard: SignalGuard
) -> optuna.Trial | None:
    """Ask for a trial if the shared budget allows; ``None`` when the study is done.

    Counting and asking happen under one database lock, so N workers racing for the last
    trial create exactly one. Queued trials (retries, `tuner confirm`'s) are always taken. When the
    budget is fully allocated but other workers still run trials, wait: one of them may die, and its
    retry needs a worker. A signal while waiting for the lock stops the worker at once.
    """

    def stop_waiting(waited_s: float) -> None:
        if guard.stop_requested:
            raise Interrupted(guard.signum)  # type: ignore[arg-type]

    announced = False
    while not guard.stop_requested:
        try:
            trial, counts = link.call(
                lambda: ask_within_budget(link.study, link.rdb, link.url, n_trials, on_wait=stop_waiting, on_log=say),
                "asking for a trial",
            )
        except Interrupted:
            return None  # the loop reports the signal
        except GaveUp as exc:
            raise DatabaseLost(
                f"{exc}; no trial was running; start the worker again when the database is back"
            ) from None
        except (KeyError, sqlalchemy.exc.IntegrityError):
            if link.replaced():
                raise link.gone() from None
            raise
        if trial is not None:
            return trial
        # Only search trials count towards the budget; running confirmations (counts[...] is
        # the total) keep this worker waiting too: one of them may die and need its retry run.
        finished = counts.search[TrialState.COMPLETE] + counts.search[TrialState.PRUNED]
        confirmed = counts.confirming[TrialState.COMPLETE]
        also = f", {confirmed} confirmation trial(s) complete" if confirmed else ""
        if counts[TrialState.RUNNING] == 0:
            say(f"study budget reached: {finished}/{n_trials} trials finished{also}")
            return None
        if not announced:
            say(
                f"budget allocated ({finished}/{n_trials} finished); waiting for "
                f"{counts[TrialState.RUNNING]} running trial(s) in case one is retried"
            )
            announced = True
        guard.sleep(min(heartbeat_interval_s, WAIT_POLL_S))
    return None
