"""What workers and the storage say when something goes wrong: the reason and the root cause in one
line (issue 22, items 11 and 12).
"""

from __future__ import annotations

from pathlib import Path
import re

from pgcluster import pg_cluster  # noqa: F401 - the fixture (a throw-away server to stop)
import pytest

# --- 11. stated as the code sets it; a failed trial says why ---------------------------------


def test_docs_state_the_connections_a_worker_holds_as_the_code_sets_them():
    from storage.engine import MAX_OVERFLOW, POOL_SIZE

    root = Path(__file__).resolve().parent.parent
    for doc in (".env.example", "docs/deployment.md"):
        text = " ".join((root / doc).read_text().replace("#", " ").split())
        stated = re.findall(r"holds at most (\d+) (?:database )?connections", text)
        assert stated and {int(n) for n in stated} == {POOL_SIZE + MAX_OVERFLOW}, (doc, stated)
        assert f"pool {POOL_SIZE} + overflow {MAX_OVERFLOW}" in text, doc


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_failed_for_lack_of_heartbeats_says_why_and_whose(tmp_path):
    import time

    import optuna
    from optuna.trial import TrialState

    import storage
    from worker.budget import ask_within_budget

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage.init_schema(url)
    rdb = storage.open_storage(url, heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.create_study(storage=rdb, study_name="hb", direction="maximize")
    trial, _ = ask_within_budget(study, rdb, url, 5)
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("worker", {"host": "node-7", "pid": 4242, "gpu": None})
    time.sleep(2.5)  # its worker died after the first beat
    retry, _ = ask_within_budget(study, rdb, url, 5)  # the next worker's ask fails it and takes the retry
    dead, again = study.get_trials(deepcopy=False)
    assert dead.state == TrialState.FAIL and again.number == retry.number
    assert re.fullmatch(r"no heartbeat for [2-9]s; worker node-7:4242", dead.user_attrs["error"]), dead.user_attrs
    assert "error" not in again.user_attrs and again.params == dead.params  # the retry starts clean
    rdb.engine.dispose()


# --- 11. outage lines name the root cause, not InvalidatePoolError or StorageInternalError ------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_outage_lines_name_the_database_error(pg_cluster, caplog):  # noqa: F811 - the fixture
    import logging

    import optuna

    import storage
    from storage.retry import with_db_retry

    url = pg_cluster.new_database()
    storage.init_schema(url)
    rdb = storage.open_storage(url, heartbeat_interval=1, grace_period=60)
    study = optuna.create_study(storage=rdb, study_name="outage")
    trial = study.ask()
    assert study.trials  # the pool now holds a connection, which the stop kills
    pg_cluster.stop()
    try:
        lines: list[str] = []
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises once the grace is spent
            with_db_retry(
                lambda: study.trials, what="reading trials", max_wait_s=0.5, first_delay_s=0.2, on_retry=lines.append
            )
        with caplog.at_level(logging.WARNING, logger="storage"):
            with storage.Heartbeat(rdb, trial._trial_id, interval=60):
                pass
    finally:
        pg_cluster.start()
        rdb.engine.dispose()
    beat = [r.getMessage() for r in caplog.records if "heartbeat for" in r.getMessage()]
    for line in (lines[0], beat[0]):
        cause = line.split("(", 1)[1] if line.startswith("database") else line.split("failed: ", 1)[1]
        assert re.match(r"(psycopg2?\.)?\w*OperationalError: \S", cause), line  # the driver's own words
        assert "InvalidatePoolError" not in line and "StorageInternalError" not in line, line


# --- 12. what a new user sees ---------------------------------------------------------------


def test_phase_lines_say_when_a_phase_started_and_why_compiling_is_quiet():
    import io
    import time

    from worker.training.progress import Clock

    out, seen = io.StringIO(), []
    clock = Clock(time.perf_counter() - 40.0, out, seen.append)
    clock.phase("training")
    clock.phase("compiling")
    training, compiling = out.getvalue().splitlines()
    assert re.fullmatch(r"phase: training \(from 40\.\ds into the trial\)", training), training
    assert compiling.startswith("phase: compiling (from 40.") and "tens of seconds without output" in compiling
    assert seen == ["training", "compiling"]
