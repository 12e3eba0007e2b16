"""The shared trial budget under real concurrency, without training (fast)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import multiprocessing

import optuna
from optuna.trial import TrialState
import pytest

import storage
from worker.budget import ask_within_budget


def _drain(url: str, n_trials: int) -> int:
    """A worker with a trivial objective: ask within budget until told no."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = storage.open_storage(url)
    study = optuna.load_study(study_name="b", storage=rdb)
    ran = 0
    while True:
        trial, _ = ask_within_budget(study, rdb, url, n_trials)
        if trial is None:
            return ran
        study.tell(trial, trial.suggest_float("x", 0, 1))
        ran += 1


@pytest.mark.slow
def test_eight_processes_never_overrun_the_budget(pg_url):
    storage.init_schema(pg_url)
    optuna.create_study(storage=storage.open_storage(pg_url, heartbeat_interval=None), study_name="b")
    budget = 40
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=8, mp_context=ctx) as pool:
        ran = list(pool.map(_drain, [pg_url] * 8, [budget] * 8))
    assert sum(ran) == budget
    assert sum(1 for r in ran if r > 0) >= 2
    study = optuna.load_study(study_name="b", storage=storage.open_storage(pg_url, heartbeat_interval=None))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * budget


def test_queued_retry_is_handed_out_even_when_budget_is_allocated(pg_url):
    storage.init_schema(pg_url)
    rdb = storage.open_storage(pg_url)
    study = optuna.create_study(storage=rdb, study_name="b")
    first, _ = ask_within_budget(study, rdb, pg_url, 1)
    assert first is not None
    study.tell(first, 0.5)
    assert ask_within_budget(study, rdb, pg_url, 1)[0] is None  # budget of 1 used up
    study.enqueue_trial({"x": 0.25})  # e.g. an interrupted trial queued again
    retry, counts = ask_within_budget(study, rdb, pg_url, 1)
    assert retry is not None and counts[TrialState.WAITING] == 1
    assert retry.suggest_float("x", 0, 1) == 0.25


def _has_heartbeat(rdb, trial_id: int) -> bool:
    import sqlalchemy

    with rdb.engine.connect() as conn:
        query = sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t")
        return conn.execute(query, {"t": trial_id}).scalar_one() == 1


def test_asked_trials_have_a_heartbeat_at_once(pg_url):
    storage.init_schema(pg_url)
    rdb = storage.open_storage(pg_url)
    study = optuna.create_study(storage=rdb, study_name="b")
    trial, _ = ask_within_budget(study, rdb, pg_url, 1)
    assert trial is not None and _has_heartbeat(rdb, trial._trial_id)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_orphaned_before_its_first_heartbeat_is_failed_and_retried(pg_url):
    """A worker that dies between ask and its first beat must not hold a budget slot forever."""
    import time

    storage.init_schema(pg_url)
    rdb = storage.open_storage(pg_url, heartbeat_interval=1, grace_period=2, max_retry=1)
    study = optuna.create_study(storage=rdb, study_name="b")
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat, owner "dead"
    assert not _has_heartbeat(rdb, orphan._trial_id)

    other, _ = ask_within_budget(study, rdb, pg_url, 2)  # a live worker takes the second slot
    assert other is not None and _has_heartbeat(rdb, orphan._trial_id)  # the orphan was adopted
    study.tell(other, other.suggest_float("x", 0, 1))
    assert rdb.get_trial(orphan._trial_id).state == TrialState.RUNNING  # within its grace period

    time.sleep(3.5)  # the adopted beat is never renewed: the orphan goes stale
    retry, _ = ask_within_budget(study, rdb, pg_url, 2)
    assert retry is not None, "the budget waited for an orphan forever"
    assert rdb.get_trial(orphan._trial_id).state == TrialState.FAIL
    assert retry.params == orphan.params
    study.tell(retry, 0.5)
    assert ask_within_budget(study, rdb, pg_url, 2)[0] is None
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2
