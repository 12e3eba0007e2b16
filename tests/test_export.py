"""``tuner export``: the best (or picked) trial's configuration as YAML or JSON, and its model.

Studies are built without training (tests/handmade.py).
"""

from __future__ import annotations

import dataclasses
import json
import os

from handmade import Builder, FakeResult, mixed  # noqa: F401 - mixed: a fixture
from optuna.trial import TrialState
import pytest
import yaml

from contract import trial_attrs
from contract.artifacts import ArtifactDirError
from contract.config import ConfigError, TrainConfig
from tuner import export
from tuner.study import StudyError


def test_export_yaml_and_json_round_trip(mixed, tmp_path, capsys):  # noqa: F811 - the fixture
    b, _ = mixed
    url = b.url
    number, value = b.best()
    recorded = TrainConfig.from_dict(b.study.trials[number].user_attrs[trial_attrs.CONFIG])

    yaml_path = tmp_path / "best.yaml"
    assert export.export_best("mars", storage=url, fmt="yaml", output=yaml_path) == recorded
    assert TrainConfig.load(yaml_path) == recorded
    header = [line for line in yaml_path.read_text().splitlines() if line.startswith("#")]
    assert any(f"trial: {number}" in line for line in header)
    assert any(repr(value) in line for line in header)
    assert any("1=" in line and "4=n/a" in line for line in header)

    json_path = tmp_path / "best.json"
    export.export_best("mars", storage=url, fmt="json", output=json_path)
    assert TrainConfig.load(json_path) == recorded
    assert set(json.loads(json_path.read_text())) == {f.name for f in dataclasses.fields(TrainConfig)}

    capsys.readouterr()
    export.export_best("mars", storage=url, fmt="yaml")
    assert TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out)) == recorded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.yaml"]  # no temp files


def test_export_rebuilds_config_when_worker_did_not_record_it(pg_schema_url, tmp_path):
    b = Builder(pg_schema_url, "old")
    trial = b.complete(b.ask(epochs=1, record_config=False))
    out = tmp_path / "best.yaml"
    config = export.export_best("old", storage=pg_schema_url, output=out)
    params = b.study.trials[trial.number].params
    for name, param_value in params.items():
        assert getattr(config, name) == param_value
    for name, fixed_value in b.spec.space.fixed.items():
        assert getattr(config, name) == fixed_value
    assert TrainConfig.load(out) == config
    b.close()


def test_export_needs_a_completed_trial(pg_schema_url):
    b = Builder(pg_schema_url, "empty")
    b.end(TrialState.PRUNED)
    with pytest.raises(StudyError, match="no completed trial yet in study 'empty'"):
        export.export_best("empty", storage=pg_schema_url)
    b.close()


def test_export_unknown_study_lists_names(pg_schema_url):
    Builder(pg_schema_url, "alpha").close()
    Builder(pg_schema_url, "beta").close()
    with pytest.raises(StudyError, match=r"no study 'gamma'.*alpha, beta"):
        export.export_best("gamma", storage=pg_schema_url)


def test_export_rejects_bad_formats_before_touching_the_database(tmp_path):
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    with pytest.raises(ConfigError, match="unknown format 'toml'"):
        export.export_best("x", storage=unreachable, fmt="toml")
    with pytest.raises(ConfigError, match="--format json"):
        export.export_best("x", storage=unreachable, fmt="yaml", output=tmp_path / "c.json")


def test_write_atomic_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "best.yaml"
    target.write_text("old: true\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StudyError, match="cannot write .*best.yaml: No space left on device"):
        export.write_atomic(target, "new: true\n")
    assert target.read_text() == "old: true\n"
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]


def test_export_model_downloads_the_uploaded_artifact(pg_schema_url, tmp_path):
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    b = Builder(pg_schema_url, "withmodel")
    b.complete()  # an earlier best-so-far trial without a model
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    model_bytes = os.urandom(2048)
    (tmp_path / "trial.keras").write_bytes(model_bytes)
    trial = b.ask(epochs=1)
    artifact_id = upload_artifact(
        artifact_store=FileSystemArtifactStore(str(artifacts)),
        file_path=str(tmp_path / "trial.keras"),
        study_or_trial=trial,
    )
    trial.set_user_attr(trial_attrs.MODEL_ARTIFACT, artifact_id)
    trial_attrs.record_result(trial, FakeResult(best_miou=0.99, per_class_iou={1: 0.99, 2: 0.99, 3: 0.99, 4: 0.99}))
    b.study.tell(trial, 0.99)

    model = tmp_path / "out" / "best.keras"
    model.parent.mkdir()
    export.export_best(
        "withmodel", storage=pg_schema_url, output=tmp_path / "c.yaml", model=model, artifact_dir=artifacts
    )
    assert model.read_bytes() == model_bytes
    assert [p.name for p in model.parent.iterdir()] == ["best.keras"]

    with pytest.raises(StudyError, match="already exists"):
        export.export_best("withmodel", storage=pg_schema_url, model=model, artifact_dir=artifacts)
    with pytest.raises(StudyError, match="--artifact-dir"):
        export.export_best("withmodel", storage=pg_schema_url, model=tmp_path / "m2.keras")
    with pytest.raises(StudyError, match=r"name it \*\.keras"):
        export.export_best("withmodel", storage=pg_schema_url, model=tmp_path / "m2.h5", artifact_dir=artifacts)
    with pytest.raises(ArtifactDirError, match="is a file, not a directory"):
        export.export_best(
            "withmodel", storage=pg_schema_url, model=tmp_path / "m2.keras", artifact_dir=tmp_path / "trial.keras"
        )

    # The config cannot be written: the model is not left behind either.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StudyError, match="cannot write .*is a file, not a directory"):
        export.export_best(
            "withmodel",
            storage=pg_schema_url,
            output=blocker / "c.yaml",
            model=tmp_path / "m3.keras",
            artifact_dir=artifacts,
        )
    assert not (tmp_path / "m3.keras").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m3.keras")]
    b.close()


def test_export_model_without_artifact_is_a_clear_error(pg_schema_url, tmp_path):
    b = Builder(pg_schema_url, "nomodel")
    trial = b.complete()
    model = tmp_path / "best.keras"
    message = f"best trial {trial.number} has no saved model; run workers with --artifact-dir"
    with pytest.raises(StudyError, match=message):
        export.export_best("nomodel", storage=pg_schema_url, model=model, artifact_dir=tmp_path)
    assert not model.exists()
    b.close()
