"""Faults lose no work: database outages, killed connections, frozen lock holders, replaced studies.

Outage tests stop and start a throw-away PostgreSQL cluster (tests/pgcluster.py); the others use
the machine's server. Trials are tiny (48 synthetic images, base filters 4).
"""

from __future__ import annotations

import os
from pathlib import Path
import random
import re
import signal
import subprocess
import sys
import threading
import time

from helpers import BIN, lose_first_reply, run_cli, study_trials, tiny_space, wait_for
import optuna
from optuna.trial import TrialState
from pgcluster import cluster_url, pg_cluster  # noqa: F401 - fixtures
import pytest
import sqlalchemy

from contract import trial_attrs
import storage

pytestmark = pytest.mark.npz(48, seed=3)

PREFIXED = re.compile(r"^\[[^\]]+:\d+\] ")
# Start-up (TensorFlow import, graph tracing) takes 10-20 s on an idle 2-core machine, minutes on a
# loaded one; a trial of EPOCHS is still training when the test acts on its first epoch.
FIRST_EPOCH_S = 400
EPOCHS = 8


def _space(tmp_path: Path, epochs: int) -> Path:
    """The tiny space, without early stopping: a trial runs ``epochs`` epochs."""
    return tiny_space(
        tmp_path / f"space-long-{epochs}.yaml", epochs=epochs, early_stopping_patience=epochs, reduce_lr_patience=epochs
    )


def _create(url: str, tmp_path: Path, npz: Path, *, trials: int, epochs: int, **options: str | bool) -> None:
    args = [
        "create",
        "s",
        "--data",
        str(npz),
        "--space",
        str(_space(tmp_path, epochs)),
        "--trials",
        str(trials),
        "--pruner",
        "none",
    ]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value] if value is not True else [f"--{key.replace('_', '-')}"]
    result = run_cli("tuner", *args, env={"TUNER_STORAGE": url})
    assert result.returncode == 0, result.stderr


class Live:
    """A ``worker run`` whose output is read as it comes (stdout and stderr apart)."""

    running: list[subprocess.Popen[str]] = []

    def __init__(self, url: str, npz: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "worker"), "run", "--study", "s", "--data", str(npz), "--quiet", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TUNER_STORAGE": url},
        )
        Live.running.append(self.proc)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(s, buf), daemon=True)
            for s, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, buf: list[str]) -> None:
        for line in stream:
            buf.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float, count: int = 1) -> None:
        wait_for(
            lambda: sum(pattern in line for line in self.out) >= count or self.proc.poll() is not None, timeout, pattern
        )
        assert sum(pattern in line for line in self.out) >= count, self.text()

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def text(self) -> str:
        return "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err)


@pytest.fixture(autouse=True)
def _no_leftover_workers():
    """A failed test must not leave workers training on the shared 2 cores."""
    yield
    for proc in Live.running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)
    Live.running.clear()


def _first_epoch(url: str) -> bool:
    return any(t.intermediate_values for t in study_trials(url))


# -- 1, 17: an outage shorter than the grace period loses nothing ---------------------------------


@pytest.mark.slow
def test_outage_shorter_than_grace_period_loses_nothing(pg_cluster, tmp_path, npz):  # noqa: F811
    """Grace 30 s, server down for 22 s mid-trial: the old retry gave up after 15 s (FAIL)."""
    url = pg_cluster.new_database()
    _create(url, tmp_path, npz, trials=1, epochs=EPOCHS, heartbeat_interval="5", grace_period="30")
    worker = Live(url, npz)
    try:
        wait_for(lambda: _first_epoch(url), FIRST_EPOCH_S, "the first epoch")
        pg_cluster.stop()
        time.sleep(22)
    finally:
        pg_cluster.start()
    code = worker.finish(timeout=600)
    text = worker.text()
    assert code == 0, text
    trials = study_trials(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE], text  # not failed, not retried
    assert trials[0].user_attrs[trial_attrs.EPOCHS_RUN] == EPOCHS
    assert "Traceback" not in text
    retries = [line for line in worker.out + worker.err if "retrying in" in line]
    assert retries and all(PREFIXED.match(line) for line in retries), text  # each printed once
    beats = [line for line in worker.out + worker.err if "heartbeat for" in line]
    assert beats and all(PREFIXED.match(line) and "heartbeat for trial 0 failed" in line for line in beats), text


