"""Hostile or unusable files: YAML that would exhaust memory, outputs that are not regular files, data
that can never train, outputs that fail late (issue 11, items 13-15).

Each test is a fault that used to end in a traceback, a write outside its place or unbounded
memory. Commands run in-process through Typer's ``CliRunner`` (the same click group catches errors
as for a user) unless a real process is the point.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
import resource
import stat
import subprocess

from helpers import BIN, invoke, one_cli_error
import numpy as np
import pytest

from contract.atomic import replacing, writable_problem
from contract.config import ConfigError, TrainConfig
from contract.data import check_trainable, load_npz
from contract.data_format import DataError
from contract.space import SearchSpace, SpaceError
from tuner.cli import app as tuner_app
from worker.cli import app as worker_app


def _subset(npz: Path, out: Path, n: int, *, background: bool = False) -> Path:
    train = np.load(npz)["training_set"][:n].copy()
    if background:
        train[:, 1] = 0
    np.savez(out, training_set=train)
    return out


# --- 13. hostile YAML and files: bounded size, bounded messages, one line --------------------


def _alias_bomb(levels: int) -> str:
    """A "billion laughs" list: level i holds 9 aliases of level i-1, all inside one value."""
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def _hostile_files(tmp_path: Path, kind: str) -> dict[str, Path]:
    # 9**6 "lol"s: small enough that the unfixed code finished (with a ~4 MB message), not OOM.
    files = {
        "alias bomb": tmp_path / f"bomb-{kind}.yaml",
        "deep nesting": tmp_path / f"deep-{kind}.yaml",
        "huge value": tmp_path / f"huge-{kind}.yaml",
        "too large": tmp_path / f"large-{kind}.yaml",
        "fifo": tmp_path / f"fifo-{kind}.yaml",
        "device": Path("/dev/zero"),
    }
    bomb = _alias_bomb(6)
    files["alias bomb"].write_text(
        f"params: {{tta: {{type: bool}}}}\nfixed: {{model: {bomb}}}\n" if kind == "space" else f"model: {bomb}\n"
    )
    files["deep nesting"].write_text("[" * 10000)
    files["huge value"].write_text(
        ("params: {learning_rate: {type: float, low: 'x%s', high: 1}}" if kind == "space" else "model: 'x%s'")
        % ("y" * 500_000)
    )
    files["too large"].write_text("# padding\n" * 200_000)
    os.mkfifo(files["fifo"])
    return files


@pytest.mark.parametrize("case", ["alias bomb", "deep nesting", "huge value", "too large", "fifo", "device"])
def test_hostile_space_files_are_one_short_line(tuner_home, tmp_path, npz, case):
    path = _hostile_files(tmp_path, "space")[case]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    one_cli_error(invoke(tuner_app, "create", "s", "--data", npz, "--space", path, "--storage", url), str(path))
    assert not (tmp_path / "db.sqlite").exists()
    with pytest.raises(SpaceError):
        SearchSpace.load(path)


@pytest.mark.parametrize("case", ["alias bomb", "deep nesting", "huge value", "too large", "fifo", "device"])
def test_hostile_config_files_are_one_short_line(tmp_path, npz, case):
    path = _hostile_files(tmp_path, "config")[case]
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(path)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
    one_cli_error(invoke(worker_app, "train", "--config", path, "--data", npz), str(path))


def test_aliases_are_refused_but_plain_yaml_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("epochs: 3\nbatch_size: 8\n")
    assert TrainConfig.load(path).epochs == 3
    path.write_text("base: &b 8\nbatch_size: *b\n")
    with pytest.raises(ConfigError, match="YAML aliases"):
        TrainConfig.load(path)


# --- 14. outputs replace regular files only ------------------------------------------------------


def _specials(tmp_path: Path) -> dict[str, Path]:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.npz"
    directory.mkdir()
    out = {"symlink": link, "fifo": fifo, "directory": directory}
    if os.geteuid() == 0:  # a private copy of /dev/null: what `-o /dev/null` would replace as root
        device = tmp_path / "null.npz"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        out["device"] = device
    return out


def _unchanged(path: Path, kind: str, tmp_path: Path) -> None:
    mode = os.lstat(path).st_mode
    assert {"symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO, "directory": stat.S_ISDIR, "device": stat.S_ISCHR}[kind](
        mode
    ), f"{path} was replaced"
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "device"])
def test_outputs_refuse_non_regular_targets(tmp_path, kind):
    specials = _specials(tmp_path)
    if kind not in specials:
        pytest.skip("creating a device node needs root")
    path = specials[kind]
    assert "not a regular file" in (writable_problem(path) or "")
    with pytest.raises(OSError, match="not a regular file"):
        with replacing(path) as tmp:
            tmp.write_text("new")
    _unchanged(path, kind, tmp_path)
    one_cli_error(invoke(worker_app, "synth-data", path, "--n", "8"), "not a regular file")
    _unchanged(path, kind, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".tmp.npz"))]


def test_a_target_swapped_for_a_symlink_during_the_write_is_not_replaced(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(OSError, match="symbolic link"):
        with replacing(path) as tmp:
            tmp.write_text("new")
            path.symlink_to(tmp_path / "elsewhere")
    assert path.is_symlink()


def test_regular_files_are_still_replaced(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with replacing(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and not path.is_symlink()


# --- 15. data that can never train; outputs that fail late ---------------------------------------


def test_check_trainable_refuses_unlearnable_data(npz, tmp_path):
    masks = load_npz(npz).masks
    check_trainable(masks)
    with pytest.raises(DataError, match="at least 2"):
        check_trainable(masks[:1])
    with pytest.raises(DataError, match="every label is background"):
        check_trainable(np.zeros_like(masks[:8]))
    only_one = np.zeros_like(masks[:8])
    only_one[0, 0, 0] = 1  # the validation split could take the only labelled image
    with pytest.raises(DataError, match="only 1 of 8"):
        check_trainable(only_one)


@pytest.mark.parametrize("case", ["one image", "all background"])
def test_untrainable_data_is_one_line_in_create_and_train(tuner_home, tmp_path, npz, case):
    data = _subset(npz, tmp_path / "bad.npz", 1 if case == "one image" else 4, background=case == "all background")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    one_cli_error(invoke(tuner_app, "create", "s", "--data", data, "--storage", url), f"--data {data}")
    assert not (tmp_path / "db.sqlite").exists()
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\n")
    one_cli_error(invoke(worker_app, "train", "--config", config, "--data", data), f"--data {data}")


def test_save_name_too_long_fails_before_training(tmp_path, npz):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\n")
    save = tmp_path / ("m" * 250 + ".keras")
    one_cli_error(
        invoke(worker_app, "train", "--config", config, "--data", npz, "--save", save), "--save", "at most 255"
    )


def test_a_name_that_just_fits_gets_a_temporary_name_that_fits(tmp_path):
    path = tmp_path / ("m" * 249 + ".keras")
    with replacing(path, suffix=".keras") as tmp:
        assert len(tmp.name) <= 255
        tmp.write_bytes(b"model")
    assert path.read_bytes() == b"model"


TINY = """\
model: unet
base_filters: 4
depth: 2
batch_size: 8
epochs: 1
augment_flips: false
max_images: 12
"""


def _limit_file_size() -> None:
    # A full disk, for this process only: writes beyond 64 KiB fail with EFBIG (Python ignores
    # SIGXFSZ), as writes on a full disk fail with ENOSPC. The model is larger, the result not.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow
def test_full_disk_on_save_keeps_the_result_and_is_one_line(tmp_path, npz):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    save, result_json = tmp_path / "out" / "model.keras", tmp_path / "result.json"
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        [
            str(BIN / "worker"),
            "train",
            "--config",
            str(config),
            "--data",
            str(npz),
            "--quiet",
            "--save",
            str(save),
            "--result",
            str(result_json),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--save" in errors[0] and os.strerror(errno.EFBIG) in errors[0], proc.stderr
    assert "mean IoU (classes 1-4):" in proc.stdout
    assert "E0000" not in proc.stderr  # item 17: no native TensorFlow log lines
    assert result_json.exists() and '"best_miou"' in result_json.read_text()
    assert list((tmp_path / "out").iterdir()) == []  # no partial model, no temporary file
