"""Passwords in the compose deployment travel only as secret files, each service its own.

Each tuner service reaches PostgreSQL as its own role with its own secret file, no password is
written in the compose files, the Dockerfile or .env.example, and each document's recipe for
``secrets/`` is run as written and leaves the files to you and your group. No Docker needed.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import subprocess

from deployment import (
    DOCKERFILE,
    DOCS,
    ENV_EXAMPLE,
    MAIN,
    ROOT,
    SECRET_DIR,
    TEAM_URL,
    WORKERS,
    coordinator,
    interpolate,
    service_env,
    team,
    tuner_services,
)
import pytest
from sqlalchemy.engine import make_url

from storage.url import ENV_PASSWORD_FILE

# --- Roles and secret files -------------------------------------------------------------------


ROLE_OF = {"roles": None, "init": "tuner_owner", "dashboard": "tuner_viewer"}  # None: the superuser
SECRET_OF = {"roles": "postgres_password", "init": "owner_password", "dashboard": "dashboard_password"}


@pytest.mark.parametrize("env", [{}, {"POSTGRES_USER": "alice", "POSTGRES_DB": "hpo"}], ids=["defaults", "custom"])
def test_each_tuner_service_reaches_postgres_as_its_own_role_with_its_own_secret(env):
    main = coordinator(env)
    pg_env = service_env(main["services"]["postgres"])
    for name, svc in tuner_services(main).items():
        url = make_url(service_env(svc)["TUNER_STORAGE"])
        assert url.get_backend_name() == "postgresql", name
        assert url.host == "postgres" and url.host in main["services"], name
        assert str(url.port) == main["services"]["postgres"]["ports"][0].rsplit(":", 1)[1], name
        assert url.username == (ROLE_OF.get(name, "tuner_worker") or pg_env["POSTGRES_USER"]), name
        assert url.database == pg_env["POSTGRES_DB"], name
        assert url.password is None, f"{name}: password in the URL"
        secret = SECRET_OF.get(name, "worker_password")
        assert service_env(svc)[ENV_PASSWORD_FILE] == SECRET_DIR + secret, name
        assert "postgres_password" not in svc["secrets"] or name == "roles", f"{name} gets the superuser's password"
    assert main["secrets"]["dashboard_password"] == {"file": "./secrets/viewer_password"}
    opted = coordinator({**env, "DASHBOARD_ROLE": "worker"})
    assert make_url(service_env(opted["services"]["dashboard"])["TUNER_STORAGE"]).username == "tuner_worker"
    assert opted["secrets"]["dashboard_password"] == {"file": "./secrets/worker_password"}
    for svc in team()["services"].values():
        assert svc["secrets"] == ["worker_password", "postgres_ca"]
        assert service_env(svc)[ENV_PASSWORD_FILE] == SECRET_DIR + "worker_password"


@pytest.mark.parametrize("load_file", [coordinator, team], ids=["coordinator", "team"])
def test_password_only_travels_as_a_secret_file(load_file):
    compose = load_file()
    for name, secret in compose["secrets"].items():
        if name.endswith("_password"):
            assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), name
    for name, svc in compose["services"].items():
        env = service_env(svc)
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert key.endswith("_FILE") and value.startswith(SECRET_DIR), f"{name}: {key}={value}"
        password_files = [
            v for k, v in env.items() if k in (ENV_PASSWORD_FILE, "POSTGRES_PASSWORD_FILE", "PGBOUNCER_PASSWORD_FILE")
        ]
        assert password_files, f"{name} has no way to get the password"
        for path in password_files:
            assert path[len(SECRET_DIR) :] in svc["secrets"], f"{name}: {path} is not a mounted secret"


def test_no_plaintext_password_in_compose_files_or_dockerfile():
    assignment = re.compile(r"(?i)\b\w*(PASSWORD|PASSWD|SECRET|TOKEN)\b\s*[=:]\s*(\S+)")
    for path in (MAIN, WORKERS, DOCKERFILE):
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            for m in assignment.finditer(line):
                assert m[2].startswith(SECRET_DIR), f"{path.name}: {line.strip()}"
        text = interpolate(path.read_text(), {"TUNER_STORAGE": TEAM_URL})
        for url in re.findall(r"postgres(?:ql)?://[^\s\"']+", text):
            assert make_url(url).password is None, f"{path.name}: {url}"


# --- The secret recipe ------------------------------------------------------------------------
#
# Compose mounts a secret file as it is on the host, so the recipe's modes are what protects the
# password. Each document's copy of the recipe is run as written, on a fresh checkout and on one
# where an older recipe left `secrets/` and the file open to everyone.

RECIPE_DOCS = {
    "README.md": ROOT / "README.md",
    "docs/deployment.md": DOCS,
    ".env.example": ENV_EXAMPLE,
    "docker-compose.yml": MAIN,
    "docker-compose.workers.yml": WORKERS,
}


def recipes(path: Path) -> list[list[str]]:
    """The secret recipes in a document: consecutive shell lines that handle ``secrets/``.

    Markdown: the lines of ``bash`` blocks; compose files and .env.example: comment lines
    indented as commands (``#   ...``).
    """
    text = path.read_text()
    if path.suffix == ".md":
        lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    else:
        lines = [line[4:] for line in text.splitlines() if line.startswith("#   ")]
    found: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if "secrets" in line and not line.lstrip().startswith("docker"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return [*found, current] if current else found


def _run_recipe(lines: list[str], where: Path, coordinator_copy: Path) -> None:
    script = "\n".join(lines).replace("scp coordinator.example.org:mars-tuner/", f"cp {coordinator_copy}/")
    script = script.replace("scp coordinator:mars-tuner/", f"cp {coordinator_copy}/")
    subprocess.run(
        ["bash", "-euc", script],
        cwd=where,
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "HOME": str(where)},
    )


ROLE_SECRETS = ("postgres_password", "owner_password", "worker_password", "viewer_password")


@pytest.mark.parametrize("name", sorted(RECIPE_DOCS))
@pytest.mark.parametrize("before", ["fresh", "world-readable leftovers"])
def test_secret_recipe_leaves_the_passwords_to_you_and_your_group(tmp_path, name, before):
    from storage.url import read_password_file

    found = recipes(RECIPE_DOCS[name])
    assert found, f"{name} has no secret recipe"
    coordinator_copy = tmp_path / "coordinator" / "secrets"  # what scp fetches on team machines
    coordinator_copy.mkdir(parents=True)
    (coordinator_copy / "worker_password").write_text("from-the-coordinator\n")
    (coordinator_copy / "worker_password").chmod(0o644)
    for i, lines in enumerate(found):
        where = tmp_path / f"checkout{i}"
        (where / "secrets").mkdir(parents=True)
        (where / ".env").write_text("SECRETS_GID=10001\n")  # as `cp .env.example .env` leaves it
        team_recipe = any("scp" in line for line in lines)
        made = ("worker_password",) if team_recipe else ROLE_SECRETS
        if before == "fresh":
            (where / "secrets").rmdir()
        else:  # what `mkdir -p -m 700` + `chmod 644` left behind: passwords the database has
            (where / "secrets").chmod(0o755)
            for secret in made:
                (where / "secrets" / secret).write_text(f"kept {secret}\n")
                (where / "secrets" / secret).chmod(0o644)
        _run_recipe(lines, where, coordinator_copy.parent)
        assert (where / "secrets").stat().st_mode & 0o777 == 0o700, f"{name}: {lines}"
        assert sorted(p.name for p in (where / "secrets").iterdir()) == sorted(made), name
        for secret in made:
            path = where / "secrets" / secret
            assert path.stat().st_mode & 0o777 == 0o640, f"{name}: {lines}"
            password = read_password_file(path, secret)  # the reader the containers use accepts it
            if team_recipe:
                assert password == "from-the-coordinator", name
            elif before != "fresh":
                assert password == f"kept {secret}", f"{name}: the recipe replaced a password the database has"
            else:
                assert re.fullmatch(r"[0-9a-f]{48}", password), name
        gids = re.findall(r"^SECRETS_GID=(\d+)$", (where / ".env").read_text(), flags=re.M)
        assert gids[-1] == str(os.getgid()), f"{name}: the containers do not join the files' group"


def test_secret_files_are_read_through_the_hosts_group():
    for compose in (coordinator(), team()):
        for name, svc in compose["services"].items():
            if svc.get("secrets") and name != "postgres":
                assert svc.get("group_add") == ["10001"], name
        assert coordinator({"SECRETS_GID": "1000"})["services"]["init"]["group_add"] == ["1000"]
