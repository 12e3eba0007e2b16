"""The coordinator's read side: ``tuner list``, ``status``, ``export`` and ``dashboard``.

Studies are built without training: trials are asked and told by hand, with the user attributes
written through :mod:`contract.trial_attrs` exactly as a worker writes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
import dataclasses
import datetime
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

from helpers import BIN
import numpy as np
import optuna
from optuna.trial import TrialState
import pytest
from rich.console import Console
import yaml

from contract import trial_attrs
from contract.artifacts import ArtifactDirError
from contract.config import ConfigError, TrainConfig
from contract.study_spec import StudySpec
import storage
from tuner import dashboard, export, readers, status
from tuner.study import CreateOptions, StudyError, create_study

TUNER = BIN / "tuner"
FINGERPRINT = "ab" * 32


@dataclasses.dataclass
class FakeResult:
    """The fields of worker.training.result.TrainResult that trial_attrs.record_result reads."""

    best_miou: float
    per_class_iou: dict[int, float | None]
    epochs_run: int = 3
    best_epoch: int = 1
    wall_time_s: float = 12.5
    n_train: int = 48
    n_val: int = 16


class Builder:
    """Adds trials to a study the way a worker would, remembering what it wrote."""

    def __init__(self, url: str, name: str, trials: int = 5) -> None:
        create_study(name, CreateOptions(storage_url=url, data=None, fingerprint=FINGERPRINT,
                                         space_path=None, trials=trials))
        self.url = url
        self.rdb = storage.open_storage(url, heartbeat_interval=None)
        self.study = optuna.load_study(
            study_name=name, storage=self.rdb, sampler=optuna.samplers.RandomSampler(seed=0)
        )
        self.spec = StudySpec.of(self.study)
        self.rng = np.random.default_rng(0)
        self.completed: dict[int, tuple[float, dict[str, float | None]]] = {}
        self.reported: dict[int, tuple[int, float]] = {}

    def ask(self, host: str = "node-a", pid: int = 101, gpu: int | None = None,
            epochs: int = 0, record_config: bool = True) -> optuna.Trial:
        trial = self.study.ask()
        config = self.spec.space.sample(trial)
        if record_config:
            trial_attrs.record_start(trial, config, {"host": host, "pid": pid, "gpu": gpu}, {"device": "cpu"})
        else:
            trial.set_user_attr(trial_attrs.WORKER, {"host": host, "pid": pid, "gpu": gpu})
        for step in range(1, epochs + 1):
            value = float(self.rng.uniform(0.1, 0.6))
            trial.report(value, step)
            self.reported[trial.number] = (step, value)
        return trial

    def complete(self, trial: optuna.Trial | None = None, **kwargs) -> optuna.Trial:
        trial = trial or self.ask(epochs=2, **kwargs)
        per_class = {c: float(self.rng.uniform(0.2, 0.9)) for c in (1, 2, 3)}
        per_class[4] = None  # a class absent in both truth and prediction
        miou = float(np.mean([v for v in per_class.values() if v is not None]))
        trial_attrs.record_result(trial, FakeResult(best_miou=miou, per_class_iou=per_class))
        self.study.tell(trial, miou)
        self.completed[trial.number] = (miou, {str(c): v for c, v in per_class.items()})
        return trial

    def end(self, state: TrialState, **kwargs) -> optuna.Trial:
        trial = self.ask(epochs=1, **kwargs)
        self.study.tell(trial, state=state)
        return trial

    def best(self) -> tuple[int, float]:
        number = max(self.completed, key=lambda n: self.completed[n][0])
        return number, self.completed[number][0]

    def close(self) -> None:
        self.rdb.engine.dispose()


def _mixed(url: str, name: str = "mars") -> Builder:
    """3 COMPLETE, 1 PRUNED, 1 FAIL, 2 RUNNING (two hosts), 1 WAITING."""
    b = Builder(url, name)
    for _ in range(3):
        b.complete()
    b.end(TrialState.PRUNED)
    b.end(TrialState.FAIL)
    b.ask(host="node-a", pid=11, gpu=0, epochs=3).set_user_attr(trial_attrs.PHASE, "training")
    b.ask(host="node-b", pid=22, gpu=1, epochs=1)
    b.study.enqueue_trial({"learning_rate": 3e-4})
    return b


@pytest.fixture(scope="module")
def mixed(pg_schema_module_url) -> Iterator[tuple[Builder, datetime.datetime]]:
    """``_mixed``'s study "mars", built once for the tests that only read it; when its build began."""
    began = readers.utc_now()
    b = _mixed(pg_schema_module_url)
    yield b, began
    b.close()


