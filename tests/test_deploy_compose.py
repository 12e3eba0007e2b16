"""The compose files are wired the way docs/deployment.md says; no Docker needed.

docker-compose.yml (the coordinator) and docker-compose.workers.yml (a team machine) are parsed
with PyYAML and interpolated the way Compose does (tests/deployment.py): which services run, in
what order, on which GPUs, with what data, restart policy and settings from .env. Only the last
test asks Compose itself, and skips without it. Passwords: tests/test_deploy_secrets.py; the
image: tests/test_deploy_image.py; commands: tests/test_deploy_commands.py; the deployment for
real: tests/test_deploy_e2e.py.
"""

from __future__ import annotations

import os
import re
import subprocess

from deployment import (
    ENV_EXAMPLE,
    MAIN,
    ROOT,
    TEAM_URL,
    WORKERS,
    MissingVariable,
    builders,
    compose_available,
    coordinator,
    devices,
    env_example,
    gpu_ids,
    load,
    service_env,
    team,
    variables,
    workers,
)
import pytest
from sqlalchemy.engine import make_url

from storage.url import ENV_PASSWORD_FILE

# --- Services and ordering -------------------------------------------------------------------


def test_coordinator_has_the_four_roles_and_the_team_file_has_only_workers():
    main, other = coordinator(), team()
    assert {"postgres", "init", "dashboard", "worker"} <= set(main["services"])
    assert set(other["services"]) == set(workers(other)), "team file runs something besides workers"
    assert "volumes" not in other or "pgdata" not in other["volumes"]
    for svc in other["services"].values():
        assert "depends_on" not in svc, "team workers cannot depend on services of another machine"


