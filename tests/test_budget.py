"""The shared trial budget under real concurrency, without training (fast)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import multiprocessing
import threading
import time

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
def test_eight_processes_never_overrun_the_budget(pg_schema_url):
    storage.init_schema(pg_schema_url)
    optuna.create_study(storage=storage.open_storage(pg_schema_url, heartbeat_interval=None), study_name="b")
    budget = 40
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=8, mp_context=ctx) as pool:
        ran = list(pool.map(_drain, [pg_schema_url] * 8, [budget] * 8))
    assert sum(ran) == budget
    assert sum(1 for r in ran if r > 0) >= 2
    study = optuna.load_study(study_name="b", storage=storage.open_storage(pg_schema_url, heartbeat_interval=None))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * budget


def test_queued_retry_is_handed_out_even_when_budget_is_allocated(pg_schema_url):
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url)
    study = optuna.create_study(storage=rdb, study_name="b")
    first, _ = ask_within_budget(study, rdb, pg_schema_url, 1)
    assert first is not None
    study.tell(first, 0.5)
    assert ask_within_budget(study, rdb, pg_schema_url, 1)[0] is None  # budget of 1 used up
    study.enqueue_trial({"x": 0.25})  # e.g. an interrupted trial queued again
    retry, counts = ask_within_budget(study, rdb, pg_schema_url, 1)
    assert retry is not None and counts[TrialState.WAITING] == 1
    assert retry.suggest_float("x", 0, 1) == 0.25


def _has_heartbeat(rdb, trial_id: int) -> bool:
    import sqlalchemy

    with rdb.engine.connect() as conn:
        query = sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t")
        return conn.execute(query, {"t": trial_id}).scalar_one() == 1


def test_asked_trials_have_a_heartbeat_at_once(pg_schema_url):
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url)
    study = optuna.create_study(storage=rdb, study_name="b")
    trial, _ = ask_within_budget(study, rdb, pg_schema_url, 1)
    assert trial is not None and _has_heartbeat(rdb, trial._trial_id)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_orphaned_before_its_first_heartbeat_is_failed_and_retried(pg_schema_url):
    """A worker that dies between ask and its first beat must not hold a budget slot forever."""
    import time

    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=1, grace_period=2, max_retry=1)
    study = optuna.create_study(storage=rdb, study_name="b")
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat, owner "dead"
    assert not _has_heartbeat(rdb, orphan._trial_id)

    other, _ = ask_within_budget(study, rdb, pg_schema_url, 2)  # a live worker takes the second slot
    assert other is not None and _has_heartbeat(rdb, orphan._trial_id)  # the orphan was adopted
    study.tell(other, other.suggest_float("x", 0, 1))
    assert rdb.get_trial(orphan._trial_id).state == TrialState.RUNNING  # within its grace period

    time.sleep(3.5)  # the adopted beat is never renewed: the orphan goes stale
    retry, _ = ask_within_budget(study, rdb, pg_schema_url, 2)
    assert retry is not None, "the budget waited for an orphan forever"
    assert rdb.get_trial(orphan._trial_id).state == TrialState.FAIL
    assert retry.params == orphan.params
    study.tell(retry, 0.5)
    assert ask_within_budget(study, rdb, pg_schema_url, 2)[0] is None
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2


# -- what a worker holds while others queue for the lock ------------------------------------------


def _lock_held(url: str, study_name: str) -> bool:
    """Whether anyone holds the study's budget lock, seen from a connection of our own."""
    import sqlalchemy

    from storage.locks import lock_key

    unsigned = lock_key(f"mars-tuner:budget:{study_name}") & 0xFFFFFFFFFFFFFFFF
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :hi AND objid = :lo AND objsubid = 1"
            )
            return conn.execute(query, {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).scalar_one() > 0
    finally:
        engine.dispose()


class _LockWatchingSampler(optuna.samplers.RandomSampler):
    """Records, at each sampler hook that ask + suggest runs, whether the budget lock is held."""

    def __init__(self, url: str, study_name: str) -> None:
        super().__init__(seed=0)
        self.url, self.study_name = url, study_name
        self.seen: dict[str, bool] = {}

    def before_trial(self, study, trial) -> None:
        self.seen["before_trial"] = _lock_held(self.url, self.study_name)
        super().before_trial(study, trial)

    def sample_relative(self, study, trial, search_space):
        self.seen["sample_relative"] = _lock_held(self.url, self.study_name)
        return super().sample_relative(study, trial, search_space)


def test_the_sampler_runs_outside_the_budget_lock(pg_schema_url):
    """Sampling is the slow part of an ask: inside the lock, every other worker would wait for it."""
    from worker.budget import budget_lock

    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url)
    sampler = _LockWatchingSampler(pg_schema_url, "b")
    study = optuna.create_study(storage=rdb, study_name="b", sampler=sampler)
    with budget_lock(study, rdb, pg_schema_url):
        assert _lock_held(pg_schema_url, "b")  # the probe sees the lock when it is held
    trial, _ = ask_within_budget(study, rdb, pg_schema_url, 1)
    trial.suggest_float("x", 0, 1)
    assert sampler.seen == {"before_trial": False, "sample_relative": False}


def test_an_enqueued_trial_keeps_its_fixed_params_and_user_attrs(pg_schema_url):
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url)
    study = optuna.create_study(storage=rdb, study_name="b")
    study.enqueue_trial({"x": 0.75}, user_attrs={"why": "retry"})
    worker = optuna.load_study(study_name="b", storage=rdb)  # another process: a cold trial cache
    trial, _ = ask_within_budget(worker, rdb, pg_schema_url, 1)
    assert trial.suggest_float("x", 0, 1) == 0.75 and trial.user_attrs == {"why": "retry"}
    assert [t.state for t in study.trials] == [TrialState.RUNNING]


