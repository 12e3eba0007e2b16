"""The search-space file: parsing, validation errors, sampling into a full TrainConfig."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from contract.config import TrainConfig
from contract.space import SearchSpace, SpaceError
from tuner.study import default_space_path, demo_space_path

GOOD = {
    "fixed": {"epochs": 5, "model": "unet"},
    "params": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [8, 16]},
        "base_filters": {"type": "int", "low": 4, "high": 12, "step": 4},
        "tta": {"type": "bool"},
    },
}


@pytest.mark.parametrize("path", [default_space_path(), demo_space_path()])
def test_shipped_spaces_load_and_sample(path):
    space = SearchSpace.load(path)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    config = space.sample(trial)
    assert isinstance(config, TrainConfig)
    assert set(trial.params) == set(space.params)
    for name, value in trial.params.items():
        assert getattr(config, name) == value
    for name, value in space.fixed.items():
        assert getattr(config, name) == value


def test_default_space_has_the_seed_ranges():
    space = SearchSpace.load(default_space_path())
    lr = space.params["learning_rate"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-3, True)
    assert space.params["batch_size"].choices == (64, 128, 256)
    gamma = space.params["focal_gamma"]
    assert (gamma.low, gamma.high) == (0.1, 5.0)
    patience = space.params["early_stopping_patience"]
    assert (patience.low, patience.high) == (25, 35)
    assert space.max_epochs == 200


def test_sampling_respects_ranges_and_round_trips():
    space = SearchSpace.from_dict(GOOD)
    assert SearchSpace.from_dict(space.to_dict()) == space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        config = space.sample(study.ask())
        assert 1e-4 <= config.learning_rate <= 1e-2
        assert config.batch_size in (8, 16) and config.base_filters in (4, 8, 12)
        assert config.model == "unet" and config.epochs == 5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"params": {}}, "nothing to search"),
        ({"params": {"lr": {"type": "float", "low": 0.1, "high": 1}}}, "params.lr: not a training config field"),
        ({"params": {"learning_rate": {"type": "float", "low": 1, "high": 0.1}}}, "greater than high"),
        ({"params": {"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log range needs low > 0"),
        ({"params": {"learning_rate": {"type": "gaussian"}}}, "type 'gaussian' is not one of"),
        ({"params": {"learning_rate": {"type": "float", "low": "1e-3", "high": 1}}}, "'low' must be a number"),
        ({"params": {"batch_size": {"type": "int", "low": 0, "high": 8}}}, "batch_size must be > 0"),
        ({"params": {"batch_size": {"type": "categorical", "choices": []}}}, "non-empty list"),
        ({"params": {"batch_size": {"type": "int", "low": 1, "high": 8, "choices": [1]}}}, "unknown key(s) choices"),
        (
            {"fixed": {}, "params": {"model": {"type": "categorical", "choices": ["multipath", "resnet"]}}},
            "model must be one of",
        ),
        (
            {
                "fixed": {"epochs": 5, "learning_rate": 0.1},
                "params": GOOD["params"] | {"learning_rate": GOOD["params"]["learning_rate"]},
            },
            "both fixed and searched",
        ),
        ({"fixed": {"epochs": -1}}, "fixed: epochs must be > 0"),
        ({"fixed": {"bogus": 1}}, "fixed.bogus: not a training config field"),
        ({"extra": 1}, "unknown top-level key"),
        # Wrong shapes from YAML: each one used to be a TypeError/ValueError traceback.
        ({"fixed": [1, 2]}, "'fixed' must be a mapping of training config fields, got list"),
        ({"fixed": "abc"}, "'fixed' must be a mapping of training config fields, got str"),
        ({"fixed": [["epochs", 5]]}, "'fixed' must be a mapping"),  # dict() would have accepted it
        ({"params": [1, 2]}, "'params' must be a mapping of training config fields, got list"),
        ({1: 2}, "top level: key 1 is not a name (keys must be strings)"),
        ({1: 2, "x": 3}, "top level: key 1 is not a name"),  # sorting mixed keys raised TypeError
        ({"params": {1: {"type": "bool"}}}, "params: key 1 is not a name"),
        ({"params": {None: {"type": "bool"}}}, "params: key None is not a name"),
        ({"fixed": {1: 2}}, "fixed: key 1 is not a name"),
        ({"params": {"tta": {"type": "bool", 1: 2}}}, "params.tta: key 1 is not a name"),
        (
            {"fixed": {}, "params": {"epochs": {"type": "categorical", "choices": [1, 2]}}},
            "params.epochs: must be type int (it is the pruner's epoch budget)",
        ),
        ({"fixed": {}, "params": {"epochs": {"type": "bool"}}}, "params.epochs: must be type int"),
        (
            {"fixed": {}, "params": {"epochs": {"type": "float", "low": 1, "high": 5}}},
            "params.epochs: must be type int",
        ),
        ({"params": {"learning_rate": {"type": "float", "low": 1, "high": 10**400}}}, "must be finite numbers"),
        ({"fixed": {"weight_decay": 10**400}}, "weight_decay must be finite"),
    ],
)
def test_bad_spaces_give_one_clear_error(change, message):
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_dict({**GOOD, **change})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_and_unparsable_files(tmp_path: Path):
    with pytest.raises(SpaceError, match="cannot read search space"):
        SearchSpace.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed\n")
    with pytest.raises(SpaceError, match="cannot parse search space"):
        SearchSpace.load(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"params": {"learning_rate": {"type": "float"}}}))
    with pytest.raises(SpaceError, match=r"wrong.yaml: params.learning_rate: 'low' must be"):
        SearchSpace.load(wrong)


def test_epochs_as_an_int_range_is_the_epoch_budget():
    space = SearchSpace.from_dict({"params": {"epochs": {"type": "int", "low": 2, "high": 9}}})
    assert space.max_epochs == 9


def test_parse_errors_name_the_problem_and_its_position(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [1,\n")
    with pytest.raises(SpaceError) as info:
        SearchSpace.load(bad)
    assert str(info.value) == (
        f"cannot parse search space {bad}: line 2, column 1: expected the node content, but found '<stream end>'"
    )
    bad.write_text("params:\n  learning_rate: {type: float, low: 1: 2}\n")
    with pytest.raises(SpaceError, match=r"line 2, column 38: expected ',' or '}', but got ':'$"):
        SearchSpace.load(bad)


def test_a_binary_file_is_not_a_search_space(tmp_path: Path):
    binary = tmp_path / "space.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(SpaceError) as info:
        SearchSpace.load(binary)
    assert str(info.value) == f"cannot read search space {binary}: not a UTF-8 text file"
