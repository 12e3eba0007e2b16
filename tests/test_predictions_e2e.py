"""The README's "From search to predictions" commands, run as written, after a search by two
workers on PostgreSQL; the same two workers run the confirmation trials (tiny models on
synthetic data: about four minutes on 2 loaded cores)."""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import subprocess
import zipfile

from helpers import BIN, run_cli, tiny_space_dict
import numpy as np
import pytest
import yaml

from contract.synth import write_npz

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## From search to predictions"
N_TEST = 12
SPACE = tiny_space_dict(
    params={"learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
    tta=True,
    epochs=4,
    reduce_lr_patience=1,
    reduce_lr_factor=0.5,
)


def readme_commands() -> list[str]:
    """The commands of the section's bash block, comments stripped, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def run_two_workers(cwd: Path, env: dict[str, str]) -> int:
    """Two workers with their usual command until the study has nothing left; trials they completed."""
    workers = [
        subprocess.Popen(
            [str(BIN / "worker"), "run", "--study", "mars", "--data", "mars_for_students.npz", "--quiet"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)
    return sum(log.count(" complete: mIoU") for log in logs)


def test_readme_from_search_to_predictions(pg_url, tmp_path):
    env = {**os.environ, "TUNER_STORAGE": pg_url, "TUNER_COMPILE_CACHE": "off"}
    write_npz(tmp_path / "mars_for_students.npz", 48, seed=3, n_test=N_TEST)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    created = run_cli(
        "tuner",
        "create",
        "mars",
        "--data",
        "mars_for_students.npz",
        "--space",
        "space.yaml",
        "--trials",
        "3",
        "--pruner",
        "none",
        env=env,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    assert run_two_workers(tmp_path, env) == 3  # the search

    commands = readme_commands()
    assert [c.split()[:2] for c in commands] == [
        ["tuner", "confirm"],
        ["tuner", "export"],
        ["worker", "train"],
        ["worker", "predict"],
        ["ls", "pngs"],
    ]
    outputs = []
    for command in commands:
        done = subprocess.run(
            command,
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**env, "PATH": f"{BIN}:{env['PATH']}"},
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
        if command.startswith("tuner confirm"):  # the search had ended: workers again, same command
            assert run_two_workers(tmp_path, env) == 9  # --top 3 --seeds 3
    header = (tmp_path / "best.yaml").read_text()
    assert header.startswith("# Confirmed pick of study 'mars'") and header.count(": n 3, mean ") == 3, header

    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    schedule = exported["lr_schedule"]
    assert 1 <= len(schedule) <= SPACE["fixed"]["epochs"]
    assert schedule[0] == pytest.approx(exported["learning_rate"], rel=1e-6)
    assert f"for {len(schedule)} epochs" in outputs[2] and "no validation score" in outputs[2]
    with zipfile.ZipFile(tmp_path / "final.keras") as archive:
        info = json.loads(archive.read("mars_tuner.json"))
    assert info["all_data"] is True and info["validation_miou"] is None and info["config"]["tta"] is True
    assert "flip TTA on" in outputs[3]  # as the trial was scored
    with np.load(tmp_path / "predictions.npz") as npz:
        assert npz["masks"].shape == (N_TEST, 64, 128) and npz["masks"].dtype == np.uint8
    assert outputs[4].split() == [f"{i:02d}.png" for i in range(N_TEST)]
