"""Failing a trial, and queueing its parameters again when the failure was not theirs.

A trial interrupted by a signal, or cut off from the database, says nothing about its
configuration: it is failed and the same parameters are queued for any worker, under the budget
lock so that the study never overruns its budget, and at most once however often a lost reply
makes the worker repeat it. A configuration that itself failed is only failed.
"""

from __future__ import annotations

import optuna

from contract import trial_attrs
from storage.optuna_internals import trial_id
from storage.retry import is_transient
from worker.budget import budget_lock
from worker.errors import DatabaseLost
from worker.study_link import GaveUp, StudyLink


def fail(link: StudyLink, trial: optuna.Trial, line: str) -> None:
    """Record ``line`` as the trial's error and tell it FAIL (the configuration failed)."""
    link.call(lambda: trial.set_user_attr(trial_attrs.ERROR, line), "recording the error")
    link.tell(trial, state=optuna.trial.TrialState.FAIL)
    link.say(f"trial {trial.number} failed: {line}")


def requeue(
    link: StudyLink,
    trial: optuna.Trial,
    *,
    interrupted: str | None = None,
    error: str | None = None,
    patient: bool = True,
) -> None:
    """Fail the trial and queue the same parameters again for any worker.

    Both happen under the budget lock: a worker counting between the FAIL and the queued
    copy would see a free slot, ask a new trial, and the study would overrun its budget.
    Safe to repeat after a lost reply: a FAIL already stored, or a retry already queued (by
    this worker or by Optuna's stale-trial callback), is not done twice. ``patient``: retry
    for the grace period (else one try, for a caller that has waited that long already).
    """
    study, rdb = link.study, link.rdb
    failed = optuna.trial.TrialState.FAIL

    def mark() -> None:
        if interrupted is not None:
            trial.set_user_attr(trial_attrs.INTERRUPTED, interrupted)
        if error is not None:
            trial.set_user_attr(trial_attrs.ERROR, error)

    def fail_and_requeue() -> None:
        with budget_lock(study, rdb, link.url):
            stored = rdb.get_trial(trial_id(trial))
            if not stored.state.is_finished():
                mark()
                link.tell_now(trial, state=failed)
            elif stored.state != failed or not _marked(stored, interrupted=interrupted, error=error):
                # Finished by someone else: failed as stale while this worker was cut off
                # (its retry is Optuna's to queue), or completed. Not ours to fail or queue.
                raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} finished elsewhere")
            if not _has_retry(study, trial.number):  # a confirmation's retry stays one
                study.enqueue_trial(
                    trial.params,
                    user_attrs={trial_attrs.RETRY_OF: trial.number, **trial_attrs.confirmation_attrs(trial.user_attrs)},
                )

    if patient:
        link.call(fail_and_requeue, "failing and re-queueing the trial")
    else:
        fail_and_requeue()


def requeue_after_outage(link: StudyLink, trial: optuna.Trial, exc: Exception) -> None:
    """The database failed this trial's calls for the whole grace period.

    If it answers again now, the trial is failed and queued again like an interrupted one
    (it says "database unavailable", never counts as a failed configuration). If not, the
    worker stops with one line and leaves the trial RUNNING: it stops beating, so after the
    grace period the next worker to ask fails it and queues its retry.

    Raises:
        DatabaseLost: the database is still away.
        optuna.exceptions.UpdateFinishedTrialError: the trial was failed as stale meanwhile.
    """
    reason = str(exc) if isinstance(exc, GaveUp) else f"database unavailable ({type(exc).__name__})"
    try:
        requeue(link, trial, error=reason, patient=False)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise  # failed as stale meanwhile: the trial loop reports it as dropped
    except Exception as again:  # noqa: BLE001
        if not is_transient(again):
            raise
        raise DatabaseLost(
            f"{reason}, longer than the study's grace period ({link.grace_period}s); trial "
            f"{trial.number} is left RUNNING: once the database is back, the next worker to ask "
            "fails it as stale and queues its retry"
        ) from None
    link.say(f"trial {trial.number}: {reason}; marked FAIL and queued again")


def retry_of_trial(rdb: optuna.storages.RDBStorage, trial: optuna.Trial) -> int | None:
    """The number of the trial that ``trial`` retries, if it is a retry."""
    # Interrupted trials carry RETRY_OF; Optuna's stale-trial retry records "failed_trial".
    retry_of = trial.user_attrs.get(trial_attrs.RETRY_OF)
    if retry_of is None:
        retry_of = rdb.get_trial_system_attrs(trial_id(trial)).get("failed_trial")
    return retry_of


def _marked(stored: optuna.trial.FrozenTrial, *, interrupted: str | None, error: str | None) -> bool:
    """Whether a FAIL stored for this trial is this worker's own (written with its marks, in one
    transaction, by :func:`requeue`: a retry after a lost reply finds them)."""
    return (
        (interrupted is None or stored.user_attrs.get(trial_attrs.INTERRUPTED) == interrupted)
        and (error is None or stored.user_attrs.get(trial_attrs.ERROR) == error)
        and (interrupted is not None or error is not None)
    )


def _has_retry(study: optuna.Study, number: int) -> bool:
    """Whether a copy of trial ``number`` is already queued or run (by us or by Optuna's callback)."""
    for other in study.get_trials(deepcopy=False):
        if other.number == number:
            continue
        if (
            number in other.system_attrs.get("retry_history", ())
            or other.user_attrs.get(trial_attrs.RETRY_OF) == number
        ):
            return True
    return False


__all__ = ["fail", "requeue", "requeue_after_outage", "retry_of_trial"]
