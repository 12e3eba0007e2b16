"""Workers through PgBouncer in transaction pooling mode (bench/_pgbouncer.py, docs/pgbouncer.md).

In transaction mode consecutive transactions of one client may run on different server
connections, and startup ``options`` are not passed on. What a worker needs per session must
hold anyway: the server-side timeouts (PgBouncer's ``connect_query``), the budget lock (a
transaction advisory lock) and psycopg 3 without server-side prepared statements.
"""

from __future__ import annotations

from pathlib import Path
import sys
import threading

import optuna
from optuna.trial import TrialState
import pytest
import sqlalchemy

import storage
from storage.engine import server_settings
from worker.budget import ask_within_budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _pgbouncer import Bouncer, BouncerError  # noqa: E402


@pytest.fixture
def bouncer(pg_schema_url):
    url = sqlalchemy.make_url(pg_schema_url)
    try:
        with Bouncer(url.host or "127.0.0.1", url.port or 5432, pool_size=3, max_client_conn=200) as b:
            yield b, url.database
    except BouncerError as exc:
        if "not installed" in str(exc) and not __import__("os").environ.get("CI") == "true":
            pytest.skip(str(exc))
        raise


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql"])
def test_session_settings_and_repeated_statements_hold_on_every_pooled_transaction(bouncer, pg_schema_url, driver):
    b, database = bouncer
    storage.init_schema(pg_schema_url)
    rdb = storage.open_storage(b.url(database, driver), heartbeat_interval=None)
    try:
        wanted = {name: str(value) for name, value in server_settings().items() if "keepalive" not in name}
        with rdb.engine.connect() as conn:
            for _ in range(12):  # > psycopg 3's prepare threshold, across server connections
                got = {
                    name: conn.execute(
                        sqlalchemy.text(f"SELECT setting FROM pg_settings WHERE name = '{name}'")
                    ).scalar()
                    for name in wanted
                }
                conn.commit()
                assert got == wanted
    finally:
        rdb.engine.dispose()


def test_budget_is_exact_with_many_askers_through_pgbouncer(bouncer, pg_schema_url):
    b, database = bouncer
    url = b.url(database)
    storage.init_schema(pg_schema_url)
    optuna.create_study(study_name="s", storage=storage.open_storage(pg_schema_url))
    budget, askers = 10, 8
    errors: list[BaseException] = []

    def ask_until_spent() -> None:
        rdb = None
        try:
            rdb = storage.open_storage(url, heartbeat_interval=5, grace_period=30)
            study = optuna.load_study(study_name="s", storage=rdb)
            while True:
                trial, _ = ask_within_budget(study, rdb, url, budget)
                if trial is None:
                    return
                study.tell(trial, 0.5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            if rdb is not None:
                rdb.engine.dispose()

    threads = [threading.Thread(target=ask_until_spent) for _ in range(askers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    trials = optuna.load_study(study_name="s", storage=storage.open_storage(pg_schema_url)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * budget
    assert b.stats(database)["total_xact_count"] > 0  # it did go through PgBouncer


@pytest.mark.slow
def test_real_workers_through_pgbouncer_finish_the_budget_exactly(bouncer, pg_schema_url, tmp_path, synth_npz):
    from helpers import study_trials
    from test_distributed import _create, _worker

    b, database = bouncer
    npz = synth_npz(48, seed=3)
    budget = 4
    _create(pg_schema_url, tmp_path, npz, trials=budget, epochs=2, pruner="none")
    # One on psycopg2, one on the default driver (psycopg 3): both through the pool.
    workers = [_worker(b.url(database, driver), npz) for driver in ("postgresql+psycopg2", "postgresql")]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    trials = study_trials(pg_schema_url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * budget, "\n".join(outputs)
    assert "unavailable" not in "".join(outputs)
    assert b.stats(database)["total_xact_count"] > 0
