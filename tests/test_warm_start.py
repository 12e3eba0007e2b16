"""Warm start: `tuner create` enqueues known configurations exactly once, and only fitting ones."""

from __future__ import annotations

from pathlib import Path
import re
from typing import Any

from helpers import invoke
import optuna
from optuna.trial import TrialState
import pytest
import yaml

from contract.study_spec import StudySpec
from contract.synth import write_npz
import storage
from tuner.cli import app
from tuner.study import CreateOptions, create_study, demo_space_path
from tuner.warm_start import WarmStartError, fit_params, read_config, seed_config_path
from worker.budget import ask_within_budget

pytestmark = pytest.mark.npz(40, seed=1)


def tuner(*args: object, url: str) -> Any:
    return invoke(app, *args, env={"TUNER_STORAGE": url})


def _load(url: str, name: str = "s") -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    rdb = storage.open_storage(url, heartbeat_interval=None)
    return optuna.load_study(study_name=name, storage=rdb), rdb


def _waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def _write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_seed_config_fits_the_default_space_and_matches_the_reference():
    from contract.space import SearchSpace
    from tuner.study import default_space_path

    values = read_config(seed_config_path())
    assert values["model"] == "multipath" and values["focal_gamma"] == 0.5
    assert values["learning_rate"] == 1e-3 and values["weight_decay"] == 1e-3
    assert values["batch_size"] == 128 and values["reduce_lr_factor"] == 0.5
    assert values["reduce_lr_patience"] == 25
    params = fit_params(SearchSpace.load(default_space_path()), values)
    assert params["learning_rate"] == 1e-3 and params["batch_size"] == 128


def test_create_enqueues_seed_and_files_exactly_once(pg_schema_url, npz, tmp_path):
    extra = _write(tmp_path / "known.yaml", {"learning_rate": 3e-4, "batch_size": 64, "tta": True})
    result = tuner(
        "create",
        "s",
        "--data",
        str(npz),
        "--trials",
        "5",
        "--enqueue",
        str(extra),
        "--enqueue",
        str(extra),
        url=pg_schema_url,
    )
    assert result.exit_code == 0, result.stderr
    assert "enqueued 2 configuration(s): known.yaml, seed_config" in result.stdout
    # Re-running an init job (--exist-ok) enqueues nothing more.
    kept = tuner("create", "s", "--data", str(npz), "--exist-ok", "--enqueue", str(extra), url=pg_schema_url)
    assert kept.exit_code == 0 and "kept as is" in kept.stdout
    study, rdb = _load(pg_schema_url)
    waiting = _waiting(study)
    assert [t.user_attrs["enqueued_from"] for t in waiting] == ["known.yaml", "seed_config"]
    assert waiting[0].params == {} and waiting[0].system_attrs["fixed_params"] == {
        "learning_rate": 3e-4,
        "batch_size": 64,
        "tta": True,
    }
    # A worker's budgeted ask gets them first, with their values; the rest is sampled.
    spec = StudySpec.of(study)
    worker_study = optuna.load_study(study_name="s", storage=rdb, sampler=spec.make_sampler("w"))
    trial, _ = ask_within_budget(worker_study, rdb, pg_schema_url, spec.n_trials)
    config = spec.space.sample(trial)
    assert (config.learning_rate, config.batch_size, config.tta) == (3e-4, 64, True)
    trial2, _ = ask_within_budget(worker_study, rdb, pg_schema_url, spec.n_trials)
    config2 = spec.space.sample(trial2)
    assert (config2.base_filters, config2.focal_gamma, config2.learning_rate) == (32, 0.5, 1e-3)
    assert _waiting(worker_study) == []
    # --overwrite makes a new study: enqueued once there too.
    replaced = tuner("create", "s", "--data", str(npz), "--overwrite", "--no-seed-config", url=pg_schema_url)
    assert replaced.exit_code == 0, replaced.stderr
    assert len(_load(pg_schema_url)[0].trials) == 0


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": 0.5}, r"learning_rate=0.5 is outside the study's search space \(range"),
        ({"batch_size": 100}, r"batch_size=100 is outside .*choices \[64, 128, 256\]"),
        ({"epochs": 10}, "the study fixes epochs=200"),
        ({"jit_compile": True}, "neither searched nor fixed"),
        ({"learnig_rate": 1e-3}, "unknown config key"),
    ],
)
def test_config_that_does_not_fit_is_one_line_and_writes_nothing(pg_url, npz, tmp_path, values, message):
    bad = _write(tmp_path / "bad.yaml", values)
    result = tuner("create", "s", "--data", str(npz), "--enqueue", str(bad), url=pg_url)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --enqueue ")
    assert re.search(message, lines[0]), lines[0]
    assert storage.current_revision(pg_url) is None  # checked before touching the database


def test_more_configs_than_budget_refused(pg_schema_url, npz, tmp_path):
    extra = _write(tmp_path / "known.yaml", {"learning_rate": 3e-4})
    with pytest.raises(Exception, match="exceed the budget of 1 trials"):
        create_study(
            "s",
            CreateOptions(
                storage_url=pg_schema_url, data=npz, fingerprint=None, space_path=None, trials=1, enqueue=[extra]
            ),
        )


def test_default_seed_config_skipped_when_the_space_cannot_hold_it(pg_schema_url, npz):
    summary = create_study(
        "s",
        CreateOptions(storage_url=pg_schema_url, data=npz, fingerprint=None, space_path=demo_space_path(), trials=3),
    )
    assert "seed configuration not enqueued (base_filters=32 is outside" in summary
    assert len(_load(pg_schema_url)[0].trials) == 0
    with pytest.raises(WarmStartError, match="--enqueue .*seed_config.yaml: base_filters=32"):
        create_study(
            "t",
            CreateOptions(
                storage_url=pg_schema_url,
                data=npz,
                fingerprint=None,
                space_path=demo_space_path(),
                trials=3,
                enqueue=[seed_config_path()],
            ),
        )


def test_keep_aliens_recorded_in_spec(pg_schema_url, tmp_path):
    path = tmp_path / "aliens.npz"
    write_npz(path, 60, seed=2)  # default: 6 aliens
    create_study("a", CreateOptions(storage_url=pg_schema_url, data=path, fingerprint=None, space_path=None, trials=2))
    create_study(
        "k",
        CreateOptions(
            storage_url=pg_schema_url, data=path, fingerprint=None, space_path=None, trials=2, remove_aliens=False
        ),
    )
    removed, kept = StudySpec.of(_load(pg_schema_url, "a")[0]), StudySpec.of(_load(pg_schema_url, "k")[0])
    assert removed.remove_aliens and not kept.remove_aliens
    assert removed.data_fingerprint != kept.data_fingerprint
    # A spec written before the field existed reads as "aliens removed".
    attr = removed.to_attr()
    del attr["remove_aliens"]
    assert StudySpec.from_attr(attr).remove_aliens is True