def _read(b: Builder) -> status.StatusData:
    return status.read_status(b.rdb.engine, status.find_or_fail(b.rdb.engine, b.study.study_name, "x"))


def _console() -> Console:
    return Console(record=True, width=160)


# -- status -----------------------------------------------------------------------------------


def test_summarize_counts_best_and_running(mixed):
    b, before = mixed
    summary = status.summarize(_read(b), b.spec)
    after = readers.utc_now()

    expected = Counter(t.state.name for t in b.study.get_trials(deepcopy=False))
    assert summary.counts == {s.name: expected.get(s.name, 0) for s in status.STATES}
    assert summary.counts == {"COMPLETE": 3, "PRUNED": 1, "RUNNING": 2, "WAITING": 1, "FAIL": 1}
    assert summary.finished == 4
    assert (summary.budget, summary.sampler, summary.pruner) == (5, "tpe", "hyperband")
    assert summary.fingerprint == FINGERPRINT

    number, value = b.best()
    assert summary.best is not None
    assert summary.best.number == number
    assert summary.best.value == pytest.approx(value)
    assert summary.best.per_class_iou == b.completed[number][1]

    assert [(r.host, r.pid, r.gpu) for r in summary.running] == [("node-a", 11, 0), ("node-b", 22, 1)]
    for run in summary.running:
        assert (run.epoch, run.last_value) == b.reported[run.number]
        assert 0 <= run.age_s <= (after - before).total_seconds() + 1.0
        assert set(run.params) == set(b.spec.space.params)
    assert [r.phase for r in summary.running] == ["training", None]  # node-b's worker wrote none

    # Ages follow the given "now".
    later = status.summarize(_read(b), b.spec,
                             now=after + datetime.timedelta(hours=2))
    assert later.counts == summary.counts
    for run in later.running:
        assert 7200 <= run.age_s <= 7200 + (after - before).total_seconds() + 1.0


def test_summarize_without_completed_trial(pg_schema_url):
    b = Builder(pg_schema_url, "fresh")
    b.end(TrialState.PRUNED)
    summary = status.summarize(_read(b), b.spec)
    assert summary.best is None
    assert summary.running == []
    assert summary.finished == 1
    b.close()


def test_format_age():
    assert [status.format_age(s) for s in (None, 5, 65, 3 * 3600 + 120, 2 * 86400 + 4 * 3600)] == [
        "-", "5s", "1m05s", "3h02m", "2d04h"
    ]


def test_print_status_shows_counts_best_and_running_hosts(mixed):
    b, _ = mixed
    url = b.url
    console = _console()
    status.print_status("mars", url, console=console)
    text = console.export_text()
    number, value = b.best()
    assert "mars" in text
    assert storage.mask_url(url) in text
    assert "progress: 4/5 finished" in text
    for state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL"):
        assert state in text
    assert f"{value:.4f} (trial {number})" in text
    assert "node-a" in text and "node-b" in text
    assert "training" in text  # node-a's phase
    assert FINGERPRINT[:12] in text


