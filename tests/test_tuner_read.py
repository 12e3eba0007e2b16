"""The coordinator's read side: ``tuner list`` and ``status`` (``export``: tests/test_export.py,
``dashboard``: tests/test_dashboard.py).

Studies are built without training (tests/handmade.py): trials are asked and told by hand, with the
user attributes written through :mod:`contract.trial_attrs` exactly as a worker writes them.
"""

from __future__ import annotations

from collections import Counter
import datetime
import os
import subprocess

from handmade import FINGERPRINT, Builder, mixed, mixed_study  # noqa: F401 - mixed: a fixture
from helpers import BIN
import optuna
from optuna.trial import TrialState
import pytest
from rich.console import Console

from contract import trial_attrs
from contract.config import TrainConfig
import storage
from tuner import readers, status
from tuner.study import StudyError


def _read(b: Builder) -> status.StatusData:
    return status.read_status(b.rdb.engine, status.find_or_fail(b.rdb.engine, b.study.study_name, "x"))


def _console() -> Console:
    return Console(record=True, width=160)


def test_summarize_counts_best_and_running(mixed):  # noqa: F811 - the fixture
    b, before = mixed
    summary = status.summarize(_read(b), b.spec)
    after = readers.utc_now()

    expected = Counter(t.state.name for t in b.study.get_trials(deepcopy=False))
    assert summary.counts == {s.name: expected.get(s.name, 0) for s in status.STATES}
    assert summary.counts == {"COMPLETE": 3, "PRUNED": 1, "RUNNING": 2, "WAITING": 1, "FAIL": 1}
    assert summary.finished == 4
    assert (summary.budget, summary.sampler, summary.pruner) == (5, "tpe", "hyperband")
    assert summary.fingerprint == FINGERPRINT

    number, value = b.best()
    assert summary.best is not None
    assert summary.best.number == number
    assert summary.best.value == pytest.approx(value)
    assert summary.best.per_class_iou == b.completed[number][1]

    assert [(r.host, r.pid, r.gpu) for r in summary.running] == [("node-a", 11, 0), ("node-b", 22, 1)]
    for run in summary.running:
        assert (run.epoch, run.last_value) == b.reported[run.number]
        assert 0 <= run.age_s <= (after - before).total_seconds() + 1.0
        assert set(run.params) == set(b.spec.space.params)
    assert [r.phase for r in summary.running] == ["training", None]  # node-b's worker wrote none

    # Ages follow the given "now".
    later = status.summarize(_read(b), b.spec, now=after + datetime.timedelta(hours=2))
    assert later.counts == summary.counts
    for run in later.running:
        assert 7200 <= run.age_s <= 7200 + (after - before).total_seconds() + 1.0


def test_summarize_without_completed_trial(pg_schema_url):
    b = Builder(pg_schema_url, "fresh")
    b.end(TrialState.PRUNED)
    summary = status.summarize(_read(b), b.spec)
    assert summary.best is None
    assert summary.running == []
    assert summary.finished == 1
    b.close()


def test_format_age():
    assert [status.format_age(s) for s in (None, 5, 65, 3 * 3600 + 120, 2 * 86400 + 4 * 3600)] == [
        "-",
        "5s",
        "1m05s",
        "3h02m",
        "2d04h",
    ]


def test_print_status_shows_counts_best_and_running_hosts(mixed):  # noqa: F811 - the fixture
    b, _ = mixed
    url = b.url
    console = _console()
    status.print_status("mars", url, console=console)
    text = console.export_text()
    number, value = b.best()
    assert "mars" in text
    assert storage.mask_url(url) in text
    assert "progress: 4/5 finished" in text
    for state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL"):
        assert state in text
    assert f"{value:.4f} (trial {number})" in text
    assert "node-a" in text and "node-b" in text
    assert "training" in text  # node-a's phase
    assert FINGERPRINT[:12] in text


