"""The storage layer against the machine's real PostgreSQL (and SQLite for the default)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from pathlib import Path
import time

import optuna
from optuna.trial import TrialState
import pytest
import sqlalchemy

import storage
from storage.engine import engine_kwargs
from storage.url import mask_url, resolve_url, scrub

# --- URL resolution -----------------------------------------------------------------------


def test_explicit_url_beats_environment(tuner_home, monkeypatch):
    monkeypatch.setenv("TUNER_STORAGE", "postgresql://env@dbhost/envdb")
    assert resolve_url("postgresql://cli@otherhost/clidb") == "postgresql://cli@otherhost/clidb"


def test_environment_beats_default(tuner_home, monkeypatch):
    monkeypatch.setenv("TUNER_STORAGE", "postgresql://env@dbhost/envdb")
    assert resolve_url(None) == "postgresql://env@dbhost/envdb"


def test_nothing_given_is_sqlite_under_tuner_home(tuner_home):
    url = resolve_url(None)
    assert url == f"sqlite:///{Path(tuner_home).resolve() / 'tuner.db'}"


def test_postgres_scheme_alias_and_driver(tuner_home):
    assert resolve_url("postgres://u@h:5433/d") == "postgresql://u@h:5433/d"
    # An explicitly chosen driver is kept.
    assert resolve_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"


def test_password_file_is_injected_only_without_password(tuner_home, tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    monkeypatch.setenv("TUNER_DB_PASSWORD_FILE", str(secret))
    assert resolve_url("postgresql://u@h/d") == "postgresql://u:from-file@h/d"
    assert resolve_url("postgresql://u:given@h/d") == "postgresql://u:given@h/d"


def test_missing_password_file_is_one_clear_error(tuner_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_DB_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(storage.StorageError, match="TUNER_DB_PASSWORD_FILE"):
        resolve_url("postgresql://u@h/d")


@pytest.mark.parametrize(
    "bad", ["mysql://root:hunter2@h/d", "postgresql://u:hunter2@h:notaport/d", "not a url hunter2"]
)
def test_bad_urls_fail_without_leaking_password(tuner_home, bad):
    with pytest.raises(storage.StorageError) as info:
        resolve_url(bad)
    message = str(info.value)
    assert "\n" not in message
    if "://" in bad:
        assert "hunter2" not in message


def test_mask_and_scrub():
    assert mask_url("postgresql://u:p4ss@h/d") == "postgresql://u:***@h/d"
    assert mask_url("postgresql://u:p4ss@h:xx/d") == "postgresql://u:***@h:xx/d"
    assert scrub("failed for password p4ss at postgresql://u:p4ss@h/d", "postgresql://u:p4ss@h/d") == (
        "failed for password *** at postgresql://u:***@h/d"
    )


@pytest.mark.parametrize(
    "raw, secret",
    [
        ("postgresql://u:hun@ter2@127.0.0.1:1/db", "ter2"),  # unencoded "@": SQLAlchemy splits at the first
        ("postgresql://u:hun@ter2@127.0.0.1:x/db", "ter2"),
        ("postgresql://u:hun ter2@127.0.0.1:x/db", "ter2"),  # unparseable, password with a space
    ],
)
def test_passwords_with_at_or_space_are_masked_whole(tuner_home, raw, secret):
    with pytest.raises(storage.StorageError) as info:
        resolve_url(raw)
    message = str(info.value)
    assert secret not in message and "u:***@" in message
    assert secret not in mask_url(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("postgresql+asyncpg://u:hunter2@h/d", "driver 'postgresql+asyncpg'"),
        ("sqlite://u:hunter2@/tmp/x.db", "a SQLite URL has no user"),
        ("sqlite://", "in-memory SQLite is not supported"),
        ("sqlite:///:memory:", "in-memory SQLite is not supported"),
    ],
)
def test_urls_sqlalchemy_parses_but_we_cannot_use(tuner_home, raw, expected):
    with pytest.raises(storage.StorageError) as info:
        resolve_url(raw)
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


def test_asking_a_missing_sqlite_file_does_not_create_it(tmp_path):
    url = resolve_url(f"sqlite:///{tmp_path / 'new.db'}")
    assert storage.current_revision(url) is None
    health = storage.check(url)
    assert not health.ok and "no database file" in (health.error or "")
    assert not (tmp_path / "new.db").exists()


def test_postgres_engine_settings_are_small_pool_with_pre_ping():
    kwargs = engine_kwargs("postgresql+psycopg2://u@h/d")
    assert kwargs["pool_size"] == 1 and kwargs["max_overflow"] <= 2  # one open connection per worker
    assert kwargs["pool_pre_ping"] is True
    assert kwargs["connect_args"]["connect_timeout"] > 0


# --- schema -------------------------------------------------------------------------------


def _tables(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_init_schema_creates_current_schema_once(pg_url):
    assert storage.current_revision(pg_url) is None
    revision = storage.init_schema(pg_url)
    assert revision == storage.check(pg_url).head_revision
    assert storage.init_schema(pg_url) == revision  # idempotent
    assert {"studies", "trials", "alembic_version", "version_info"} <= _tables(pg_url)


def _init_in_child(url: str) -> str:
    return storage.init_schema(url)


@pytest.mark.slow
def test_schema_created_once_under_eight_concurrent_processes(pg_url):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=8, mp_context=ctx) as pool:
        revisions = list(pool.map(_init_in_child, [pg_url] * 8))
    assert len(set(revisions)) == 1
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM version_info")).scalar_one() == 1
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_workers_never_create_tables(pg_url):
    with pytest.raises(storage.StorageError, match="tuner db init"):
        storage.open_storage(pg_url)
    assert _tables(pg_url) == set()


def test_open_storage_uses_small_pool(pg_schema_url):
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=7, grace_period=20, max_retry=1)
    assert rdb.engine.pool.size() <= 2
    assert rdb.get_heartbeat_interval() == 7
    assert storage.open_storage(pg_schema_url).get_heartbeat_interval() is None  # readers never beat


# --- health -------------------------------------------------------------------------------


def test_check_reports_schema_state(pg_url):
    before = storage.check(pg_url)
    assert before.reachable and not before.ok and "tuner db init" in before.error
    storage.init_schema(pg_url)
    after = storage.check(pg_url)
    assert after.ok and after.n_studies == 0 and after.server_version


def test_check_unreachable_host_masks_password():
    health = storage.check(resolve_url("postgresql://bob:s3cretpw@127.0.0.1:1/nodb"))
    assert not health.reachable and not health.ok
    assert "s3cretpw" not in health.error and "s3cretpw" not in health.url
    assert "***" in health.error and "\n" not in health.error


# --- heartbeats and recovery ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_heartbeat_thread_keeps_trial_alive_and_stale_trial_is_retried(pg_schema_url):
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url, heartbeat_interval=1, grace_period=2, max_retry=1)
    study = optuna.create_study(storage=rdb, study_name="hb", direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    with storage.Heartbeat(rdb, trial._trial_id, interval=0.25) as beat:
        time.sleep(3.0)  # longer than the grace period: only the heartbeats keep it alive
        storage.fail_stale_trials(study)
        assert study.trials[0].state == TrialState.RUNNING
    assert beat.beats >= 8 and beat.failures == 0
    time.sleep(3.0)  # now silent for longer than the grace period
    storage.fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    retried = study.get_trials(deepcopy=False)[1]
    assert retried.params == study.trials[0].params


def test_storage_survives_database_dropping_its_connections(pg_schema_url, drop_connections):
    """pool_pre_ping: killed server-side connections are replaced, not fatal."""
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(pg_schema_url)
    study = optuna.create_study(storage=rdb, study_name="reconnect")
    study.enqueue_trial({"x": 1.0})
    assert drop_connections(pg_schema_url) >= 1  # the pool really held a connection that is now dead
    study.enqueue_trial({"x": 2.0})
    assert len(study.trials) == 2


# --- the embedded default -------------------------------------------------------------------


def test_sqlite_default_works_without_server(tuner_home):
    url = resolve_url(None)
    storage.init_schema(url)
    assert (Path(tuner_home) / "tuner.db").exists()
    rdb = storage.open_storage(url)
    study = optuna.create_study(storage=rdb, study_name="local", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert len(study.trials) == 3
    assert storage.check(url).ok


def _delete_while_a_worker_reports(pg_url: str, delete) -> list[str]:
    """Delete study 's' ten times while a thread keeps adding epoch reports to its running trial
    (what a worker does, here without pause); the names left after each delete."""
    import threading

    rdb = optuna.storages.RDBStorage(pg_url)
    engine = sqlalchemy.create_engine(pg_url)
    left = []
    for _ in range(10):
        study = optuna.create_study(study_name="s", storage=rdb)
        for _ in range(20):  # children for the ORM to walk through before it deletes the trial
            study.enqueue_trial({})
        trial_id = storage.optuna_internals.trial_id(study.ask())
        stop = threading.Event()

        def report(trial_id: int, stop: threading.Event) -> None:
            step = 0
            with engine.connect() as conn:
                while not stop.is_set():
                    step += 1
                    try:
                        conn.execute(
                            sqlalchemy.text(
                                "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                                "intermediate_value_type) VALUES (:t, :s, 0.5, 'FINITE')"
                            ),
                            {"t": trial_id, "s": step},
                        )
                        conn.commit()
                    except sqlalchemy.exc.IntegrityError:  # the trial is gone: the worker would stop here
                        conn.rollback()
                        return

        reporter = threading.Thread(target=report, args=(trial_id, stop))
        reporter.start()
        time.sleep(0.05)
        try:
            delete(rdb, "s")
        finally:
            stop.set()
            reporter.join()
        left += optuna.get_all_study_names(rdb)
        if left:  # plain Optuna: clean up for the next round
            for name in set(left):
                storage.optuna_internals.delete_study(rdb, name)
    engine.dispose()
    return left


def test_deleting_a_study_under_a_reporting_worker_really_deletes_it(pg_url):
    # RDBStorage.delete_study swallows the IntegrityError of a row inserted mid-delete and leaves
    # the study in place, so `tuner create --overwrite` then failed on the rename (seen in CI).
    assert _delete_while_a_worker_reports(pg_url, storage.optuna_internals.delete_study) == []


def test_plain_optuna_delete_can_leave_the_study_under_a_reporting_worker(pg_url):
    # The race the test above guards against is real here: at least once in ten, Optuna's own
    # delete leaves the study (if this ever passes with [], Optuna fixed it: drop the workaround).
    left = _delete_while_a_worker_reports(pg_url, lambda rdb, name: optuna.delete_study(study_name=name, storage=rdb))
    assert left, "optuna.delete_study no longer leaves the study behind"
