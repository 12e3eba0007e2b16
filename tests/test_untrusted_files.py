"""Files and paths from outside the tuner: ``--enqueue`` files, planted artifacts, a bad compile
cache. Never a traceback, never a write or read through a link (issue 22, items 5, 7 and 9).

Each test is a way a careless user or an attacker with access to a shared directory broke a command:
one ``error:`` line, a note in the page or one warning is the contract. Commands run in-process
through Typer's ``CliRunner`` (the same click group catches errors as for a user).
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers import invoke, one_cli_error
import pytest

from tuner.cli import app as tuner_app

# --- 5. --enqueue files go through the same guarded reader as --space and --config ----------


def _enqueue_file(tmp_path: Path, case: str) -> Path:
    if case == "device":
        return Path("/dev/zero")
    path = tmp_path / f"{case.replace(' ', '-')}.yaml"
    if case == "fifo":
        os.mkfifo(path)
    elif case == "over 1 MiB":
        path.write_text("learning_rate: 0.001\n" + "# padding\n" * 200_000)
    elif case == "deep nesting":
        path.write_text("learning_rate: " + "[" * 20_000)
    elif case == "5000-digit integer":
        path.write_text("epochs: " + "9" * 5000 + "\n")
    elif case == "alias":
        path.write_text("base: &b 64\nbatch_size: *b\n")
    return path


@pytest.mark.parametrize(
    "case, reason",
    [
        ("fifo", "not a regular file"),
        ("device", "not a regular file"),
        ("over 1 MiB", "larger than 1024 KiB"),
        ("deep nesting", "nested too deeply"),
        ("5000-digit integer", "digits"),
        ("alias", "YAML aliases"),
    ],
)
def test_hostile_enqueue_files_are_one_short_line(tuner_home, tmp_path, npz, case, reason):
    path = _enqueue_file(tmp_path, case)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    one_cli_error(
        invoke(tuner_app, "create", "s", "--data", npz, "--enqueue", path, "--storage", url),
        f"--enqueue {path}",
        reason,
    )
    assert not (tmp_path / "db.sqlite").exists()


# --- 9. artifact ids are validated; the store reads regular files only ----------------------

ARTIFACT_ID = "0b7a4c7e-4c1e-4b8e-9d0a-5f3c2e1d0a99"


def _artifact_study(tmp_path: Path, npz: Path, attrs: dict) -> str:
    import optuna

    from contract.config import TrainConfig
    from tuner.study import CreateOptions, create_study

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_study(
        "s", CreateOptions(storage_url=url, data=npz, fingerprint=None, space_path=None, trials=1, seed_config=False)
    )
    study = optuna.load_study(study_name="s", storage=url)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"config": TrainConfig().to_dict(), **attrs}))
    return url


def _planted(store: Path, kind: str) -> Path:
    """A secret outside the store and, at ARTIFACT_ID inside it, a link to it (or a FIFO)."""
    secret = store.parent / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"TOP-SECRET" * 100)
    store.mkdir()
    if kind == "symlink":
        (store / ARTIFACT_ID).symlink_to(secret)
    else:
        os.mkfifo(store / ARTIFACT_ID)
    return secret


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_report_does_not_embed_a_planted_artifact(tuner_home, tmp_path, npz, kind):
    import base64

    url = _artifact_study(tmp_path, npz, {"preview_artifact_id": ARTIFACT_ID})
    _planted(tmp_path / "store", kind)
    out = tmp_path / "report.html"
    made = invoke(tuner_app, "report", "s", "-o", out, "--artifact-dir", tmp_path / "store", "--storage", url)
    assert made.exit_code == 0, (made.stderr, made.exception)
    text = out.read_text()
    assert "data:image/png" not in text.split("</head>", 1)[1]  # (plotly.js, in the head, has the words)
    assert base64.b64encode((tmp_path / "secret.png").read_bytes()).decode()[:40] not in text
    assert ("is a symbolic link; refusing to follow it" if kind == "symlink" else "is not a regular file") in text


def test_report_with_a_path_like_preview_id_is_a_note(tuner_home, tmp_path, npz):
    url = _artifact_study(tmp_path, npz, {"preview_artifact_id": "../x"})
    (tmp_path / "store").mkdir()
    out = tmp_path / "report.html"
    made = invoke(tuner_app, "report", "s", "-o", out, "--artifact-dir", tmp_path / "store", "--storage", url)
    assert made.exit_code == 0, (made.stderr, made.exception)
    assert "the recorded artifact id &#x27;../x&#x27; is not an artifact id" in out.read_text()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_export_model_refuses_a_planted_artifact(tuner_home, tmp_path, npz, kind):
    url = _artifact_study(tmp_path, npz, {"model_artifact_id": ARTIFACT_ID})
    _planted(tmp_path / "store", kind)
    model = tmp_path / "out.keras"
    one_cli_error(
        invoke(
            tuner_app,
            "export",
            "s",
            "-o",
            tmp_path / "best.yaml",
            "--model",
            model,
            "--artifact-dir",
            tmp_path / "store",
            "--storage",
            url,
        ),
        "symbolic link" if kind == "symlink" else "not a regular file",
    )
    assert not model.exists() and list(tmp_path.glob("*.keras*")) == []


def test_the_store_does_not_write_through_a_planted_link(tmp_path):
    import io

    from contract.artifacts import open_artifact_store

    secret = _planted(tmp_path / "store", "symlink")
    store = open_artifact_store(tmp_path / "store", create=False)
    with pytest.raises(OSError):
        store.write(ARTIFACT_ID, io.BytesIO(b"overwritten"))
    assert b"TOP-SECRET" in secret.read_bytes()


# --- 7. a bad TUNER_COMPILE_CACHE is one warning at start-up, never a failed trial ------------

_CACHE_SCRIPT = """
import json, os, sys
from worker.training import backend
out = {}
for case, path in json.loads(sys.argv[1]).items():  # each case as a fresh worker process would see it
    os.environ["TUNER_COMPILE_CACHE"], backend._cache_done = path, False
    print("case:", case, file=sys.stderr, flush=True)
    out[case] = backend.enable_compile_cache()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_bad_compile_cache_is_one_warning_and_no_cache(tmp_path):
    import json
    import subprocess
    import sys

    pytest.importorskip("jax")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases = {
        "a file": tmp_path / "a-file",
        "under a file": tmp_path / "a-file" / "cache",
        "a symlink loop": tmp_path / "loop",
        "fine": tmp_path / "cache",
    }
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        cases["an unwritable directory"] = tmp_path / "ro"
    proc = subprocess.run(
        [sys.executable, "-c", _CACHE_SCRIPT, json.dumps({k: str(v) for k, v in cases.items()})],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    directories = json.loads(proc.stdout.strip().splitlines()[-1])
    said: dict[str, list[str]] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("case: "):
            said[line[6:]] = []
        elif "compile cache" in line:
            said[list(said)[-1]].append(line)
    assert directories.pop("fine") == str(tmp_path / "cache") and said.pop("fine") == []
    for case, directory in directories.items():
        assert directory is None, case
        assert len(said[case]) == 1, (case, said)
        assert said[case][0].startswith(f"warning: compile cache {cases[case]} (TUNER_COMPILE_CACHE) "), said[case]
        assert said[case][0].endswith("; running without it"), said[case]


@pytest.mark.slow
def test_worker_with_a_bad_compile_cache_warns_once_and_completes_its_trial(tuner_home, tmp_path, synth_npz):
    from helpers import LEARNING_RATE_ONLY, run_cli, tiny_space
    import optuna

    pytest.importorskip("jax")
    npz = synth_npz(32, seed=3)
    space = tiny_space(tmp_path / "space.yaml", params=LEARNING_RATE_ONLY, epochs=1)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    created = run_cli(
        "tuner",
        "create",
        "s",
        "--data",
        str(npz),
        "--space",
        str(space),
        "--trials",
        "1",
        "--pruner",
        "none",
        "--storage",
        url,
    )
    assert created.returncode == 0, created.stderr
    (tmp_path / "a-file").write_text("x")
    run = run_cli(
        "worker",
        "run",
        "--study",
        "s",
        "--data",
        str(npz),
        "--quiet",
        "--storage",
        url,
        env={"KERAS_BACKEND": "jax", "TUNER_COMPILE_CACHE": str(tmp_path / "a-file")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert len([line for line in run.stdout.splitlines() if "warning: compile cache" in line]) == 1, run.stdout
    assert "starting Keras on jax (takes a few seconds)" in run.stdout  # no silent start-up either (item 12)
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=url).trials] == ["COMPLETE"]
