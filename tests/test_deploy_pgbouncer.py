"""The opt-in PgBouncer of the compose deployment (docs/pgbouncer.md), wired right, and for real.

Without Docker: the ``pgbouncer`` service of docker-compose.yml (a profile, the worker role and
its secret, the workers' server settings as its ``connect_query``, TLS only with a certificate)
and its image's entrypoint, run on this machine with a stand-in ``pgbouncer`` that only shows the
files it was given. With Docker (marked like tests/test_deploy_e2e.py's deployment test): team
workers reach the coordinator's PostgreSQL through the PgBouncer container over verified TLS,
finish the budget exactly, and the pooler's console and the server both show that they did.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import shutil
import subprocess
import time

from deployment import (
    CI_BASE_IMAGE,
    CI_DEBIAN_IMAGE,
    CI_POSTGRES_IMAGE,
    CI_TUNER_IMAGE,
    E2E_SETUP,
    E2E_SPACE,
    E2E_TEARDOWN,
    ROOT,
    SECRET_DIR,
    Project,
    active,
    assert_nothing_left,
    checkout,
    coordinator,
    free_port,
    load,
    pip_build_secrets,
    require_docker,
    service_env,
    team,
    tear_down,
    wait_for,
)
from helpers import BIN
import pytest
from sqlalchemy.engine import make_url
import yaml

from storage.engine import pooler_connect_query

DOC = ROOT / "docs" / "pgbouncer.md"
IMAGE_DIR = ROOT / "deploy" / "pgbouncer"
ENTRYPOINT = IMAGE_DIR / "entrypoint.sh"
WORKER = "tuner_worker"

# The documented lines the deployment test runs (docs/pgbouncer.md holds each).
PGB_COORDINATOR = (
    "docker compose build pgbouncer",
    "docker compose up -d postgres dashboard pgbouncer",
)
PGB_TEAM = "docker compose -f docker-compose.workers.yml up -d --scale worker-cpu=2 worker-cpu"
PGB_CONSOLE = "docker compose exec -T pgbouncer psql -h /run/pgbouncer -p 6432 -U pgbouncer pgbouncer"


def pooler(env: dict[str, str] | None = None) -> dict:
    return coordinator(env)["services"]["pgbouncer"]


# --- The compose service ---------------------------------------------------------------------


def test_pgbouncer_is_opt_in_and_only_on_the_coordinator():
    main = coordinator()
    assert pooler()["profiles"] == ["pgbouncer"]
    for profiles, named in (
        (set(), set()),
        ({"cpu"}, set()),
        ({"gpus8"}, set()),
        (set(), {"postgres", "dashboard", "worker-cpu"}),
    ):
        assert "pgbouncer" not in active(main, profiles, named), (profiles, named)
    assert "pgbouncer" in active(main, {"pgbouncer"}) and "pgbouncer" in active(main, set(), {"pgbouncer"})
    assert "pgbouncer" not in team()["services"]
    for name, svc in main["services"].items():  # everything on the coordinator stays direct
        if "TUNER_STORAGE" in service_env(svc):
            assert make_url(service_env(svc)["TUNER_STORAGE"]).host == "postgres", name


@pytest.mark.parametrize("env", [{}, {"POSTGRES_DB": "hpo", "SECRETS_GID": "1000"}], ids=["defaults", "custom"])
def test_pgbouncer_logs_in_as_the_worker_role_with_the_workers_secret(env):
    main = coordinator(env)
    svc, pg = main["services"]["pgbouncer"], main["services"]["postgres"]
    penv = service_env(svc)
    worker_url = make_url(service_env(main["services"]["worker"])["TUNER_STORAGE"])
    assert penv["PGBOUNCER_USER"] == worker_url.username == WORKER
    assert penv["PGBOUNCER_PASSWORD_FILE"] == SECRET_DIR + "worker_password"
    assert penv["PGBOUNCER_DB_NAME"] == worker_url.database == service_env(pg)["POSTGRES_DB"]
    assert (penv["PGBOUNCER_DB_HOST"], penv["PGBOUNCER_DB_PORT"]) == ("postgres", "5432")
    assert pg["ports"][0].rsplit(":", 1)[1] == "5432"
    # Only the worker's password, read through the secret files' group; no other role's secret.
    assert svc["secrets"] == ["worker_password", "pgbouncer_tls_cert", "pgbouncer_tls_key"]
    assert svc["group_add"] == [env.get("SECRETS_GID", "10001")]
    assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert svc["restart"] == "unless-stopped"


def test_pgbouncer_sets_the_workers_server_settings_on_every_server_connection():
    assert service_env(pooler())["PGBOUNCER_CONNECT_QUERY"] == pooler_connect_query()


def test_pgbouncer_is_published_on_localhost_by_default_with_room_for_its_clients():
    assert pooler()["ports"] == ["127.0.0.1:6432:6432"]
    assert pooler({"PGBOUNCER_BIND": "10.0.0.5", "PGBOUNCER_PORT": "7432"})["ports"] == ["10.0.0.5:7432:6432"]
    env = service_env(pooler())
    assert (env["PGBOUNCER_POOL_SIZE"], env["PGBOUNCER_MAX_CLIENT_CONN"]) == ("20", "2000")
    nofile = pooler()["ulimits"]["nofile"]
    assert nofile["soft"] == nofile["hard"] > int(env["PGBOUNCER_MAX_CLIENT_CONN"]) + int(env["PGBOUNCER_POOL_SIZE"])


def test_tls_from_team_workers_only_when_a_certificate_is_named():
    main = coordinator()
    env = service_env(main["services"]["pgbouncer"])
    assert env["PGBOUNCER_TLS_CERT_FILE"] == SECRET_DIR + "pgbouncer_tls_cert"
    assert env["PGBOUNCER_TLS_KEY_FILE"] == SECRET_DIR + "pgbouncer_tls_key"
    assert main["secrets"]["pgbouncer_tls_cert"] == main["secrets"]["pgbouncer_tls_key"] == {"file": "/dev/null"}
    named = coordinator(
        {"PGBOUNCER_TLS_CERT_FILE_HOST": "./secrets/pgb.crt", "PGBOUNCER_TLS_KEY_FILE_HOST": "./secrets/pgb.key"}
    )["secrets"]
    assert (named["pgbouncer_tls_cert"], named["pgbouncer_tls_key"]) == (
        {"file": "./secrets/pgb.crt"},
        {"file": "./secrets/pgb.key"},
    )


def test_pgbouncer_image_is_debians_package_on_bookworm_and_unprivileged():
    svc = pooler()
    assert svc["build"] == {"context": "deploy/pgbouncer", "args": {"DEBIAN_IMAGE": "debian:bookworm-slim"}}
    assert svc["image"] == "mars-tuner-pgbouncer:latest" != coordinator()["services"]["roles"]["image"]
    dockerfile = (IMAGE_DIR / "Dockerfile").read_text()
    assert re.search(r"^ARG DEBIAN_IMAGE=debian:bookworm-slim$", dockerfile, flags=re.M)
    assert re.search(r"^FROM \$\{DEBIAN_IMAGE\}$", dockerfile, flags=re.M)
    assert re.search(r"apt-get install [^\n]*\bpgbouncer\b", dockerfile)
    assert re.findall(r"^USER (\S+)$", dockerfile, flags=re.M) == ["postgres"]
    assert not re.search(r"(?i)^(ARG|ENV)\b.*(PASSWORD|SECRET|TOKEN)", dockerfile, flags=re.M)
    # CI builds it on the host network, like the tuner image.
    ci = load(ROOT / "deploy" / "compose.ci.yml")
    assert ci["services"]["pgbouncer"] == {"build": {"network": "host"}}


def test_team_workers_point_at_pgbouncer_by_their_one_setting():
    url = f"postgresql://{WORKER}@coordinator.example.org:6432/optuna"
    for svc in team({"TUNER_STORAGE": url})["services"].values():
        assert service_env(svc)["TUNER_STORAGE"] == url
    text = DOC.read_text()
    assert f"TUNER_STORAGE=postgresql://{WORKER}@coordinator.example.org:6432/optuna" in text
    for line in (*PGB_COORDINATOR, PGB_TEAM, PGB_CONSOLE.replace(" -T", ""), *E2E_TEARDOWN):
        assert line in text, f"docs/pgbouncer.md lacks: {line}"


# --- The entrypoint, without Docker ----------------------------------------------------------


def _entrypoint(tmp_path: Path, password: str | None = 's3cr"et', mode: int = 0o640, **env: str):
    """Run the entrypoint with a stand-in ``pgbouncer`` that prints the ini it was given."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "pgbouncer").write_text('#!/bin/sh\necho "ran pgbouncer $1"\n')
    (fake / "pgbouncer").chmod(0o755)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    secret = tmp_path / "worker_password"
    if password is not None:
        secret.write_text(password + "\n")
        secret.chmod(mode)
    values = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "PGBOUNCER_RUN_DIR": str(run),
        **{k: v for k, v in service_env(pooler()).items() if k.startswith("PGBOUNCER_")},
        "PGBOUNCER_PASSWORD_FILE": str(secret),
        "PGBOUNCER_TLS_CERT_FILE": "/dev/null",
        "PGBOUNCER_TLS_KEY_FILE": "/dev/null",
        **env,
    }
    return subprocess.run(["sh", str(ENTRYPOINT)], capture_output=True, text=True, env=values, timeout=30), run