def test_render_status_fits_a_narrow_terminal():
    params = {"learning_rate": 0.000123456, "class_weights": "sqrt_inverse_frequency",
              "conventional_filters": 384, "multiscale_filters": 384, "early_stopping_patience": 31}
    summary = status.StatusSummary(
        name="foreign", budget=None, sampler=None, pruner=None, fingerprint=None,
        counts={"COMPLETE": 1, "PRUNED": 0, "RUNNING": 1, "WAITING": 0, "FAIL": 2},
        best=status.BestTrial(number=0, value=0.5, per_class_iou={"1": 0.5, "4": None}, params=params),
        running=[status.RunningTrial(number=3, host="gpu-node-17", pid=4242, gpu=None, age_s=3725.0,
                                     phase="compiling", epoch=0, last_value=None, params=params)],
    )
    console = Console(record=True, width=80)
    status.render_status(summary, "sqlite:///x.db", console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "spec:     none" in text and "progress: 1/- finished" in text
    assert "1=0.5000 4=n/a" in text
    assert "gpu-node-17" in text and "1h02m" in text and "compiling" in text
    assert text.count("class_weights=sqrt_inverse_frequency") == 2  # best and running, unbroken
    assert "learning_rate=0.000123" in text


def test_print_status_unknown_study_lists_names(pg_schema_url):
    Builder(pg_schema_url, "alpha").close()
    with pytest.raises(StudyError, match=r"no study 'nosuch'.*alpha"):
        status.print_status("nosuch", pg_schema_url, console=_console())


def test_list_on_empty_database_creates_nothing(pg_url):
    console = _console()
    status.print_study_list(pg_url, console=console)
    assert "no studies" in console.export_text()
    assert storage.current_revision(pg_url) is None


def test_list_shows_budget_and_foreign_studies(pg_schema_url):
    b = _mixed(pg_schema_url, "mars")
    foreign = optuna.create_study(study_name="foreign", storage=b.rdb, direction="maximize")
    foreign.add_trial(optuna.trial.create_trial(value=0.25, params={}, distributions={}))

    rows = {r.name: r for r in status.list_studies(pg_schema_url)}
    assert set(rows) == {"mars", "foreign"}
    _, best = b.best()
    assert (rows["mars"].finished, rows["mars"].budget, rows["mars"].running, rows["mars"].failed) == (4, 5, 2, 1)
    assert rows["mars"].best_value == pytest.approx(best)
    assert rows["mars"].created is not None
    assert (rows["foreign"].budget, rows["foreign"].finished, rows["foreign"].best_value) == (None, 1, 0.25)

    console = _console()
    status.print_study_list(pg_schema_url, console=console)
    text = console.export_text()
    assert "4/5" in text and "1/-" in text and f"{best:.4f}" in text
    b.close()


# -- export -----------------------------------------------------------------------------------


def test_export_yaml_and_json_round_trip(mixed, tmp_path, capsys):
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
        artifact_store=FileSystemArtifactStore(str(artifacts)), file_path=str(tmp_path / "trial.keras"),
        study_or_trial=trial,
    )
    trial.set_user_attr(trial_attrs.MODEL_ARTIFACT, artifact_id)
    trial_attrs.record_result(trial, FakeResult(best_miou=0.99, per_class_iou={1: 0.99, 2: 0.99, 3: 0.99, 4: 0.99}))
    b.study.tell(trial, 0.99)

    model = tmp_path / "out" / "best.keras"
    model.parent.mkdir()
    export.export_best("withmodel", storage=pg_schema_url, output=tmp_path / "c.yaml", model=model,
                       artifact_dir=artifacts)
    assert model.read_bytes() == model_bytes
    assert [p.name for p in model.parent.iterdir()] == ["best.keras"]

    with pytest.raises(StudyError, match="already exists"):
        export.export_best("withmodel", storage=pg_schema_url, model=model, artifact_dir=artifacts)
    with pytest.raises(StudyError, match="--artifact-dir"):
        export.export_best("withmodel", storage=pg_schema_url, model=tmp_path / "m2.keras")
    with pytest.raises(StudyError, match=r"name it \*\.keras"):
        export.export_best("withmodel", storage=pg_schema_url, model=tmp_path / "m2.h5", artifact_dir=artifacts)
    with pytest.raises(ArtifactDirError, match="is a file, not a directory"):
        export.export_best("withmodel", storage=pg_schema_url, model=tmp_path / "m2.keras",
                           artifact_dir=tmp_path / "trial.keras")

    # The config cannot be written: the model is not left behind either.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StudyError, match="cannot write .*is a file, not a directory"):
        export.export_best("withmodel", storage=pg_schema_url, output=blocker / "c.yaml",
                           model=tmp_path / "m3.keras", artifact_dir=artifacts)
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


