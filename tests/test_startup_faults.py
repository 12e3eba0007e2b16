"""A connection killed while a worker starts does not crash it (README: "Killed connections never
crash a worker").

Start-up is three phases that talk to the database: reading the study's spec, joining the study
(its storage and the study object), and the first ask. Statements spread over each phase, its first
and last included, are killed in turn (the server terminates the connection it runs on, as a restart
or a proxy would), and the worker must come out of start-up holding its first trial, with the budget
exact. The kill is done by a SQLAlchemy hook, so it always lands on the statement it aims at.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import time

from conftest import PG_ADMIN_DSN
from helpers import tiny_space
import optuna
import psycopg2
import pytest
import sqlalchemy

from tuner.study import CreateOptions, create_study
from worker import joining
from worker.joining import WorkerOptions, join
from worker.runner import WorkerSession
from worker.signals import SignalGuard

PHASES = ("spec", "join", "ask")
#: Statements killed per phase, spread from its first to its last (each kill costs a retry's wait).
KILLS_PER_PHASE = 6


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return tiny_space(tmp_path_factory.mktemp("space") / "space.yaml")


class Killer:
    """Terminate the server connection of the ``n``-th statement of ``phase`` just before it runs."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.target: tuple[str, int] | None = None
        self.seen: dict[str, int] = {}
        self.killed: list[str] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if self.phase is None:
            return
        self.seen[self.phase] = self.seen.get(self.phase, 0) + 1
        if self.target != (self.phase, self.seen[self.phase]):
            return
        pid = cursor.connection.get_backend_pid()
        admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(100):  # until the server has really ended it: no race with the statement
                cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone() is None:
                    break
                time.sleep(0.01)
        admin.close()
        self.killed.append(f"{self.phase} #{self.seen[self.phase]}: {statement[:60]}")

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before


@pytest.fixture
def killer(monkeypatch) -> Iterator[Killer]:
    kill = Killer()
    read_spec, open_study, next_trial = joining.read_spec, joining.open_study, WorkerSession.next_trial

    def phased(phase, call):
        def wrapper(*args, **kwargs):
            with kill.during(phase):
                return call(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(joining, "read_spec", phased("spec", read_spec))
    monkeypatch.setattr(joining, "open_study", phased("join", open_study))
    monkeypatch.setattr(WorkerSession, "next_trial", phased("ask", next_trial))
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", kill)
    try:
        yield kill
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", kill)


def _start(url: str, study: str, npz, wait_for_db_s: float = 0.0) -> optuna.trial.FrozenTrial:
    """What `worker run` does up to its first trial; returns that trial."""
    session = WorkerSession(
        join(
            WorkerOptions(study_name=study, data_path=npz, storage_url=url, verbose=False, wait_for_db_s=wait_for_db_s)
        )
    )
    try:
        with SignalGuard() as guard:
            trial = session.next_trial(guard)
        assert trial is not None
        return trial
    finally:
        session.close()


def _spread(total: int, k: int) -> list[int]:
    """``k`` statement numbers out of ``1..total``, evenly spread, first and last included."""
    if total <= k:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (k - 1)) for i in range(k)})


def _statements_per_phase(url: str, npz, space, killer: Killer) -> dict[str, int]:
    create_study(
        "probe",
        CreateOptions(
            storage_url=url,
            data=npz,
            fingerprint=None,
            space_path=space,
            trials=2,
            heartbeat_interval=1,
            grace_period=30,
            seed_config=False,
        ),
    )
    _start(url, "probe", npz)
    counts = dict(killer.seen)
    assert set(counts) == set(PHASES), counts
    return counts


@pytest.mark.slow
def test_a_connection_killed_at_any_statement_of_start_up_does_not_crash_the_worker(
    tuner_home,
    pg_url,
    npz,
    space,
    killer,
    capsys,
):
    counts = _statements_per_phase(pg_url, npz, space, killer)
    targets = [(phase, n) for phase in PHASES for n in _spread(counts[phase], KILLS_PER_PHASE)]
    for i, target in enumerate(targets):
        name = f"s{i}"
        create_study(
            name,
            CreateOptions(
                storage_url=pg_url,
                data=npz,
                fingerprint=None,
                space_path=space,
                trials=2,
                heartbeat_interval=1,
                grace_period=30,
                seed_config=False,
            ),
        )
        killer.seen, killer.target, before = {}, target, len(killer.killed)
        try:
            trial = _start(pg_url, name, npz)  # --wait-for-db 0, the CLI's default
        except BaseException as exc:  # noqa: BLE001 - report which kill it was
            pytest.fail(f"kill at {target} crashed start-up: {type(exc).__name__}: {exc}")
        assert len(killer.killed) == before + 1, f"{target}: nothing was killed"
        trials = optuna.load_study(study_name=name, storage=pg_url).get_trials(deepcopy=False)
        assert [t.number for t in trials] == [trial.number] == [0], f"{target}: budget not exact"
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    print(f"{len(targets)} kills survived: {counts}")