def _train_like(url: str, ready, done) -> None:
    """A worker-like process: asks within the budget, then "trains" with its heartbeat beating."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = storage.open_storage(url, heartbeat_interval=1, grace_period=30)
    study = optuna.load_study(study_name="c", storage=rdb)
    trial, _ = ask_within_budget(study, rdb, url, 100)
    trial.suggest_float("x", 0, 1)
    with storage.Heartbeat(rdb, trial._trial_id, interval=0.05):
        ready.set()
        done.wait(60)  # training: the main thread computes, the heartbeat thread beats
    study.tell(trial, 0.5)
    rdb.engine.dispose()


@pytest.mark.slow
def test_training_workers_hold_one_connection_each(pg_schema_url):
    """PostgreSQL allows 100 connections by default: 64 workers fit only at one each."""
    import collections
    import time

    import sqlalchemy

    storage.init_schema(pg_schema_url)
    creator = storage.open_storage(pg_schema_url, heartbeat_interval=None)
    optuna.create_study(storage=creator, study_name="c")
    creator.engine.dispose()  # only the workers' sessions are counted
    ctx = multiprocessing.get_context("spawn")
    n = 3
    ready, done = [ctx.Event() for _ in range(n)], ctx.Event()
    procs = [ctx.Process(target=_train_like, args=(pg_schema_url, ready[i], done)) for i in range(n)]
    for p in procs:
        p.start()
    database = sqlalchemy.make_url(pg_schema_url).database
    peak: collections.Counter[str] = collections.Counter()
    engine = sqlalchemy.create_engine(pg_schema_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        assert all(r.wait(120) for r in ready)
        query = sqlalchemy.text(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = :db AND application_name LIKE 'mars-tuner-worker@%' "
            "GROUP BY application_name"
        )
        with engine.connect() as conn:
            for _ in range(40):  # 2 s of training, with 40 heartbeats per worker
                for app, count in conn.execute(query, {"db": database}):
                    peak[app] = max(peak[app], int(count))
                time.sleep(0.05)
    finally:
        done.set()
        for p in procs:
            p.join(60)
        engine.dispose()
    assert [p.exitcode for p in procs] == [0] * n
    assert len(peak) == n and set(peak.values()) == {1}, peak


def test_the_holder_waits_for_row_locks_as_long_as_configured(pg_schema_url):
    """A lock won in a short try must not leave that try's lock_timeout to the holder's statements."""
    import sqlalchemy

    from storage.locks import named_lock

    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url)
    with named_lock(pg_schema_url, "t", engine=rdb.engine) as held:
        shown = held.connection.execute(sqlalchemy.text("SHOW lock_timeout")).scalar_one()
    assert shown == "30s"  # storage.engine.LOCK_TIMEOUT_MS, not the try's 50 ms


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_waiter_gets_the_lock_when_it_is_released_with_either_driver(pg_url, driver):
    """``postgresql://`` as typed means psycopg 3, whose errors carry ``sqlstate``, not psycopg2's
    ``pgcode``: a waiter's timed-out try must be recognised with both and retried."""
    from sqlalchemy.engine import make_url

    from storage.locks import named_lock

    url = make_url(pg_url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    got: list[float] = []

    def waiter() -> None:
        with named_lock(url, "contended"):
            got.append(time.monotonic())

    with named_lock(url, "contended"):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(1.0)  # several timed-out tries (50 ms, 100 ms, ...)
        assert thread.is_alive() and not got
        let_go = time.monotonic()
    thread.join(timeout=30)
    assert got and got[0] >= let_go


def test_the_locked_section_stays_a_few_statements_with_many_running_trials(pg_schema_url):
    """Every worker queues for this section: its statements must not grow with the busy workers.

    Optuna's own stale-trial check loaded every RUNNING trial (one per busy worker) as ORM objects
    and its heartbeat call read the row first, each in a savepoint: 17 statements here before.
    """
    import sqlalchemy

    from worker import budget

    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=rdb, study_name="b")
    for _ in range(20):  # twenty busy workers' trials, beating
        budget.ask_within_budget(study, rdb, pg_schema_url, 100)
    statements: list[str] = []

    def seen(conn, cursor, statement, *rest) -> None:
        statements.append(statement)

    plain = budget._reserve

    def watched(*args, **kwargs):
        sqlalchemy.event.listen(rdb.engine, "before_cursor_execute", seen)
        try:
            return plain(*args, **kwargs)
        finally:
            sqlalchemy.event.remove(rdb.engine, "before_cursor_execute", seen)

    budget._reserve = watched
    try:
        trial, counts = budget.ask_within_budget(study, rdb, pg_schema_url, 100)
    finally:
        budget._reserve = plain
    assert trial is not None and counts[TrialState.RUNNING] == 20
    assert _has_heartbeat(rdb, trial._trial_id)
    assert len(statements) <= 10, "\n".join(s.split("\n")[0][:80] for s in statements)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 21  # fresh beats: none failed


def test_a_first_heartbeat_on_the_lock_connection_replaces_an_earlier_one(pg_schema_url):
    """A queued trial taken again may carry a beat already: the one-statement beat must not fail."""
    from worker.budget import budget_lock

    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=rdb, study_name="b")
    trial_id = study.ask()._trial_id
    rdb.record_heartbeat(trial_id)
    with budget_lock(study, rdb, pg_schema_url):
        storage.first_heartbeat(rdb, trial_id)
        storage.first_heartbeat(rdb, trial_id)
    assert _has_heartbeat(rdb, trial_id)  # one row, no unique-key error