# -- dashboard --------------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.mark.slow
def test_dashboard_app_serves_the_study(pg_schema_url):
    b = _mixed(pg_schema_url)
    study_id = b.rdb.get_study_id_from_name("mars")
    server = make_server("127.0.0.1", 0, dashboard.make_app(pg_schema_url), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        code, body = _get(f"{base}/api/studies")
        assert code == 200
        assert [(s["study_id"], s["study_name"]) for s in body["study_summaries"]] == [(study_id, "mars")]
        code, body = _get(f"{base}/api/studies/{study_id}")
        assert code == 200
        assert body["name"] == "mars"
        assert sorted(t["number"] for t in body["trials"]) == [t.number for t in b.study.trials]
        code, _ = _get(f"{base}/api/studies/999999")
        assert code == 404
    finally:
        server.shutdown()
        server.server_close()
    b.close()


def test_dashboard_creates_the_schema_and_finds_study_ids(pg_url):
    assert storage.current_revision(pg_url) is None
    rdb = dashboard.open_dashboard_storage(pg_url)
    assert storage.current_revision(pg_url) is not None
    with pytest.raises(StudyError, match=r"no study 'nosuch'.*\(studies: none\)"):
        dashboard.study_id(rdb, "nosuch", pg_url)
    rdb.engine.dispose()
    b = Builder(pg_url, "mars")
    rdb = dashboard.open_dashboard_storage(pg_url)
    assert dashboard.study_id(rdb, "mars", pg_url) == b.rdb.get_study_id_from_name("mars")
    rdb.engine.dispose()
    b.close()


def test_dashboard_on_a_busy_port_is_one_clear_error(pg_url, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(dashboard.DashboardError, match=f"cannot listen on 127.0.0.1:{port}"):
            dashboard.serve(pg_url, storage="sqlite:///not-used.db", port=port)  # a URL target wins
    assert storage.mask_url(pg_url) in capsys.readouterr().out


def test_dashboard_bad_inputs_fail_before_serving_and_write_nothing(pg_url, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ArtifactDirError, match="artifact directory .* is a file"):
        dashboard.serve(pg_url, storage=None, artifact_dir=a_file)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(StudyError, match=r"no study 'typo'.*\(studies: none\)"):
        dashboard.serve("typo", storage=fresh)
    assert not (tmp_path / "fresh.db").exists()  # a mistyped name creates no database
    result = _run("dashboard", "--storage", pg_url, "--port", "99999")
    assert result.returncode == 2 and "--port" in result.stderr and "Traceback" not in result.stderr
    assert storage.current_revision(pg_url) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TUNER), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_cli_dashboard_comes_up(pg_schema_url):
    b = Builder(pg_schema_url, "mars")
    study_id = b.rdb.get_study_id_from_name("mars")
    b.close()
    port = _free_port()
    proc = subprocess.Popen(
        [str(TUNER), "dashboard", "mars", "--storage", pg_schema_url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                code, body = _get(f"http://127.0.0.1:{port}/api/studies")
                if code == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert body is not None, "dashboard did not come up within 20 s"
        assert [s["study_name"] for s in body["study_summaries"]] == ["mars"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/dashboard/studies/{study_id}" in out


@pytest.mark.slow
def test_cli_status_list_export(pg_schema_url, tmp_path):
    b = _mixed(pg_schema_url)
    number, value = b.best()
    recorded = TrainConfig.from_dict(b.study.trials[number].user_attrs[trial_attrs.CONFIG])
    b.close()
    env = {**os.environ, "COLUMNS": "160"}

    done = _run("status", "mars", "--storage", pg_schema_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "progress: 4/5" in done.stdout and "node-b" in done.stdout

    done = _run("list", "--storage", pg_schema_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "mars" in done.stdout and "4/5" in done.stdout

    out = tmp_path / "best.yaml"
    done = _run("export", "mars", "--storage", pg_schema_url, "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert TrainConfig.load(out) == recorded

    done = _run("status", "nosuch", "--storage", pg_schema_url, env=env)
    assert done.returncode == 1
    expected = f"error: no study 'nosuch' in {storage.mask_url(pg_schema_url)} (studies: mars)"
    assert done.stderr.strip().splitlines() == [expected]
