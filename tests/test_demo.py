"""The README's main command, shrunk: `tuner demo` on the embedded SQLite default."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import yaml

from worker.config import TrainConfig

BIN = Path(sys.executable).parent


def test_demo_runs_a_local_search_and_prints_the_best_config(tmp_path):
    env = {**os.environ, "TUNER_HOME": str(tmp_path / "home")}
    env.pop("TUNER_STORAGE", None)
    result = subprocess.run(
        [str(BIN / "tuner"), "demo", "--workers", "2", "--trials", "3", "--images", "48"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "w0 |" in out and "w1 |" in out  # two real worker processes took part
    assert "study budget reached" in out
    best = tmp_path / "home" / "demo-best.yaml"
    config = TrainConfig.load(best)  # the printed winner is a valid training config
    assert yaml.safe_load(best.read_text()) == config.to_dict()
    assert "best configuration" in out and f"learning_rate: {config.learning_rate}" in out
    assert (tmp_path / "home" / "tuner.db").exists()
