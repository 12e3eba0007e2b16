"""The product end to end: real worker processes sharing one study in the real PostgreSQL.

Models are tiny (base filters 4, 2-3 epochs, 48 synthetic images) so each trial costs a few
seconds of CPU, most of it graph tracing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import time
import zipfile

from helpers import BIN, run_cli, study_trials, tiny_space, wait_for
import optuna
from optuna.trial import TrialState
import pytest
import yaml

from contract import trial_attrs
from contract.synth import write_npz
import storage

pytestmark = [pytest.mark.slow, pytest.mark.npz(48, seed=3)]  # real worker processes train models


def _space(tmp_path: Path, epochs: int) -> Path:
    return tiny_space(tmp_path / f"space-{epochs}.yaml", epochs=epochs)


def _cli(name: str, *args: str, url: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(name, *args, env={"TUNER_STORAGE": url}, timeout=timeout)


def _create(url: str, tmp_path: Path, npz: Path, *, trials: int, epochs: int = 2, **options: str) -> None:
    args = ["create", "s", "--data", str(npz), "--space", str(_space(tmp_path, epochs)), "--trials", str(trials)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value]
    result = _cli("tuner", *args, url=url)
    assert result.returncode == 0, result.stderr


def _worker(url: str, npz: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "worker"), "run", "--study", "s", "--data", str(npz), "--quiet", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TUNER_STORAGE": url},
    )


def test_three_workers_share_budget_exactly_and_survive_dropped_connections(pg_url, tmp_path, npz, drop_connections):
    budget = 7
    _create(pg_url, tmp_path, npz, trials=budget, epochs=3)
    workers = [_worker(pg_url, npz) for _ in range(3)]
    # Once trials are running, the database drops every connection: workers must reconnect.
    wait_for(lambda: any(t.intermediate_values for t in study_trials(pg_url)), 180, "a reported epoch")
    assert drop_connections(pg_url) >= 1
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(outputs)

    trials = study_trials(pg_url)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget
    assert len(trials) == budget  # nobody overran the budget, nothing failed
    assert sorted(t.number for t in trials) == list(range(budget))
    hosts = {t.user_attrs[trial_attrs.WORKER]["pid"] for t in trials}
    assert len(hosts) >= 2, "the trials were not shared between workers"
    for t in trials:
        assert t.intermediate_values, f"trial {t.number} reported no epoch"
        assert set(t.intermediate_values) <= {1, 2, 3}
    for t in (t for t in trials if t.state == TrialState.COMPLETE):
        assert 0.0 <= t.value <= 1.0
        assert t.value == pytest.approx(t.user_attrs[trial_attrs.MIOU])
        assert set(t.user_attrs[trial_attrs.PER_CLASS_IOU]) == {"1", "2", "3", "4"}
        assert t.user_attrs[trial_attrs.EPOCHS_RUN] == 3
        assert t.user_attrs[trial_attrs.CONFIG]["learning_rate"] == t.params["learning_rate"]
        assert t.user_attrs[trial_attrs.PROVENANCE]["versions"]["optuna"] == optuna.__version__
    assert "study budget reached" in "".join(outputs)


def test_sigkilled_worker_trial_is_failed_and_retried(pg_url, tmp_path, npz):
    _create(
        pg_url,
        tmp_path,
        npz,
        trials=1,
        epochs=40,
        heartbeat_interval="1",
        grace_period="4",
        max_retry="1",
        pruner="none",
    )
    victim = _worker(pg_url, npz)
    wait_for(lambda: any(t.intermediate_values for t in study_trials(pg_url)), 180, "the first epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert [t.state for t in study_trials(pg_url)] == [TrialState.RUNNING]  # left behind by the dead

    rescuer = _worker(pg_url, npz)
    out, _ = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, out
    trials = study_trials(pg_url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params
    assert "retry of trial 0" in out


def test_sigterm_fails_trial_cleanly_and_requeues_it(pg_url, tmp_path, npz):
    from storage.locks import named_lock

    _create(pg_url, tmp_path, npz, trials=1, epochs=40, pruner="none")
    proc = _worker(pg_url, npz)
    wait_for(lambda: any(t.intermediate_values for t in study_trials(pg_url)), 180, "the first epoch")
    # FAIL and re-queue happen under the budget lock (a worker counting between the two would
    # see a free slot): while the test holds it, the trial stays RUNNING.
    with named_lock(pg_url, "mars-tuner:budget:s"):
        proc.send_signal(signal.SIGTERM)
        time.sleep(2)
        assert proc.poll() is None
        assert [t.state for t in study_trials(pg_url)] == [TrialState.RUNNING]
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    trials = study_trials(pg_url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs[trial_attrs.INTERRUPTED] == "SIGTERM"
    assert trials[1].user_attrs[trial_attrs.RETRY_OF] == 0
    assert "interrupted by SIGTERM" in out


def test_worker_frozen_past_the_grace_period_drops_its_result_and_carries_on(pg_url, tmp_path, npz):
    _create(
        pg_url,
        tmp_path,
        npz,
        trials=1,
        epochs=40,
        heartbeat_interval="1",
        grace_period="4",
        max_retry="1",
        pruner="none",
    )
    frozen = _worker(pg_url, npz)
    wait_for(lambda: any(t.intermediate_values for t in study_trials(pg_url)), 180, "the first epoch")
    frozen.send_signal(signal.SIGSTOP)  # e.g. a VM paused, or a network partition
    try:
        rescuer = _worker(pg_url, npz)
        wait_for(
            lambda: [t.state for t in study_trials(pg_url)][:1] == [TrialState.FAIL],
            120,
            "the frozen worker's trial to be failed as stale",
        )
    finally:
        frozen.send_signal(signal.SIGCONT)
    out, _ = frozen.communicate(timeout=600)
    rescued, _ = rescuer.communicate(timeout=600)
    assert frozen.returncode == 0, out
    assert rescuer.returncode == 0, rescued
    assert "result is dropped" in out and "Traceback" not in out
    assert [t.state for t in study_trials(pg_url)] == [TrialState.FAIL, TrialState.COMPLETE]


def test_worker_with_other_data_is_refused(pg_url, tmp_path, npz):
    _create(pg_url, tmp_path, npz, trials=1)
    other = tmp_path / "other.npz"
    write_npz(other, 48, seed=4)
    result = _cli("worker", "run", "--study", "s", "--data", str(other), url=pg_url)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to join" in lines[0] and "fingerprint" in lines[0]
    assert study_trials(pg_url) == []


def test_worker_with_unusable_artifact_dir_is_refused_before_training(pg_url, tmp_path, npz):
    _create(pg_url, tmp_path, npz, trials=1)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = _cli("worker", "run", "--study", "s", "--data", str(npz), "--artifact-dir", str(a_file), url=pg_url)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a file, not a directory" in lines[0], result.stderr
    assert study_trials(pg_url) == []


def test_worker_on_unknown_study_is_one_line(pg_url, npz):
    storage.init_schema(pg_url)
    result = _cli("worker", "run", "--study", "nope", "--data", str(npz), url=pg_url)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "no study 'nope'" in result.stderr


def test_export_retrains_to_the_same_score(pg_url, tmp_path, npz):
    _create(pg_url, tmp_path, npz, trials=2, epochs=2, pruner="none")
    artifacts = tmp_path / "artifacts"
    run = _cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(npz),
        "--quiet",
        "--artifact-dir",
        str(artifacts),
        url=pg_url,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    best = max((t for t in study_trials(pg_url) if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert trial_attrs.MODEL_ARTIFACT in best.user_attrs  # each new best model is uploaded

    model = tmp_path / "best.keras"
    fetched = _cli(
        "tuner",
        "export",
        "s",
        "--artifact-dir",
        str(artifacts),
        "--model",
        str(model),
        "-o",
        str(tmp_path / "with-model.yaml"),
        url=pg_url,
    )
    assert fetched.returncode == 0, fetched.stderr
    with zipfile.ZipFile(model) as archive:  # a Keras v3 model file
        assert "config.json" in archive.namelist()
    from worker.training.saved import read_info

    info = read_info(model)  # the upload records what its trial trained, TTA among it
    assert info.config == best.user_attrs[trial_attrs.CONFIG] and info.all_data is False
    assert info.validation_miou == pytest.approx(best.value, abs=1e-12)

    exported = tmp_path / "best.yaml"
    result = _cli("tuner", "export", "s", "-o", str(exported), url=pg_url)
    assert result.returncode == 0, result.stderr
    # what the trial trained, plus the learning rate of each epoch up to its best (for --all-data)
    schedule = best.user_attrs[trial_attrs.LEARNING_RATES][: best.user_attrs[trial_attrs.BEST_EPOCH]]
    assert yaml.safe_load(exported.read_text()) == {**best.user_attrs[trial_attrs.CONFIG], "lr_schedule": schedule}

    out = tmp_path / "result.json"
    retrain = _cli(
        "worker",
        "train",
        "--config",
        str(exported),
        "--data",
        str(npz),
        "--quiet",
        "--result",
        str(out),
        url=pg_url,
        timeout=600,
    )
    assert retrain.returncode == 0, retrain.stdout + retrain.stderr
    # Seeded, deterministic ops on CPU: the retrained winner scores what its trial scored.
    assert json.loads(out.read_text())["best_miou"] == pytest.approx(best.value, abs=1e-6)