def test_init_waits_for_healthy_postgres_and_the_rest_for_completed_init():
    services = coordinator()["services"]
    assert services["roles"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["init"]["depends_on"]["roles"]["condition"] == "service_completed_successfully"
    assert services["roles"].get("restart", "no") == "no" and services["init"].get("restart", "no") == "no"
    waiting = ["dashboard", *workers(coordinator())]
    for name in waiting:
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully", name


def test_postgres_healthcheck_named_volume_and_localhost_port():
    main = coordinator()
    pg = main["services"]["postgres"]
    test = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in test
    # The check must name the same user and database the server was initialised with.
    assert "$POSTGRES_USER" in test or "${POSTGRES_USER}" in test
    assert "$POSTGRES_DB" in test or "${POSTGRES_DB}" in test
    volume, target = pg["volumes"][0].split(":")[:2]
    assert target == "/var/lib/postgresql/data"
    assert volume in main["volumes"], "database must live in a named volume"
    assert all(p.startswith("127.0.0.1:") for p in pg["ports"])
    opened = coordinator({"POSTGRES_BIND": "10.0.0.5"})["services"]["postgres"]["ports"]
    assert opened == ["10.0.0.5:5432:5432"], "the bind address must come from POSTGRES_BIND"


def test_dashboard_is_published_on_localhost_only_by_default():
    dash = coordinator()["services"]["dashboard"]
    assert dash["ports"] == ["127.0.0.1:8080:8080"]
    assert coordinator({"DASHBOARD_BIND": "0.0.0.0"})["services"]["dashboard"]["ports"] == ["0.0.0.0:8080:8080"]
    cmd = dash["command"]
    assert cmd[:2] == ["tuner", "dashboard"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "inside the container it must listen beyond loopback"
    assert cmd[cmd.index("--port") + 1] == dash["ports"][0].rsplit(":", 1)[1]


def test_init_creates_the_study_the_workers_join_and_is_rerunnable():
    for env in ({}, {"TUNER_STUDY": "other-study"}):
        main = coordinator(env)
        cmd = main["services"]["init"]["command"]
        assert cmd[:2] == ["tuner", "create"] and "--exist-ok" in cmd
        name = cmd[2]
        for svc in workers(main).values():
            assert service_env(svc)["TUNER_STUDY"] == name
        for svc in team(env)["services"].values():
            assert service_env(svc)["TUNER_STUDY"] == name


# --- GPUs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("load_file", [coordinator, team], ids=["coordinator", "team"])
def test_each_gpu_worker_reserves_exactly_one_gpu(load_file):
    services = workers(load_file())
    default = devices(services["worker"])
    assert default == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, svc in services.items():
        if name == "worker-cpu":
            assert devices(svc) == [] and svc.get("profiles"), "CPU worker must be opt-in"
            continue
        (device,) = devices(svc)
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert ("count" in device) != ("device_ids" in device), f"{name}: count and device_ids are exclusive"
        assert len(gpu_ids(svc)) == 1, name


@pytest.mark.parametrize("load_file", [coordinator, team], ids=["coordinator", "team"])
def test_profile_gpusN_runs_one_worker_on_each_of_gpus_0_to_N_minus_1(load_file):
    services = workers(load_file())
    for n in range(1, 9):
        active = [
            svc
            for name, svc in services.items()
            if name != "worker-cpu" and (not svc.get("profiles") or f"gpus{n}" in svc["profiles"])
        ]
        gpus = sorted(int(g) for svc in active for g in gpu_ids(svc))
        assert gpus == list(range(n)), f"--profile gpus{n} gives GPUs {gpus}"


def test_data_is_mounted_read_only_where_it_is_read():
    main = coordinator()
    team_workers = {f"team {k}": v for k, v in workers(team()).items()}
    readers = {"init": main["services"]["init"], **workers(main), **team_workers}
    for name, svc in readers.items():
        mounts = [v for v in svc["volumes"] if v.split(":")[1] == "/data"]
        assert mounts == ["./data:/data:ro"], name
        assert service_env(svc)["TUNER_DATA"] == "/data/mars_for_students.npz", name
    moved = coordinator({"DATA_DIR": "/srv/mars", "DATA_FILE": "x.npz"})["services"]["worker"]
    assert "/srv/mars:/data:ro" in moved["volumes"] and service_env(moved)["TUNER_DATA"] == "/data/x.npz"


# --- Environment ----------------------------------------------------------------------------


def test_team_workers_require_TUNER_STORAGE_and_use_it_verbatim():
    with pytest.raises(MissingVariable, match="TUNER_STORAGE"):
        load(WORKERS, {})
    for name, svc in team()["services"].items():
        assert service_env(svc)["TUNER_STORAGE"] == TEAM_URL, name


def test_env_example_documents_every_variable_with_the_same_defaults_and_no_password():
    documented, assigned = env_example(), env_example(commented=False)
    for path in (MAIN, WORKERS):
        for name, default in variables(path).items():
            assert name in documented, f"{name} ({path.name}) missing from .env.example"
            if default is not None and name in assigned:
                assert documented[name] == default, f"{name}: .env.example {documented[name]!r} != {default!r}"
    text = ENV_EXAMPLE.read_text()
    for name, value in documented.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", name) and not name.endswith("_GID"):  # a group id is no secret
            assert name.endswith(("_FILE", "_FILE_HOST")) and "/" in value, f"{name}={value}"
        assert not re.fullmatch(r"[A-Fa-f0-9]{16,}|[A-Za-z0-9+/_-]{24,}={0,2}", value), f"{name} looks like a key"
    for url in re.findall(r"postgres(?:ql)?://\S+", text):
        assert make_url(url).password is None, url
    # A fresh `cp .env.example .env` gives what the built-in defaults give.
    assert coordinator(assigned) == coordinator()
    assert team(assigned) == team()


def test_team_and_coordinator_workers_are_the_same_worker():
    main, other = workers(coordinator()), workers(team())
    assert set(main) == set(other)
    for name in main:
        a, b = main[name], other[name]
        for key in ("image", "command", "deploy", "profiles", "init", "restart", "stop_grace_period"):
            assert a.get(key) == b.get(key), f"{name}.{key} differs between the files"
        env_a, env_b = service_env(a), service_env(b)
        for key in ("TUNER_STUDY", "TUNER_DATA", ENV_PASSWORD_FILE, "TUNER_WAIT_FOR_DB"):
            assert env_a[key] == env_b[key], f"{name}: {key}"
    # Both files build the same image the same way (coordinator: in init).
    (main_build,) = {repr(b) for b in builders(coordinator()).values()}
    assert {repr(b) for b in builders(team()).values()} == {main_build}


# --- Restarts and settings ------------------------------------------------------------------


@pytest.mark.parametrize("load_file", [coordinator, team], ids=["coordinator", "team"])
def test_workers_come_back_after_a_crash_or_a_reboot_and_wait_for_the_database(load_file):
    for name, svc in workers(load_file()).items():
        # on-failure:N gives up for good when the database is down while workers start, and
        # is not applied after a daemon restart to a worker that exited 0 on SIGTERM.
        assert svc["restart"] == "unless-stopped", name
        assert service_env(svc)["TUNER_WAIT_FOR_DB"] == "600", name
        assert "--wait-for-db" not in svc["command"], f"{name}: set TUNER_WAIT_FOR_DB, not the flag"
    moved = workers(load_file({"TUNER_WAIT_FOR_DB": "30"}))["worker-cpu"]
    assert service_env(moved)["TUNER_WAIT_FOR_DB"] == "30"


def test_grace_period_and_heartbeat_come_from_env():
    cmd = coordinator({"TUNER_GRACE_PERIOD": "9", "TUNER_HEARTBEAT_INTERVAL": "2"})["services"]["init"]["command"]
    assert cmd[cmd.index("--grace-period") + 1] == "9"
    assert cmd[cmd.index("--heartbeat-interval") + 1] == "2"
    default = coordinator()["services"]["init"]["command"]
    assert default[default.index("--grace-period") + 1] == "120"


# --- Optional: Compose itself ----------------------------------------------------------------


@pytest.mark.skipif(not compose_available(), reason="docker compose plugin not installed")
@pytest.mark.parametrize("path", [MAIN, WORKERS], ids=lambda p: p.name)
def test_docker_compose_config_accepts_the_files(path, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x")
    env = {**os.environ, "TUNER_STORAGE": TEAM_URL, "POSTGRES_PASSWORD_FILE_HOST": str(secret)}
    result = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            str(path),
            "--profile",
            "gpus8",
            "--profile",
            "cpu",
            "--profile",
            "pgbouncer",
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
