"""The README's main command, shrunk: `tuner demo` on the embedded SQLite default."""

from __future__ import annotations

import os
import subprocess

from helpers import BIN
import optuna
import pytest
import yaml

from contract.config import TrainConfig
import storage
from tuner.demo import DEMO_ATTR
from tuner.study import CreateOptions, create_study

pytestmark = pytest.mark.slow  # real worker processes train models


def test_demo_runs_a_local_search_and_prints_the_best_config(tmp_path):
    env = {**os.environ, "TUNER_HOME": str(tmp_path / "home")}
    env.pop("TUNER_STORAGE", None)
    result = subprocess.run(
        [str(BIN / "tuner"), "demo", "--workers", "2", "--trials", "3", "--images", "48"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "w0 |" in out and "w1 |" in out  # two real worker processes took part
    assert "study budget reached" in out
    best = tmp_path / "home" / "demo-best.yaml"
    config = TrainConfig.load(best)  # the printed winner is a valid training config
    assert yaml.safe_load(best.read_text()) == config.to_dict()
    assert "best configuration" in out and f"learning_rate: {config.learning_rate}" in out
    # What a new user is told: no option the demo does not take, where the figures are, what compiles.
    assert "--no-seed-config" not in out + result.stderr
    report = tmp_path / "home" / "demo-report.html"
    assert f"report with figures (open it in a browser): {report}" in out and "tuner report demo -o" in out
    assert '<section id="curves">' in report.read_text()
    assert "phase: compiling (from " in out and "tens of seconds without output" in out
    assert (tmp_path / "home" / "tuner.db").exists()
    url = storage.resolve_url(f"sqlite:///{tmp_path / 'home' / 'tuner.db'}")
    study = optuna.load_study(study_name="demo", storage=storage.open_storage(url, heartbeat_interval=None))
    assert study.user_attrs[DEMO_ATTR] is True  # so the next `tuner demo` may replace it


def test_demo_never_replaces_a_study_it_did_not_create(tmp_path):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    create_study("demo", CreateOptions(storage_url=url, data=None, fingerprint="ab" * 32, space_path=None, trials=5))
    env = {**os.environ, "TUNER_HOME": str(tmp_path / "home"), "TUNER_STORAGE": url}
    result = subprocess.run(
        [str(BIN / "tuner"), "demo", "--workers", "1", "--trials", "1", "--images", "16"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "was not created by `tuner demo`" in lines[0], result.stderr
    study = optuna.load_study(study_name="demo", storage=storage.open_storage(url, heartbeat_interval=None))
    assert study.user_attrs["tuner_spec"]["n_trials"] == 5  # untouched
    assert not (tmp_path / "home").exists()  # no data generated either
