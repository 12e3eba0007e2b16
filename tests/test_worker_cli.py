"""`worker synth-data`, `inspect-data` and `train` as a user runs them: errors are one line.

The console script runs as a real process where that is the point (and for the slow tests); the
error-line checks run in-process (Typer's CliRunner: the same click group catches the errors).
"""

from __future__ import annotations

from pathlib import Path
import subprocess

from helpers import invoke, one_cli_error, one_error_line, run_cli
import numpy as np
import pytest
import yaml

from contract.data import load_npz
from worker.cli import app


def worker(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("worker", *args, cwd=cwd)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    return one_error_line(result.stderr, result.returncode)


def test_synth_data_writes_the_challenge_format_and_inspect_reads_it(tmp_path):
    out = tmp_path / "synthetic.npz"
    result = worker("synth-data", str(out), "--n", "60", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: 60 training images (")
    assert "class shares: background " in result.stdout
    with np.load(out) as npz:
        assert npz["training_set"].shape == (60, 2, 64, 128)
    inspected = worker("inspect-data", str(out))
    assert inspected.returncode == 0, inspected.stderr
    assert f"fingerprint:  {load_npz(out).fingerprint}" in inspected.stdout
    assert "aliens removed: " in inspected.stdout


def test_synth_data_bad_arguments(tmp_path):
    assert "must end in .npz" in one_cli_error(invoke(app, "synth-data", tmp_path / "x.txt"))
    line = one_cli_error(invoke(app, "synth-data", tmp_path / "x.npz", "--n", "10", "--aliens", "20"))
    assert "n_aliens" in line
    assert not (tmp_path / "x.npz").exists()


def test_inspect_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, training_set=np.zeros((3, 2, 64, 64)))
    line = one_cli_error(invoke(app, "inspect-data", bad))
    assert "shape" in line and "bad.npz" in line


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("learning_rate: fast\n", "learning_rate must be float"),
        ("bogus: 1\n", "unknown config key(s): bogus"),
        ("epochs: [1\n", "cannot parse config"),
        ("model: resnet\n", "model must be one of"),
    ],
)
def test_train_bad_config_is_one_line_and_writes_nothing(tmp_path, npz, config_text, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(config_text)
    save = tmp_path / "model.keras"
    line = one_cli_error(invoke(app, "train", "--config", config, "--data", npz, "--save", save))
    assert message in line
    assert not save.exists()


@pytest.mark.slow
def test_train_bad_data_and_paths(tmp_path, npz):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1}))
    missing = worker("train", "--config", str(config), "--data", str(tmp_path / "missing.npz"))
    assert "missing.npz" in _one_error_line(missing)
    assert "--save must end in .keras" in _one_error_line(
        worker("train", "--config", str(config), "--data", str(npz), "--save", str(tmp_path / "m.h5"))
    )
    assert "cannot read config" in _one_error_line(
        worker("train", "--config", str(tmp_path / "nope.yaml"), "--data", str(npz))
    )
    # Output paths are checked before training, not after it: nothing is written.
    save, blocker = tmp_path / "best.keras", tmp_path / "a-file"
    blocker.write_text("")
    line = _one_error_line(
        worker(
            "train",
            "--config",
            str(config),
            "--data",
            str(npz),
            "--save",
            str(save),
            "--result",
            str(blocker / "r.json"),
        )
    )
    assert line.startswith(f"error: --result {blocker / 'r.json'}: {blocker} is a file")
    assert not save.exists()
    line = _one_error_line(
        worker("train", "--config", str(config), "--data", str(npz), "--save", str(blocker / "m.keras"))
    )
    assert "--save" in line and "is a file, not a directory" in line


@pytest.mark.slow
def test_train_on_a_gpu_this_machine_lacks_is_one_line(tmp_path, npz):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1}))
    line = _one_error_line(worker("train", "--config", str(config), "--data", str(npz), "--gpu", "3"))
    assert "GPU" in line