# -- 4: longer than the grace period: one line, non-zero, trial left to the heartbeat -----------


@pytest.mark.slow
def test_outage_longer_than_grace_period_stops_with_one_line_and_trial_is_recovered(
    pg_cluster,  # noqa: F811
    tmp_path,
    npz,
):
    url = pg_cluster.new_database()
    _create(url, tmp_path, npz, trials=1, epochs=EPOCHS, heartbeat_interval="2", grace_period="8", max_retry="1")
    worker = Live(url, npz)
    try:
        wait_for(lambda: _first_epoch(url), FIRST_EPOCH_S, "the first epoch")
        pg_cluster.stop()
        code = worker.finish(timeout=120)
    finally:
        pg_cluster.start()
    text = worker.text()
    assert code == 1, text
    assert "Traceback" not in text
    errors = [line for line in worker.err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: database unavailable"), text
    assert "left RUNNING" in errors[0]
    assert [t.state for t in study_trials(url)] == [TrialState.RUNNING]

    time.sleep(8)  # the grace period passes without a heartbeat: the next worker recovers it
    rescuer = Live(url, npz)
    assert rescuer.finish(timeout=600) == 0, rescuer.text()
    trials = study_trials(url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params
    assert "retry of trial 0" in rescuer.text()


# -- 5: --wait-for-db ---------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_waits_for_the_database_at_start(pg_cluster, tmp_path, npz):  # noqa: F811
    url = pg_cluster.new_database()
    _create(url, tmp_path, npz, trials=1, epochs=2)
    pg_cluster.stop()
    try:
        worker = Live(url, npz, "--wait-for-db", "90")
        worker.wait_line("waiting for the database", timeout=FIRST_EPOCH_S, count=2)  # a line every few seconds
        assert worker.proc.poll() is None
    finally:
        pg_cluster.start()
    code = worker.finish(timeout=600)
    assert code == 0, worker.text()
    assert [t.state for t in study_trials(url)] == [TrialState.COMPLETE]
    # Without it (TUNER_WAIT_FOR_DB=0 by default) an unreachable database fails at once.
    pg_cluster.stop()
    try:
        quick = Live(url, npz)
        assert quick.finish(timeout=60) == 1
        assert len([line for line in quick.err if line.startswith("error: ")]) == 1, quick.text()
        assert "Traceback" not in quick.text()
    finally:
        pg_cluster.start()


# -- 3: a worker frozen inside the budget lock ----------------------------------------------------

_HOLDER = """
import sys, time, optuna
import storage
from worker.budget import budget_lock
url = sys.argv[1]
rdb = storage.open_storage(url, heartbeat_interval=1, grace_period=int(sys.argv[2]))
study = optuna.load_study(study_name="s", storage=rdb)
with budget_lock(study, rdb, url) as held:
    print("held", flush=True)
    while True:  # alive: keeps the lock however long, until the test freezes it
        held.check()
        time.sleep(1)
"""


@pytest.mark.slow
def test_frozen_lock_holder_loses_the_lock_and_waiting_is_logged_and_interruptible(cluster_url, tmp_path, npz):  # noqa: F811
    grace = 15
    _create(cluster_url, tmp_path, npz, trials=1, epochs=2, heartbeat_interval="2", grace_period=str(grace))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, cluster_url, str(grace)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        stuck, waiter = Live(cluster_url, npz), Live(cluster_url, npz)
        waiter.wait_line("waiting", timeout=FIRST_EPOCH_S)  # logged, naming the holder
        assert "for the lock 'mars-tuner:budget:s' (held by " in "\n".join(waiter.out), waiter.text()
        holder.send_signal(signal.SIGSTOP)  # frozen inside the lock, its connection still open
        frozen_at = time.monotonic()
        waiter.proc.send_signal(signal.SIGTERM)  # interruptible while waiting
        assert waiter.finish(timeout=15) == 0, waiter.text()
        assert "stopped by SIGTERM" in waiter.text()
        stuck.wait_line("trial 0 started", timeout=120)  # the server took the lock back
        assert time.monotonic() - frozen_at >= grace - 2
        code = stuck.finish(timeout=600)
        assert code == 0, stuck.text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.send_signal(signal.SIGCONT)
        holder.wait(timeout=30)
    assert [t.state for t in study_trials(cluster_url)] == [TrialState.COMPLETE]


# -- 2: killed connections never crash a worker ------------------------------------------------


@pytest.mark.slow
def test_workers_survive_connections_killed_every_fraction_of_a_second(pg_cluster, cluster_url, tmp_path, npz):  # noqa: F811
    budget = 4
    # An ask must fit between two kills: on a loaded 2-core machine it takes over a second.
    _create(cluster_url, tmp_path, npz, trials=budget, epochs=3, heartbeat_interval="2", grace_period="60")
    workers = [Live(cluster_url, npz) for _ in range(3)]
    # Start-up is not retried (a worker that cannot join says so): kill once all are in the loop.
    wait_for(
        lambda: all(
            any("started" in line or "budget" in line for line in w.out) or w.proc.poll() is not None for w in workers
        ),
        FIRST_EPOCH_S,
        "every worker's first trial",
    )
    stop = threading.Event()
    killed = []

    def killer() -> None:
        rng = random.Random(0)
        while not stop.wait(rng.uniform(0.5, 2.0)):
            killed.append(pg_cluster.kill_connections(cluster_url))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        codes = [w.finish(timeout=900) for w in workers]
    finally:
        stop.set()
        thread.join()
    outputs = [w.text() for w in workers]
    assert sum(killed) > 10, killed
    assert codes == [0, 0, 0], "\n".join(outputs)
    assert "Traceback" not in "".join(outputs)
    trials = study_trials(cluster_url)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget  # exact, whatever was killed
    assert not [t for t in trials if t.state == TrialState.RUNNING]


# -- 6: a tell whose reply was lost -----------------------------------------------------------


def _link(url: str, tmp_path: Path, npz: Path):
    """What a joined worker's trials talk to the study through (worker.study_link)."""
    from tuner.study import CreateOptions, create_study
    from worker.joining import read_spec
    from worker.study_link import StudyLink

    create_study(
        "s",
        CreateOptions(
            storage_url=url,
            data=npz,
            fingerprint=None,
            space_path=_space(tmp_path, 2),
            trials=2,
            pruner="none",
            heartbeat_interval=1,
            grace_period=5,
        ),
    )
    spec = read_spec(url, "s")
    rdb = storage.open_storage(url, heartbeat_interval=1, grace_period=5)
    return StudyLink(optuna.load_study(study_name="s", storage=rdb), rdb, url, spec.grace_period, print)


def test_tell_whose_reply_was_lost_is_not_reported_as_dropped(pg_schema_url, tmp_path, npz):
    link = _link(pg_schema_url, tmp_path, npz)
    try:
        trial = link.study.ask()
        lose_first_reply(link.study)
        link.tell(trial, values=0.5)  # before: UpdateFinishedTrialError -> "dropped"
        assert [(t.state, t.value) for t in study_trials(pg_schema_url)] == [(TrialState.COMPLETE, 0.5)]
    finally:
        link.close()


def test_interrupted_trial_whose_fail_reply_was_lost_is_still_requeued_once(pg_schema_url, tmp_path, npz):
    from worker.requeue import requeue

    link = _link(pg_schema_url, tmp_path, npz)
    try:
        trial = link.study.ask()
        trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)
        lose_first_reply(link.study)
        requeue(link, trial, interrupted="SIGTERM")
        requeue(link, trial, interrupted="SIGTERM")  # a second attempt adds nothing
        trials = study_trials(pg_schema_url)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
        assert trials[1].user_attrs[trial_attrs.RETRY_OF] == 0
    finally:
        link.close()


# -- 7: studies replaced under running workers; concurrent creation ----------------------------


@pytest.mark.slow
def test_overwrite_while_a_worker_runs_stops_it_with_one_line(cluster_url, tmp_path, npz):  # noqa: F811
    _create(cluster_url, tmp_path, npz, trials=1, epochs=EPOCHS)
    worker = Live(cluster_url, npz)
    wait_for(lambda: _first_epoch(cluster_url), FIRST_EPOCH_S, "the first epoch")
    _create(cluster_url, tmp_path, npz, trials=1, epochs=EPOCHS, overwrite=True)
    code = worker.finish(timeout=120)
    assert code == 1, worker.text()
    assert [line for line in worker.err if line.startswith("error:")] == [
        "error: study 's' was replaced or deleted (`tuner create --overwrite`?); stopping this worker"
    ], worker.text()
    assert "Traceback" not in worker.text()
    assert study_trials(cluster_url) == []  # the new study is untouched


def test_concurrent_create_exist_ok_makes_one_study_and_never_shows_a_half_made_one(pg_schema_url, tmp_path, npz):
    from tuner.study import CreateOptions, create_study

    space = _space(tmp_path, 2)
    storage.init_schema(pg_schema_url)
    half_made = []
    done = threading.Event()
    engine = sqlalchemy.create_engine(pg_schema_url)

    def watch() -> None:  # what a worker loading the study by name could see
        query = sqlalchemy.text(
            "SELECT count(*) FROM studies s WHERE s.study_name = 's' AND NOT EXISTS "
            "(SELECT 1 FROM study_user_attributes a WHERE a.study_id = s.study_id AND a.key = 'tuner_spec')"
        )
        with engine.connect() as conn:
            while not done.is_set():
                half_made.append(conn.execute(query).scalar())
                conn.commit()

    def create(errors: list[BaseException], barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            create_study(
                "s",
                CreateOptions(
                    storage_url=pg_schema_url, data=npz, fingerprint=None, space_path=space, trials=1, exist_ok=True
                ),
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(3):
            if _names(pg_schema_url):
                rdb = storage.open_storage(pg_schema_url, heartbeat_interval=None)
                optuna.delete_study(study_name="s", storage=rdb)
                rdb.engine.dispose()
            errors: list[BaseException] = []
            barrier = threading.Barrier(4)
            threads = [threading.Thread(target=create, args=(errors, barrier)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert errors == []
            assert _names(pg_schema_url) == ["s"]
    finally:
        done.set()
        watcher.join(timeout=10)
        engine.dispose()
    assert len(half_made) > 100 and max(half_made) == 0


def _names(url: str) -> list[str]:
    rdb = storage.open_storage(url, heartbeat_interval=None)
    try:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False))
    finally:
        rdb.engine.dispose()


# -- 8: a failed model upload is a warning ------------------------------------------------------


@pytest.mark.slow
def test_full_artifact_disk_keeps_the_result_and_leaves_no_partial_file(cluster_url, tmp_path, npz):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], check=True)
    try:
        _create(cluster_url, tmp_path, npz, trials=1, epochs=2)
        worker = Live(cluster_url, npz, "--artifact-dir", str(full))
        code = worker.finish(timeout=600)
        text = worker.text()
        assert code == 0, text
        assert "Traceback" not in text
        assert any("model upload" in line and "failed" in line and PREFIXED.match(line) for line in worker.out), text
        trials = study_trials(cluster_url)
        assert [t.state for t in trials] == [TrialState.COMPLETE]
        assert trials[0].value == pytest.approx(trials[0].user_attrs[trial_attrs.MIOU])
        assert trial_attrs.MODEL_ARTIFACT not in trials[0].user_attrs
        assert list(full.iterdir()) == []  # no partial artifact
    finally:
        subprocess.run(["umount", str(full)], check=False)
