"""``tuner dashboard``: optuna-dashboard on the resolved storage, in-process and as a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

from handmade import Builder, mixed_study
from helpers import BIN
import pytest

from contract.artifacts import ArtifactDirError
import storage
from tuner import dashboard
from tuner.study import StudyError

TUNER = BIN / "tuner"


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
    b = mixed_study(pg_schema_url)
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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
