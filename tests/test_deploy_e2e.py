"""The whole Docker deployment, for real, with the commands docs/deployment.md gives.

A coordinator and a team machine, each a copy of the repository like a user's checkout, run the
documented lines (tests/deployment.py: Project): build, up, a worker container killed mid-trial
and its trial retried, team workers joining through the published port, then what users look at
and least privilege. Needs Docker set up by deploy/ci-images.sh (which .ci/run calls); skips
without it, except under CI=true, where it fails. The tuner image it builds is reused by
tests/test_deploy_pgbouncer.py, which runs after it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from deployment import (
    CI_BASE_IMAGE,
    CI_POSTGRES_IMAGE,
    CI_TUNER_IMAGE,
    DOCS,
    E2E_SETUP,
    E2E_SPACE,
    E2E_TEARDOWN,
    ROOT,
    Project,
    assert_nothing_left,
    checkout,
    free_port,
    pip_build_secrets,
    require_docker,
    tear_down,
    wait_for,
)
from helpers import BIN
import pytest
import yaml


def test_e2e_commands_are_the_documented_ones():
    """The end-to-end test below runs these lines; users copy them from the docs."""
    docs = DOCS.read_text()
    readme = (ROOT / "README.md").read_text()
    for line in (*E2E_COORDINATOR, *E2E_TEAM, *E2E_TEARDOWN):
        assert line in docs, f"docs/deployment.md lacks: {line}"
    for line in E2E_README:
        assert line in readme, f"README.md lacks: {line}"


# --- For real: the whole deployment with Docker ----------------------------------------------
#
# How these tests run the deployment: tests/deployment.py.

E2E_STUDY = "e2e"
E2E_TRIALS = 4
E2E_COORDINATOR = (
    "docker compose build",
    "docker compose up -d --scale worker-cpu=2 postgres dashboard worker-cpu",
    "docker compose ps -a",
)
E2E_TEAM = (
    "docker compose -f docker-compose.workers.yml run --rm worker-cpu tuner db check",
    "docker compose -f docker-compose.workers.yml up -d worker-cpu",
)
E2E_README = (*E2E_SETUP, "docker compose up -d postgres dashboard worker-cpu", "docker compose ps -a")


@pytest.fixture(scope="module")
def docker_ready():
    require_docker()


@pytest.mark.slow
@pytest.mark.docker
def test_the_whole_deployment_for_real(docker_ready, tmp_path):
    import json
    import secrets as secrets_module
    import urllib.error
    import urllib.request

    import optuna
    from optuna.trial import TrialState

    from contract import trial_attrs

    tag = f"mt-e2e-{os.getpid()}-{secrets_module.token_hex(3)}"
    log: list[str] = []
    pg_port, dash_port = free_port(), free_port()
    coord = Project(checkout(tmp_path / "coordinator"), "deploy/compose.ci.yml", log)
    team_ = Project(checkout(tmp_path / "team"), "deploy/compose.ci-workers.yml", log)
    timings: dict[str, float] = {}
    started = time.monotonic()

    try:
        # --- coordinator: .env, secret, data, space; build; up -----------------------------
        for line in E2E_SETUP:
            coord.sh(line)
        (coord.root / "data").mkdir()
        subprocess.run(
            [str(BIN / "worker"), "synth-data", str(coord.root / "data" / "synthetic.npz"), "--n", "48", "--seed", "3"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (coord.root / "data" / "space.yaml").write_text(yaml.safe_dump(E2E_SPACE))
        coord.env(
            COMPOSE_PROJECT_NAME=tag,
            BASE_IMAGE=CI_BASE_IMAGE,
            POSTGRES_IMAGE=CI_POSTGRES_IMAGE,
            TUNER_IMAGE=CI_TUNER_IMAGE,
            POSTGRES_PORT=pg_port,
            DASHBOARD_PORT=dash_port,
            TUNER_STUDY=E2E_STUDY,
            TUNER_TRIALS=E2E_TRIALS,
            TUNER_PRUNER="none",
            SEARCH_SPACE="/data/space.yaml",
            DATA_FILE="synthetic.npz",
            TUNER_HEARTBEAT_INTERVAL=2,
            TUNER_GRACE_PERIOD=10,
            **pip_build_secrets(tmp_path),
        )
        start = time.monotonic()
        coord.sh(E2E_COORDINATOR[0], timeout=1200)  # build
        timings["build"] = time.monotonic() - start
        # A password file other users may read: `up` refuses (init stops with one line).
        secret = coord.root / "secrets" / "postgres_password"
        secret.chmod(0o644)
        refused = coord.sh(E2E_COORDINATOR[1], timeout=600, check=False)
        assert refused.returncode != 0, log[-1]
        init_log = coord.sh("docker compose logs roles").stdout
        assert "readable or writable by other users" in init_log, init_log[-2000:]
        assert not re.search(r"worker-cpu-\d+\s.*\bUp\b", coord.sh("docker compose ps -a").stdout)
        secret.chmod(0o640)
        start = time.monotonic()
        coord.sh(E2E_COORDINATOR[1], timeout=600)  # up
        timings["up"] = time.monotonic() - start
        ps = coord.sh(E2E_COORDINATOR[2]).stdout  # ps -a: init exited (0), the rest up
        assert re.search(r"-init-1\s.*Exited \(0\)", ps), ps

        password = (coord.root / "secrets" / "postgres_password").read_text().strip()
        url = f"postgresql://postgres:{password}@127.0.0.1:{pg_port}/optuna"  # the test's own look
        rdb = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)

        def trials():
            return optuna.load_study(study_name=E2E_STUDY, storage=rdb).get_trials(deepcopy=False)

        # --- kill a worker container mid-trial; another worker retries the trial ----------
        def running_with_an_epoch():
            return next((t for t in trials() if t.state == TrialState.RUNNING and t.intermediate_values), None)

        victim = wait_for(running_with_an_epoch, 600, "a trial in its first epochs", log)
        import sqlalchemy

        with rdb.engine.connect() as conn:  # workers run as the worker role, nothing as a superuser
            users = set(
                conn.execute(
                    sqlalchemy.text(
                        "SELECT DISTINCT usename FROM pg_stat_activity "
                        "WHERE application_name LIKE 'mars-tuner-worker@%'"
                    )
                ).scalars()
            )
        assert users == {"tuner_worker"}, users
        container = victim.user_attrs[trial_attrs.WORKER]["host"]  # the container's hostname: its short id
        subprocess.run(["docker", "kill", container], check=True, capture_output=True, timeout=60)
        log.append(f"killed container {container} running trial {victim.number}")

        # --- a team machine: workers-only project against the coordinator's PostgreSQL -----
        for line in E2E_SETUP:
            team_.sh(line)
        import shutil

        for name in os.listdir(team_.root / "secrets"):  # a team machine holds the worker's password only
            os.remove(team_.root / "secrets" / name)
        shutil.copy(coord.root / "secrets" / "worker_password", team_.root / "secrets" / "worker_password")
        shutil.copytree(coord.root / "data", team_.root / "data")
        team_.env(
            COMPOSE_PROJECT_NAME=f"{tag}-team",
            BASE_IMAGE=CI_BASE_IMAGE,
            TUNER_IMAGE=CI_TUNER_IMAGE,
            TUNER_STORAGE=f"postgresql://tuner_worker@127.0.0.1:{pg_port}/optuna",
            TUNER_STUDY=E2E_STUDY,
            DATA_FILE="synthetic.npz",
            **pip_build_secrets(tmp_path),
        )
        check = team_.sh(E2E_TEAM[0], timeout=300)  # tuner db check through the published port
        assert "password" not in check.stdout.lower() or "***" in check.stdout
        team_.sh(E2E_TEAM[1], timeout=300)

        def finished():
            ts = trials()
            done = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            return ts if len(done) >= E2E_TRIALS and not any(t.state == TrialState.RUNNING for t in ts) else None

        start = time.monotonic()
        final = wait_for(finished, 900, "the study to finish", log)
        timings["study after kill"] = time.monotonic() - start
        failed = [t for t in final if t.state == TrialState.FAIL]
        assert [t.number for t in failed] == [victim.number], [(t.number, t.state) for t in final]
        retries = [t for t in final if t.number > victim.number and t.params == victim.params]
        assert retries and retries[0].state == TrialState.COMPLETE, "the killed trial was not retried"
        assert len([t for t in final if t.state == TrialState.COMPLETE]) == E2E_TRIALS
        hosts = {t.user_attrs[trial_attrs.WORKER]["host"] for t in final}
        log.append(f"trials ran on {sorted(hosts)}")
        team_log = team_.sh("docker compose -f docker-compose.workers.yml logs worker-cpu").stdout
        assert "matches the study" in team_log, team_log[-2000:]  # joined: same data, same study

        # --- what users look at -------------------------------------------------------------
        status = coord.sh(f"docker compose exec dashboard tuner status {E2E_STUDY}").stdout
        assert "COMPLETE" in status.upper() and "FAIL" in status.upper(), status
        coord.sh(f"docker compose exec -T dashboard tuner export {E2E_STUDY} --format yaml > best.yaml")
        best = yaml.safe_load((coord.root / "best.yaml").read_text())
        best_trial = max((t for t in final if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        assert best["learning_rate"] == pytest.approx(best_trial.params["learning_rate"])
        assert best["epochs"] == 3 and best["base_filters"] == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/api/studies", timeout=30) as response:
            studies = json.loads(response.read())
        # --- least privilege: each service as its role; the dashboard reads only ----------------
        with rdb.engine.connect() as conn:
            users = dict(
                conn.execute(
                    sqlalchemy.text(
                        "SELECT split_part(application_name, '@', 1), string_agg(DISTINCT usename, ',') "
                        "FROM pg_stat_activity WHERE application_name LIKE 'mars-tuner-%' GROUP BY 1"
                    )
                ).all()
            )
        assert users.get("mars-tuner-dashboard") == "tuner_viewer", users
        refused = urllib.request.Request(f"http://127.0.0.1:{dash_port}/api/studies/1", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(refused, timeout=30)
        assert denied.value.code == 403 and b"read-only" in denied.value.read()
        with rdb.engine.connect() as conn:
            owners = set(
                conn.execute(
                    sqlalchemy.text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
                ).scalars()
            )
        assert owners == {"tuner_owner"}, owners
        names = [s.get("study_name") for s in studies.get("study_summaries", studies.get("studies", []))]
        assert E2E_STUDY in names, studies
        rdb.engine.dispose()
    finally:
        # --- tear down whatever happened, and check nothing of ours is left ------------------
        tear_down(coord, team_, tag, timings=timings, started=started, log=log)
    assert_nothing_left(tag)
