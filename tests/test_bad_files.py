"""Bad files and corrupt stored specs: one `error:` line, never a traceback.

Covers what a user can hand the CLIs (binary files, YAML with the wrong shapes or syntax errors,
non-string keys) and what another tuner version may have left in a study's user attributes.
Studies live in SQLite files under ``tmp_path``: the defects are in parsing, not in the backend.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from helpers import invoke, one_cli_error
import optuna
import pytest

from contract.config import ConfigError, TrainConfig
from contract.study_spec import SPEC_ATTR, SpecError, StudySpec
import storage
from tuner.cli import app as tuner_app
from tuner.study import CreateOptions, create_study
from worker.cli import app as worker_app

pytestmark = pytest.mark.npz(40, seed=0)

BINARY = bytes(range(128, 256))  # not UTF-8 anywhere


def run(tool: str, *args: str, cwd: Path) -> Any:
    """``tool``'s command in-process, in ``cwd``; the embedded default under it, whatever
    TUNER_STORAGE the environment has."""
    with contextlib.chdir(cwd):
        return invoke(
            {"tuner": tuner_app, "worker": worker_app}[tool],
            *args,
            env={"TUNER_STORAGE": None, "TUNER_HOME": str(cwd / "tuner-home")},
        )


# --- training config files (worker train --config) --------------------------------------------


def test_binary_config_is_not_a_utf8_text_file(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_bytes(BINARY)
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(path)
    assert str(info.value) == f"cannot read config {path}: not a UTF-8 text file"


def test_config_keys_must_be_strings(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("1: 2\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(path)
    assert str(info.value) == f"{path}: config keys must be field names (strings), got 1"
    with pytest.raises(ConfigError, match="got None"):
        TrainConfig.from_dict({None: 1, "epochs": 3})


def test_config_parse_errors_name_the_problem_and_its_position(tmp_path: Path):
    path = tmp_path / "config.yml"
    path.write_text("epochs: 3\nbatch_size: [1,\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(path)
    assert str(info.value) == (
        f"cannot parse config {path}: line 3, column 1: expected the node content, but found '<stream end>'"
    )
    as_json = tmp_path / "config.json"
    as_json.write_text('{"epochs": 3,\n')
    with pytest.raises(ConfigError, match=r"cannot parse config .*config.json: .*line 2 column 1"):
        TrainConfig.load(as_json)


@pytest.mark.parametrize(
    "content, message",
    [
        (BINARY, "cannot read config {path}: not a UTF-8 text file"),
        (b"1: 2\n", "{path}: config keys must be field names (strings), got 1"),
        (b"epochs: [1,\n", "cannot parse config {path}: line 2, column 1: expected the node content"),
    ],
)
def test_worker_train_bad_config_is_one_line(tmp_path: Path, npz: Path, content: bytes, message: str):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    line = one_cli_error(run("worker", "train", "--config", str(path), "--data", str(npz), cwd=tmp_path))
    assert line.startswith("error: " + message.format(path=path)), line


# --- search space files (tuner create --space) ------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"fixed: [1, 2]\nparams: {tta: {type: bool}}\n", "'fixed' must be a mapping"),
        (b"fixed: abc\nparams: {tta: {type: bool}}\n", "'fixed' must be a mapping"),
        (b"params: {epochs: {type: categorical, choices: [1, 2]}}\n", "params.epochs: must be type int"),
        (b"1: 2\n", "top level: key 1 is not a name"),
        (BINARY, "not a UTF-8 text file"),
        (b"params: [1,\n", "line 2, column 1: expected the node content"),
    ],
)
def test_tuner_create_bad_space_is_one_line_and_writes_nothing(tmp_path: Path, npz: Path, content: bytes, message: str):
    space = tmp_path / "bad.yaml"
    space.write_bytes(content)
    db = tmp_path / "t.db"
    result = run(
        "tuner", "create", "s", "--data", str(npz), "--space", str(space), "--storage", f"sqlite:///{db}", cwd=tmp_path
    )
    assert message in one_cli_error(result)
    assert not db.exists()  # validated before touching the database


# --- the spec stored in a study (tuner status / export, worker run) ---------------------------


@pytest.fixture
def study_url(tmp_path: Path, npz: Path) -> str:
    """A SQLite study 's' made by `tuner create`, with a small space (epochs 1..4)."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  epochs: {type: int, low: 1, high: 4}\n  tta: {type: bool}\n")
    create_study("s", CreateOptions(storage_url=url, data=npz, fingerprint=None, space_path=space, trials=3))
    return url


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=storage.open_storage(url, heartbeat_interval=None))


def _corrupt(url: str, change: Any) -> None:
    study = _study(url)
    value = dict(study.user_attrs[SPEC_ATTR])
    study.set_user_attr(SPEC_ATTR, change(value))


def _with(key: str, value: Any):
    return lambda spec: {**spec, key: value}


def _without(key: str):
    return lambda spec: {k: v for k, v in spec.items() if k != key}


@pytest.mark.parametrize(
    "change, detail",
    [
        (_with("new_field", 1), "unexpected field 'new_field'"),
        (_without("space"), "missing field 'space'"),
        (_without("n_trials"), "missing field 'n_trials'"),
        (_with("n_trials", "x"), "n_trials must be int, got 'x'"),
        (_with("n_trials", True), "n_trials must be int, got True"),
        (_with("seed", 1.5), "seed must be int, got 1.5"),
        (_with("data_fingerprint", None), "data_fingerprint must be str, got None"),
        (_with("sampler", "cmaes"), "sampler must be one of tpe, random"),
        (_with("space", [1]), "space: a search space must be a mapping"),
        (
            _with("space", {"params": {"epochs": {"type": "categorical", "choices": [1, 2]}}}),
            "space: params.epochs: must be type int",
        ),
        (lambda spec: [spec], "expected a mapping, got list"),
    ],
)
def test_unreadable_spec_is_one_spec_error(study_url: str, change, detail: str):
    assert StudySpec.of(_study(study_url)).n_trials == 3
    _corrupt(study_url, change)
    with pytest.raises(SpecError) as info:
        StudySpec.of(_study(study_url))
    message = str(info.value)
    assert message.startswith(f"study 's' has an unreadable tuner spec: {detail}"), message
    assert message.endswith(" (written by another tuner version?)") and "\n" not in message


@pytest.mark.parametrize(
    "command",
    [["tuner", "status", "s"], ["tuner", "export", "s"], ["worker", "run", "--study", "s", "--data", "{npz}"]],
)
def test_clis_report_a_corrupt_spec_in_one_line(study_url: str, tmp_path: Path, npz: Path, command: list[str]):
    _corrupt(study_url, _with("new_field", 1))
    tool, *args = command
    result = run(tool, *[a.format(npz=npz) for a in args], "--storage", study_url, cwd=tmp_path)
    assert one_cli_error(result) == (
        "error: study 's' has an unreadable tuner spec: unexpected field 'new_field' "
        "(written by another tuner version?)"
    )
