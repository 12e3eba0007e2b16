"""The final model on all the data: workers record each epoch's learning rate, ``tuner export``
writes the schedule up to the best epoch, ``worker train --all-data`` replays it."""

from __future__ import annotations

import types

from helpers import one_cli_error
import optuna
import pytest
from typer.testing import CliRunner
import yaml

from contract import trial_attrs
from contract.config import ConfigError, TrainConfig


def test_lr_schedule_round_trips_and_refuses_bad_values(tmp_path):
    config = TrainConfig(lr_schedule=[1e-3, 1e-3, 5e-4])
    assert config.lr_schedule == (1e-3, 1e-3, 5e-4) and hash(config)
    for fmt in ("yaml", "json"):
        path = tmp_path / f"c.{fmt}"
        path.write_text(config.dumps(fmt))
        assert TrainConfig.load(path) == config
    assert TrainConfig().lr_schedule is None
    for bad, message in (
        ([], "non-empty list"),
        ([1e-3, 0], "epoch 2"),
        ([float("nan")], "epoch 1"),
        ("1e-3", "non-empty list"),
        ([True], "epoch 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(lr_schedule=bad)


def _finished(rates, best_epoch, config=TrainConfig(tta=True)):
    """A trial as a worker leaves it: config at the start, the result at the end."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial_attrs.record_start(trial, config, {"host": "h", "pid": 1, "gpu": None}, {})
    result = types.SimpleNamespace(
        best_miou=0.5,
        per_class_iou={1: 0.5},
        epochs_run=len(rates),
        best_epoch=best_epoch - 1,
        wall_time_s=1.0,
        n_train=8,
        n_val=2,
        history=[{"loss": 1.0, "lr": r} for r in rates],
    )
    trial_attrs.record_result(trial, result)
    study.tell(trial, 0.5)
    return study.trials[0]


def test_export_writes_the_trials_learning_rates_up_to_its_best_epoch():
    from tuner.export import config_of, render

    trial = _finished([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], best_epoch=4)
    assert trial.user_attrs[trial_attrs.LEARNING_RATES] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    config = config_of(trial, spec=None)
    assert config.lr_schedule == (1e-3, 1e-3, 5e-4, 5e-4) and config.tta is True
    text = render(config, "yaml", study_name="s", trial=trial)
    assert yaml.safe_load(text)["lr_schedule"] == [1e-3, 1e-3, 5e-4, 5e-4]
    assert "--all-data --save final.keras" in text and "4 epochs (the trial's best epoch)" in text
    # a trial from a worker that did not record them exports as before
    old = optuna.trial.create_trial(
        value=0.5, user_attrs={trial_attrs.CONFIG: TrainConfig().to_dict(), trial_attrs.BEST_EPOCH: 2}
    )
    assert config_of(old, spec=None) == TrainConfig()
    assert "--all-data" not in render(TrainConfig(), "yaml", study_name="s", trial=old)


def test_all_data_needs_save(tmp_path):
    from worker.cli import app

    result = CliRunner().invoke(
        app, ["train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path / "d.npz"), "--all-data"]
    )
    one_cli_error(result, "--all-data", "--save")


@pytest.mark.slow
def test_all_data_replays_the_schedule_on_every_image(tmp_path):
    """All 40 images train (no split), each epoch at the schedule's rate; the saved model says
    it has no validation score, and worker predict uses it."""
    from contract.data import load_npz
    from contract.synth import write_npz
    from worker.predict import predict_file
    from worker.training.all_data import train_all_data
    from worker.training.saved import read_info

    write_npz(tmp_path / "mars.npz", 40, seed=1, n_aliens=0, n_test=5)
    config = TrainConfig(
        model="unet",
        base_filters=4,
        depth=2,
        batch_size=8,
        augment_flips=False,
        mixed_precision="off",
        epochs=50,
        lr_schedule=[2e-3, 1e-3, 5e-4],
    )
    result = train_all_data(config, load_npz(tmp_path / "mars.npz"), save_path=tmp_path / "final.keras", verbose=False)
    assert result.n_images == 40 and result.epochs == 3 and result.replayed
    assert result.learning_rates == pytest.approx([2e-3, 1e-3, 5e-4], rel=1e-6)
    info = read_info(tmp_path / "final.keras")
    assert info.all_data is True and info.validation_miou is None and info.config["lr_schedule"] == [2e-3, 1e-3, 5e-4]
    summary = predict_file([tmp_path / "final.keras"], tmp_path / "mars.npz", tmp_path / "p.npz")
    assert summary.n_images == 5 and summary.tta == (False,)