def test_entrypoint_writes_a_transaction_pool_for_the_worker_and_never_prints_the_password(tmp_path):
    result, run = _entrypoint(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"ran pgbouncer {run}/pgbouncer.ini"
    assert "s3cr" not in result.stdout + result.stderr
    assert (run / "userlist.txt").read_text() == f'"{WORKER}" "s3cr""et"\n'  # a quote doubled
    for name in ("userlist.txt", "pgbouncer.ini"):
        assert (run / name).stat().st_mode & 0o077 == 0, name
    ini = (run / "pgbouncer.ini").read_text()
    settings = dict(re.findall(r"^(\w+) = (.*)$", ini, flags=re.M))
    assert settings["pool_mode"] == "transaction" and settings["auth_type"] == "scram-sha-256"
    assert settings["ignore_startup_parameters"] == "options"
    assert (settings["default_pool_size"], settings["max_client_conn"]) == ("20", "2000")
    assert f"optuna = host=postgres port=5432 dbname=optuna connect_query='{pooler_connect_query()}'" in ini
    assert "client_tls" not in ini and "TLS from clients: off" in result.stdout


def test_entrypoint_requires_tls_from_clients_with_a_certificate_and_key(tmp_path):
    cert, key = tmp_path / "cert", tmp_path / "key"
    cert.write_text("CERT\n")
    key.write_text("KEY\n")
    result, run = _entrypoint(tmp_path, PGBOUNCER_TLS_CERT_FILE=str(cert), PGBOUNCER_TLS_KEY_FILE=str(key))
    assert result.returncode == 0, result.stderr
    settings = dict(re.findall(r"^(\w+) = (.*)$", (run / "pgbouncer.ini").read_text(), flags=re.M))
    assert settings["client_tls_sslmode"] == "require"
    assert (settings["client_tls_cert_file"], settings["client_tls_key_file"]) == (str(cert), str(key))
    half, _ = _entrypoint(tmp_path, PGBOUNCER_TLS_CERT_FILE=str(cert))
    assert half.returncode == 1 and half.stderr.startswith("error: TLS needs both")


@pytest.mark.parametrize(
    ("password", "mode", "message"),
    [
        (None, 0o640, "is not a regular file"),
        ("s3cret", 0o644, "readable or writable by other users"),
        ("", 0o640, "is empty"),
        ("two\nlines", 0o640, "alone on one line"),
    ],
)
def test_entrypoint_refuses_a_bad_password_file_in_one_line(tmp_path, password, mode, message):
    result, run = _entrypoint(tmp_path, password, mode)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert not (run / "userlist.txt").exists()
    if password:
        assert password.split()[0] not in result.stderr


# --- For real: team workers through the PgBouncer container -----------------------------------

CI_PGBOUNCER_IMAGE = "mars-tuner-ci/pgbouncer:e2e"
STUDY, TRIALS = "e2e-pgbouncer", 4


@pytest.fixture(scope="module")
def docker_ready():
    require_docker(CI_BASE_IMAGE, CI_POSTGRES_IMAGE, CI_DEBIAN_IMAGE)


def _tls_files(secrets: Path) -> Path:
    """A CA and PgBouncer's certificate for 127.0.0.1 (where team workers reach it here); the CA's path."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=secrets)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "postgres_ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=mars-tuner e2e CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "pgbouncer.key",
        "-out",
        "pgbouncer.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (secrets / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "pgbouncer.csr",
        "-CA",
        "postgres_ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "pgbouncer.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    (secrets / "pgbouncer.key").chmod(0o640)
    return secrets / "postgres_ca.crt"


def _console(coord: Project, command: str) -> list[dict[str, str]]:
    """Rows of a command on PgBouncer's admin console (its socket, inside the container)."""
    out = coord.sh(f"{PGB_CONSOLE} -A -F '|' -P footer=off -c '{command}'").stdout.splitlines()
    return [dict(zip(out[0].split("|"), row.split("|"), strict=True)) for row in out[1:]]


@pytest.mark.slow
@pytest.mark.docker
def test_team_workers_through_the_pgbouncer_container_for_real(docker_ready, tmp_path):
    import secrets as secrets_module

    import optuna
    from optuna.trial import TrialState
    import sqlalchemy

    tag = f"mt-pgb-{os.getpid()}-{secrets_module.token_hex(3)}"
    log: list[str] = []
    pg_port, dash_port, bouncer_port = free_port(), free_port(), free_port()
    coord = Project(checkout(tmp_path / "coordinator"), "deploy/compose.ci.yml", log)
    team_ = Project(checkout(tmp_path / "team"), "deploy/compose.ci-workers.yml", log)
    timings: dict[str, float] = {}
    started = time.monotonic()
    rdb = None
    try:
        # --- coordinator: postgres, roles, init, dashboard and PgBouncer with TLS ------------
        for line in E2E_SETUP:
            coord.sh(line)
        ca = _tls_files(coord.root / "secrets")
        (coord.root / "data").mkdir()
        subprocess.run(
            [str(BIN / "worker"), "synth-data", str(coord.root / "data" / "synthetic.npz"), "--n", "32", "--seed", "3"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        space = {**E2E_SPACE, "fixed": {**E2E_SPACE["fixed"], "epochs": 1}}
        (coord.root / "data" / "space.yaml").write_text(yaml.safe_dump(space))
        coord.env(
            COMPOSE_PROJECT_NAME=tag,
            BASE_IMAGE=CI_BASE_IMAGE,
            POSTGRES_IMAGE=CI_POSTGRES_IMAGE,
            TUNER_IMAGE=CI_TUNER_IMAGE,
            PGBOUNCER_IMAGE=CI_PGBOUNCER_IMAGE,
            PGBOUNCER_BASE_IMAGE=CI_DEBIAN_IMAGE,
            POSTGRES_PORT=pg_port,
            DASHBOARD_PORT=dash_port,
            PGBOUNCER_PORT=bouncer_port,
            PGBOUNCER_TLS_CERT_FILE_HOST="./secrets/pgbouncer.crt",
            PGBOUNCER_TLS_KEY_FILE_HOST="./secrets/pgbouncer.key",
            TUNER_STUDY=STUDY,
            TUNER_TRIALS=TRIALS,
            TUNER_PRUNER="none",
            SEARCH_SPACE="/data/space.yaml",
            DATA_FILE="synthetic.npz",
            TUNER_HEARTBEAT_INTERVAL=2,
            TUNER_GRACE_PERIOD=10,
            **pip_build_secrets(tmp_path),
        )
        start = time.monotonic()
        coord.sh(PGB_COORDINATOR[0], timeout=900)  # the PgBouncer image (cached after the first run)
        coord.sh(PGB_COORDINATOR[1], timeout=1200)  # builds the tuner image only if test_deploy_e2e did not
        timings["build + up"] = time.monotonic() - start
        bouncer = coord.sh("docker compose ps -q pgbouncer").stdout.strip()
        bouncer_ip = subprocess.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", bouncer],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        assert bouncer_ip, bouncer

        # --- a team machine: only the worker's password and the CA; TUNER_STORAGE names PgBouncer
        for line in E2E_SETUP:
            team_.sh(line)
        for name in os.listdir(team_.root / "secrets"):
            os.remove(team_.root / "secrets" / name)
        shutil.copy(coord.root / "secrets" / "worker_password", team_.root / "secrets" / "worker_password")
        shutil.copy(ca, team_.root / "secrets" / "postgres_ca.crt")
        shutil.copytree(coord.root / "data", team_.root / "data")
        team_.env(
            COMPOSE_PROJECT_NAME=f"{tag}-team",
            BASE_IMAGE=CI_BASE_IMAGE,
            TUNER_IMAGE=CI_TUNER_IMAGE,
            TUNER_STORAGE=f"postgresql://{WORKER}@127.0.0.1:{bouncer_port}/optuna"
            "?sslmode=verify-full&sslrootcert=/run/secrets/postgres_ca",
            POSTGRES_CA_FILE_HOST="./secrets/postgres_ca.crt",
            TUNER_STUDY=STUDY,
            DATA_FILE="synthetic.npz",
            **pip_build_secrets(tmp_path),
        )
        start = time.monotonic()
        team_.sh(PGB_TEAM, timeout=600)

        password = (coord.root / "secrets" / "postgres_password").read_text().strip()
        rdb = optuna.storages.RDBStorage(
            f"postgresql://postgres:{password}@127.0.0.1:{pg_port}/optuna",
            skip_table_creation=True,
            skip_compatibility_check=True,
        )

        def trials():
            return optuna.load_study(study_name=STUDY, storage=rdb).get_trials(deepcopy=False)

        # --- while they work: who is connected, seen from PgBouncer and from the server -------
        def both_connected():  # each worker keeps one connection open while it runs
            clients = [c for c in _console(coord, "SHOW CLIENTS") if c["user"] == WORKER]
            return clients if len(clients) >= 2 and any(t.state == TrialState.RUNNING for t in trials()) else None

        clients = wait_for(both_connected, 600, "both team workers connected and a trial running", log)
        with rdb.engine.connect() as conn:
            backends = conn.execute(
                sqlalchemy.text("SELECT host(client_addr), application_name FROM pg_stat_activity WHERE usename = :u"),
                {"u": WORKER},
            ).all()

        def finished():
            ts = trials()
            return (
                ts
                if sum(t.state == TrialState.COMPLETE for t in ts) >= TRIALS
                and not any(t.state == TrialState.RUNNING for t in ts)
                else None
            )

        wait_for(finished, 900, "the study to finish", log)
        timings["study"] = time.monotonic() - start
        time.sleep(5)  # both workers see the budget spent (and are restarted and see it again)

        # --- the budget is exact, every trial COMPLETE -----------------------------------------
        final = trials()
        assert [t.state for t in final] == [TrialState.COMPLETE] * TRIALS, [(t.number, t.state) for t in final]
        team_log = team_.sh("docker compose -f docker-compose.workers.yml logs worker-cpu").stdout
        joined = set(re.findall(r"(worker-cpu-\d+)\s*\|[^\n]*matches the study", team_log))
        assert joined == {"worker-cpu-1", "worker-cpu-2"}, team_log[-2000:]  # both joined, over TLS
        # --- and it went through PgBouncer: the server saw only the pooler's address ---------
        assert backends and {addr for addr, _ in backends} == {bouncer_ip}, (backends, bouncer_ip)
        assert all(c["database"] == "optuna" for c in clients), clients
        assert all(c["tls"].startswith("TLSv1.") for c in clients), clients  # verify-full through the pooler
        pools = {(p["database"], p["user"]): p for p in _console(coord, "SHOW POOLS")}
        assert pools[("optuna", WORKER)]["pool_mode"] == "transaction", pools
        stats = {s["database"]: s for s in _console(coord, "SHOW STATS")}
        assert int(stats["optuna"]["total_xact_count"]) > 10 * TRIALS, stats
        health = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", bouncer], capture_output=True, text=True, timeout=60
        ).stdout.strip()
        assert health == "healthy", health
        # --- no password in any log ---------------------------------------------------------------
        logs = coord.sh("docker compose --profile '*' logs").stdout + team_log
        for name in ("postgres", "owner", "worker", "viewer"):
            secret = (coord.root / "secrets" / f"{name}_password").read_text().strip()
            assert secret not in logs, f"{name}'s password is in the logs"
        log.append(
            f"backends {sorted(set(backends))}; {len(clients)} clients at PgBouncer; "
            f"{stats['optuna']['total_xact_count']} transactions"
        )
    finally:
        if rdb is not None:
            rdb.engine.dispose()
        tear_down(coord, team_, tag, timings=timings, started=started, log=log)
    assert_nothing_left(tag)
