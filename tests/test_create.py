"""`tuner create` on the real PostgreSQL: what it stores, what it refuses, what it leaves behind."""

from __future__ import annotations

import subprocess
from typing import Any

from helpers import invoke, run_cli
import optuna
import pytest

from contract.data import fingerprint_npz
from contract.study_spec import StudySpec
import storage
from tuner.cli import app
from tuner.study import CreateOptions, StudyError, create_study

pytestmark = pytest.mark.npz(40, seed=1)


def tuner_process(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """The console script, as a user runs it."""
    return run_cli("tuner", *args, env={"TUNER_STORAGE": url}, timeout=120)


def tuner(*args: object, url: str) -> Any:
    """The same command in-process (Typer's CliRunner), for what it prints and its exit code."""
    return invoke(app, *args, env={"TUNER_STORAGE": url})


def _load(url: str, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage.open_storage(url, heartbeat_interval=None))


@pytest.mark.slow
def test_create_stores_spec_and_refuses_to_overwrite(pg_url, npz):
    result = tuner_process(
        "create",
        "s",
        "--data",
        str(npz),
        "--trials",
        "12",
        "--seed",
        "7",
        "--pruner",
        "median",
        "--min-epochs",
        "4",
        url=pg_url,
    )
    assert result.returncode == 0, result.stderr
    assert "created study 's'" in result.stdout
    study = _load(pg_url)
    spec = StudySpec.of(study)
    assert spec.n_trials == 12 and spec.seed == 7 and spec.pruner == "median"
    assert spec.data_fingerprint == fingerprint_npz(npz)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert isinstance(spec.make_pruner(), optuna.pruners.MedianPruner)
    assert spec.min_epochs == 4
    assert "learning_rate" in spec.space.params

    again = tuner_process("create", "s", "--data", str(npz), url=pg_url)
    assert again.returncode == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr
    kept = tuner_process("create", "s", "--data", str(npz), "--exist-ok", url=pg_url)
    assert kept.returncode == 0 and "kept as is" in kept.stdout
    assert StudySpec.of(_load(pg_url)).n_trials == 12

    replaced = tuner_process("create", "s", "--data", str(npz), "--trials", "3", "--overwrite", url=pg_url)
    assert replaced.returncode == 0, replaced.stderr
    assert StudySpec.of(_load(pg_url)).n_trials == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "/nonexistent/space.yaml"], "cannot read search space"),
        (["--pruner", "asha"], "'asha' is not one of 'hyperband', 'median', 'none'"),
        (["--sampler", "cmaes"], "'cmaes' is not one of 'tpe', 'random'"),
        (["--heartbeat-interval", "60", "--grace-period", "30"], "grace period (30s) must exceed"),
        (["--min-epochs", "201"], "min epochs before pruning must be in 1..200"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(pg_url, npz, args, message):
    result = tuner("create", "s", "--data", str(npz), *args, url=pg_url)
    assert result.exit_code in (1, 2)  # 2: a usage error click found (bad choice)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert storage.current_revision(pg_url) is None  # validated before touching the database


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("", [], "the study name is empty"),
        (" s", [], "starts or ends with whitespace"),
        ("n" * 600, [], "at most 512 fit"),
        ("s", ["--fingerprint", "not hex at all"], "is not a data fingerprint"),
        ("s", ["--fingerprint", ""], "is not a data fingerprint"),
    ],
)
def test_bad_name_or_fingerprint_is_one_line_and_writes_nothing(pg_url, npz, name, args, message):
    data = [] if args else ["--data", str(npz)]
    result = tuner("create", name, *data, *args, url=pg_url)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert storage.current_revision(pg_url) is None


def test_bad_data_file_is_refused(pg_url, tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    result = tuner("create", "s", "--data", str(broken), url=pg_url)
    assert result.exit_code == 1 and "broken.npz" in result.stderr
    assert storage.current_revision(pg_url) is None


def test_exactly_one_data_source_required(pg_url, npz):
    with pytest.raises(StudyError, match="exactly one of --data"):
        create_study("s", CreateOptions(storage_url=pg_url, data=None, fingerprint=None, space_path=None, trials=1))
    with pytest.raises(StudyError, match="exactly one of --data"):
        create_study("s", CreateOptions(storage_url=pg_url, data=npz, fingerprint="ab" * 32, space_path=None, trials=1))


def test_exist_ok_with_other_data_is_refused(pg_schema_url, npz):
    create_study(
        "s", CreateOptions(storage_url=pg_schema_url, data=None, fingerprint="ab" * 32, space_path=None, trials=1)
    )
    with pytest.raises(StudyError, match="different data fingerprint"):
        create_study(
            "s",
            CreateOptions(
                storage_url=pg_schema_url, data=npz, fingerprint=None, space_path=None, trials=1, exist_ok=True
            ),
        )


def _pruned_epochs(spec: StudySpec) -> list[int]:
    """20 good fake trials, then 10 bad ones reported epoch by epoch: where were they pruned?

    Several bad trials, because Hyperband spreads trials over brackets whose first rung is
    min_epochs, 3 x min_epochs, ...
    """
    study = optuna.create_study(
        direction="maximize", pruner=spec.make_pruner(), sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for i in range(20):
        trial = study.ask()
        for step in range(1, 10):
            trial.report(0.8 + i / 100, step)
            trial.should_prune()  # as the worker does: Hyperband records rungs here
        study.tell(trial, 0.8 + i / 100)
    pruned = []
    for _ in range(10):
        bad = study.ask()
        for step in range(1, 10):
            bad.report(0.0, step)
            if bad.should_prune():
                pruned.append(step)
                break
        study.tell(bad, state=optuna.trial.TrialState.PRUNED)
    return pruned


@pytest.mark.parametrize("pruner", ["hyperband", "median"])
def test_min_epochs_is_where_pruning_may_start(pruner):
    from contract.space import SearchSpace
    from tuner.study import default_space_path

    space = SearchSpace.load(default_space_path())
    early = _pruned_epochs(StudySpec(space=space, data_fingerprint="f", n_trials=30, pruner=pruner))
    late = _pruned_epochs(StudySpec(space=space, data_fingerprint="f", n_trials=30, pruner=pruner, min_epochs=3))
    assert early and min(early) == 1
    assert late and min(late) == 3