def test_render_status_fits_a_narrow_terminal():
    params = {
        "learning_rate": 0.000123456,
        "class_weights": "sqrt_inverse_frequency",
        "conventional_filters": 384,
        "multiscale_filters": 384,
        "early_stopping_patience": 31,
    }
    summary = status.StatusSummary(
        name="foreign",
        budget=None,
        sampler=None,
        pruner=None,
        fingerprint=None,
        counts={"COMPLETE": 1, "PRUNED": 0, "RUNNING": 1, "WAITING": 0, "FAIL": 2},
        best=status.BestTrial(number=0, value=0.5, per_class_iou={"1": 0.5, "4": None}, params=params),
        running=[
            status.RunningTrial(
                number=3,
                host="gpu-node-17",
                pid=4242,
                gpu=None,
                age_s=3725.0,
                phase="compiling",
                epoch=0,
                last_value=None,
                params=params,
            )
        ],
    )
    console = Console(record=True, width=80)
    status.render_status(summary, "sqlite:///x.db", console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "spec:     none" in text and "progress: 1/- finished" in text
    assert "1=0.5000 4=n/a" in text
    assert "gpu-node-17" in text and "1h02m" in text and "compiling" in text
    assert text.count("class_weights=sqrt_inverse_frequency") == 2  # best and running, unbroken
    assert "learning_rate=0.000123" in text


def test_print_status_unknown_study_lists_names(pg_schema_url):
    Builder(pg_schema_url, "alpha").close()
    with pytest.raises(StudyError, match=r"no study 'nosuch'.*alpha"):
        status.print_status("nosuch", pg_schema_url, console=_console())


def test_list_on_empty_database_creates_nothing(pg_url):
    console = _console()
    status.print_study_list(pg_url, console=console)
    assert "no studies" in console.export_text()
    assert storage.current_revision(pg_url) is None


def test_list_shows_budget_and_foreign_studies(pg_schema_url):
    b = mixed_study(pg_schema_url, "mars")
    foreign = optuna.create_study(study_name="foreign", storage=b.rdb, direction="maximize")
    foreign.add_trial(optuna.trial.create_trial(value=0.25, params={}, distributions={}))

    rows = {r.name: r for r in status.list_studies(pg_schema_url)}
    assert set(rows) == {"mars", "foreign"}
    _, best = b.best()
    assert (rows["mars"].finished, rows["mars"].budget, rows["mars"].running, rows["mars"].failed) == (4, 5, 2, 1)
    assert rows["mars"].best_value == pytest.approx(best)
    assert rows["mars"].created is not None
    assert (rows["foreign"].budget, rows["foreign"].finished, rows["foreign"].best_value) == (None, 1, 0.25)

    console = _console()
    status.print_study_list(pg_schema_url, console=console)
    text = console.export_text()
    assert "4/5" in text and "1/-" in text and f"{best:.4f}" in text
    b.close()


# -- the console script ---------------------------------------------------------------------------


def _tuner(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tuner"), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_cli_status_list_export(pg_schema_url, tmp_path):
    b = mixed_study(pg_schema_url)
    number, value = b.best()
    recorded = TrainConfig.from_dict(b.study.trials[number].user_attrs[trial_attrs.CONFIG])
    b.close()
    env = {**os.environ, "COLUMNS": "160"}

    done = _tuner("status", "mars", "--storage", pg_schema_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "progress: 4/5" in done.stdout and "node-b" in done.stdout

    done = _tuner("list", "--storage", pg_schema_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "mars" in done.stdout and "4/5" in done.stdout

    out = tmp_path / "best.yaml"
    done = _tuner("export", "mars", "--storage", pg_schema_url, "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert TrainConfig.load(out) == recorded

    done = _tuner("status", "nosuch", "--storage", pg_schema_url, env=env)
    assert done.returncode == 1
    expected = f"error: no study 'nosuch' in {storage.mask_url(pg_schema_url)} (studies: mars)"
    assert done.stderr.strip().splitlines() == [expected]
