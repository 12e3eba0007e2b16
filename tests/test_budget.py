"""The shared trial budget under real concurrency, without training (fast)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import multiprocessing

import optuna
from optuna.trial import TrialState

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
