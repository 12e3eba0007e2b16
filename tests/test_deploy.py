"""The Docker deployment files are wired the way docs/deployment.md says, and they work.

Most tests need no Docker: the compose files are parsed with PyYAML and interpolated the way
Compose does (``${VAR:-default}``, ``${VAR:?error}``, ``$$``; tests/deployment.py), the Dockerfile is read
instruction by instruction, and every ``tuner``/``worker`` command in the compose files and the
deployment docs is checked against the real CLIs' ``--help`` output. The last test runs the
whole deployment for real with Docker (set up by deploy/ci-images.sh, which .ci/run calls); it
skips without Docker, except under CI=true, where it fails.
"""

from __future__ import annotations

from collections.abc import Mapping
import fnmatch
import functools
import os
from pathlib import Path
import re
import shlex
import subprocess
import time
from typing import Any

from deployment import (
    CI_BASE_IMAGE,
    CI_POSTGRES_IMAGE,
    CI_TUNER_IMAGE,
    E2E_SETUP,
    E2E_SPACE,
    E2E_TEARDOWN,
    ENV_EXAMPLE,
    MAIN,
    ROOT,
    SECRET_DIR,
    TEAM_URL,
    WORKERS,
    MissingVariable,
    Project,
    active,
    builders,
    checkout,
    compose_available,
    coordinator,
    devices,
    env_example,
    free_port,
    gpu_ids,
    interpolate,
    leftovers,
    load,
    pip_build_secrets,
    require_docker,
    service_env,
    team,
    tuner_services,
    variables,
    wait_for,
    workers,
)
from helpers import BIN
import pytest
from sqlalchemy.engine import make_url
import tomllib
import yaml

from storage.url import ENV_PASSWORD_FILE

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCS = ROOT / "docs" / "deployment.md"
DOC_FILES = (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")  # every document whose commands users copy


# --- The real CLIs ---------------------------------------------------------------------------


@functools.cache
def help_text(*argv: str) -> str:
    """``--help`` of the installed console script, wide and uncoloured so nothing is cut."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [str(BIN / argv[0]), *argv[1:], "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, f"{' '.join(argv)} --help failed: {result.stderr[-500:]}"
    return result.stdout


def options(*argv: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", help_text(*argv))) - {"-"}


def subcommands(*argv: str) -> set[str]:
    """Names in the help's Commands box."""
    text = help_text(*argv)
    if "Commands" not in text:
        return set()
    box = text.split("Commands", 1)[1]
    return set(re.findall(r"^\W*([a-z][a-z-]*)\s{2,}", box, flags=re.M))


def split_cli(words: list[str]) -> tuple[list[str], list[str]]:
    """(``["tuner", "db", "check"]``, the rest) for a command line starting with a CLI name."""
    path = [words[0]]
    rest = words[1:]
    while rest and rest[0] in subcommands(*path):
        path.append(rest.pop(0))
    return path, rest


def used_flags(rest: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in rest if word.startswith("-")}


def compose_commands(compose: Mapping[str, Any]) -> dict[str, list[str]]:
    return {name: [str(w) for w in svc["command"]] for name, svc in compose["services"].items()
            if isinstance(svc.get("command"), list) and svc["command"][0] in ("tuner", "worker")}


def docs_commands() -> list[list[str]]:
    """Every ``tuner ...``/``worker ...`` invocation inside the docs' bash blocks."""
    found = []
    text = "\n".join(doc.read_text() for doc in DOC_FILES).replace("\\\n", " ")  # join continued lines
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0]
            for segment in re.split(r"\|\||&&|[|;>]", line):
                words = shlex.split(segment)
                for i, word in enumerate(words):
                    if word in ("tuner", "worker") and i + 1 < len(words) and words[i + 1] in subcommands(word):
                        found.append(words[i:])
                        break
    return found


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
            svc for name, svc in services.items()
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


# --- Environment and secrets -----------------------------------------------------------------


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


def test_team_workers_require_TUNER_STORAGE_and_use_it_verbatim():
    with pytest.raises(MissingVariable, match="TUNER_STORAGE"):
        load(WORKERS, {})
    for name, svc in team()["services"].items():
        assert service_env(svc)["TUNER_STORAGE"] == TEAM_URL, name


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
        password_files = [v for k, v in env.items()
                          if k in (ENV_PASSWORD_FILE, "POSTGRES_PASSWORD_FILE", "PGBOUNCER_PASSWORD_FILE")]
        assert password_files, f"{name} has no way to get the password"
        for path in password_files:
            assert path[len(SECRET_DIR):] in svc["secrets"], f"{name}: {path} is not a mounted secret"


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


# --- The secret recipe ------------------------------------------------------------------------
#
# Compose mounts a secret file as it is on the host, so the recipe's modes are what protects the
# password. Each document's copy of the recipe is run as written, on a fresh checkout and on one
# where an older recipe left `secrets/` and the file open to everyone.

RECIPE_DOCS = {
    "README.md": ROOT / "README.md", "docs/deployment.md": DOCS, ".env.example": ENV_EXAMPLE,
    "docker-compose.yml": MAIN, "docker-compose.workers.yml": WORKERS,
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
    subprocess.run(["bash", "-euc", script], cwd=where, check=True, capture_output=True, timeout=60,
                   env={**os.environ, "HOME": str(where)})


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


# --- Commands against the real CLIs ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("load_file", [coordinator, team], ids=["coordinator", "team"])
def test_compose_commands_use_only_real_flags_and_cover_required_options(load_file):
    compose = load_file()
    commands = compose_commands(compose)
    assert commands
    for name, words in commands.items():
        path, rest = split_cli(words)
        assert len(path) > 1, f"{name}: {words[:2]} is not a subcommand"
        unknown = used_flags(rest) - options(*path)
        assert not unknown, f"{name}: {' '.join(path)} has no {sorted(unknown)}"
        env = service_env(compose["services"][name])
        help_ = help_text(*path)
        # Required options must be given as a flag or through their environment variable.
        required = r"^\W*\*\s+(--[\w-]+)[^\n]*?\[env var: (\w+)\][^\n]*\[required\]"
        for flag, var in re.findall(required, help_, flags=re.M):
            assert flag in rest or var in env, f"{name}: required {flag} missing"


@pytest.mark.parametrize("load_file", [coordinator, team], ids=["coordinator", "team"])
def test_every_TUNER_variable_set_is_one_the_CLIs_read(load_file):
    """Catches a misspelt variable, which the CLI would silently ignore."""
    compose = load_file()
    read = {ENV_PASSWORD_FILE}
    for words in compose_commands(compose).values():
        read |= set(re.findall(r"env var: (TUNER_\w+)", help_text(*split_cli(words)[0])))
    if "--wait-for-db" not in options("worker", "run"):
        # `worker run --wait-for-db` (env TUNER_WAIT_FOR_DB) is being added; until then the
        # variable is harmless, and once it lands this exception no longer applies.
        read.add("TUNER_WAIT_FOR_DB")
    for name, svc in compose["services"].items():
        for key in service_env(svc):
            if key.startswith("TUNER_"):
                assert key in read, f"{name}: no CLI reads {key}"


def test_artifact_dir_is_shared_between_coordinator_workers_and_dashboard():
    main = coordinator()
    dash = main["services"]["dashboard"]
    for svc in (dash, *workers(main).values()):
        assert service_env(svc)["TUNER_ARTIFACT_DIR"] == "/artifacts"
        assert "artifacts:/artifacts" in svc["volumes"]
    assert "artifacts" in main["volumes"]
    for cmd in (("worker", "run"), ("tuner", "dashboard"), ("tuner", "export")):
        assert "env var: TUNER_ARTIFACT_DIR" in help_text(*cmd), cmd


@pytest.mark.slow
def test_docs_commands_use_only_real_flags():
    commands = docs_commands()
    seen = {" ".join(split_cli(words)[0]) for words in commands}
    assert {"tuner export", "tuner status", "tuner db check"} <= seen, seen
    for words in commands:
        path, rest = split_cli(words)
        unknown = used_flags(rest) - options(*path)
        assert not unknown, f"docs: {' '.join(words)}: unknown {sorted(unknown)}"


def test_docs_name_only_real_compose_services_and_profiles():
    main, other = coordinator(), team()
    services = set(main["services"]) | set(other["services"])
    profiles = {p for c in (main, other) for s in c["services"].values() for p in s.get("profiles", [])}
    text = "\n".join(doc.read_text() for doc in DOC_FILES).replace("\\\n", " ")  # join continued lines
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line.split(" #", 1)[0])
            if words[:2] != ["docker", "compose"]:
                continue
            for i, word in enumerate(words):
                if word == "--profile":
                    assert words[i + 1] in profiles | {"*"}, line  # '*': every profile
                if word in ("up", "logs", "exec", "run", "cp") and i > 1:
                    targets = [w.split(":")[0] for w in words[i + 1:] if not w.startswith("-") and "=" not in w]
                    if word in ("up", "logs"):
                        assert set(targets) <= services, line
                    elif targets:
                        assert targets[0] in services, line
                    break


# --- Dockerfile and build context ------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, out = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        if joined.strip():
            op, _, args = joined.strip().partition(" ")
            out.append((op.upper(), args.strip()))
        joined = ""
    return out


def test_dockerfile_base_image_matches_the_pinned_tensorflow():
    instructions = dockerfile()
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    (base,) = [a for op, a in instructions if op == "FROM"]
    assert base == "${BASE_IMAGE}"
    image, tag = args["BASE_IMAGE"].split(":")
    assert image == "tensorflow/tensorflow" and tag.endswith("-gpu")
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (tf_pin,) = [p for p in pins if re.match(r"tensorflow\b(?!-)", p)]
    low, high = re.fullmatch(r"tensorflow>=([\d.]+),<([\d.]+)", tf_pin.replace(" ", "")).groups()
    version = tuple(int(x) for x in tag.split("-")[0].split("."))
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= version < as_tuple(high), f"{tag} outside {tf_pin}"
    # Compose passes the same default, so `docker compose build` builds the GPU image.
    for load_file in (coordinator, team):
        for build in builders(load_file()).values():
            assert build["args"]["BASE_IMAGE"] == args["BASE_IMAGE"]


def test_dockerfile_keeps_the_base_tensorflow_and_installs_the_project():
    instructions = dockerfile()
    runs = [a for op, a in instructions if op == "RUN"]
    freeze = next(r for r in runs if "pip freeze" in r)
    constraints = re.search(r">\s*(\S+)", freeze)[1]
    installs = [r for r in runs if "pip install" in r]
    assert installs
    for install in installs:
        assert f"-c {constraints}" in install, "pip install must be constrained to the base image's TensorFlow"
    assert "tensorflow" in freeze.lower()
    # The dependencies come from pyproject.toml, then the whole copied context is installed.
    (dest,) = [a.split()[-1] for op, a in instructions if op == "COPY" and a.split()[0] == "."]
    installed = rf"pip install [^&]*{re.escape(dest)}(\s|$)"
    assert any(re.search(installed, r) for r in installs), "the project must be installed"
    assert any("pyproject.toml" in r and "dependencies" in r for r in runs)


def test_dockerfile_copies_every_package_and_runs_unprivileged():
    instructions = dockerfile()
    copied = {src.rstrip("/") for op, a in instructions if op == "COPY" for src in a.split()[:-1]}
    # The whole context, so a new package needs no Dockerfile change; .dockerignore must keep
    # every package (pyproject.toml's list is the one truth) and what `pip install` reads.
    assert "." in copied
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    needed |= {"pyproject.toml", project["project"]["readme"]}
    lines = DOCKERIGNORE.read_text().splitlines()
    ignored = [p.strip().rstrip("/") for p in lines if p.strip() and not p.startswith("#")]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not any(fnmatch.fnmatch(path, pat) for pat in ignored), f".dockerignore drops {path}"
    users = [a for op, a in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "containers must not run as root"
    envs = " ".join(a for op, a in instructions if op == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", envs)
    for op, a in instructions:
        if op in ("ARG", "ENV"):
            assert not re.search(r"(?i)PASSWORD|SECRET|TOKEN", a), f"{op} {a}"
    last_user = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    assert not any(op == "RUN" for op, _ in instructions[last_user:]), "RUN after USER would need root"


def test_dockerignore_keeps_private_files_out_but_not_the_sources():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for private in (".env", "secrets", "data", ".venv", ".git", "*.npz"):
        assert private in patterns, private
    copied = {src.rstrip("/") for op, a in dockerfile() if op == "COPY" for src in a.split()[:-1]}
    for path in copied - {"."}:
        assert path not in patterns, f".dockerignore drops {path}, which the Dockerfile copies"
    for private in ("tests", "deploy", ".ci"):
        assert private in patterns, f"{private} would be copied into the image"
    # SEARCH_SPACE's default is a file the Dockerfile puts into the image.
    default_space = variables(MAIN)["SEARCH_SPACE"]
    assert any(default_space in a for op, a in dockerfile() if op == "RUN")


# --- Optional: Compose itself ----------------------------------------------------------------


@pytest.mark.skipif(not compose_available(), reason="docker compose plugin not installed")
@pytest.mark.parametrize("path", [MAIN, WORKERS], ids=lambda p: p.name)
def test_docker_compose_config_accepts_the_files(path, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x")
    env = {**os.environ, "TUNER_STORAGE": TEAM_URL, "POSTGRES_PASSWORD_FILE_HOST": str(secret)}
    result = subprocess.run(
        ["docker", "compose", "-f", str(path), "--profile", "gpus8", "--profile", "cpu", "--profile", "pgbouncer",
         "config", "-q"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- The defects of issue 12 -----------------------------------------------------------------


def test_dockerfile_needs_no_frontend_image_from_docker_hub():
    syntax_line = re.search(r"(?im)^#\s*syntax\s*=", DOCKERFILE.read_text())
    assert not syntax_line, "`# syntax=` makes BuildKit pull from Docker Hub"


def test_the_image_is_built_once_and_every_other_service_reuses_its_tag():
    main = coordinator()
    assert set(builders(main)) == {"roles"}, "one builder: the service every other tuner service waits for"
    image = main["services"]["roles"]["image"]
    for name, svc in tuner_services(main).items():
        assert svc["image"] == image, name
    for profiles, named in (({"gpus4"}, set()), ({"cpu"}, set()), (set(), {"postgres", "dashboard", "worker-cpu"})):
        assert "roles" in active(main, profiles, named), (profiles, named)
    other = team()
    for profiles, named in (({"gpus1"}, set()), ({"gpus8"}, set()), (set(), {"worker-cpu"})):
        started = active(other, profiles, named)
        assert len(set(builders(other)) & started) == 1, f"{profiles or named}: the image must be built exactly once"
        assert {other["services"][s]["image"] for s in started} == {image}


def test_pip_index_and_ca_reach_the_build_only_as_build_secrets():
    for compose in (coordinator(), team()):
        for build in builders(compose).values():
            assert set(build["secrets"]) == {"pip_conf", "pip_ca"} and "args" in build
            assert set(build["args"]) == {"BASE_IMAGE"}
            for name in build["secrets"]:
                assert compose["secrets"][name] == {"file": "/dev/null"}, "no extra index or CA unless .env names one"
    mounts = " ".join(a for op, a in dockerfile() if op == "RUN" and "pip install" in a)
    assert "--mount=type=secret,id=pip_conf" in mounts and "--mount=type=secret,id=pip_ca" in mounts
    assert coordinator({"PIP_CA_FILE_HOST": "/etc/ssl/ca.pem"})["secrets"]["pip_ca"] == {"file": "/etc/ssl/ca.pem"}


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


def test_docs_tear_down_profile_workers_and_show_the_exited_init():
    text = "\n".join(doc.read_text() for doc in DOC_FILES)
    assert "docker compose --profile '*' down" in text
    assert "docker compose -f docker-compose.workers.yml --profile '*' down" in text
    plain_down = re.search(r"^docker compose (down|stop)\b", text, flags=re.M)
    assert not plain_down, "down without profiles leaves workers running"
    assert "docker compose ps -a" in text and not re.search(r"^docker compose ps(\s|$)(?!-a)", text, flags=re.M)
    assert "DOCKER-USER" in text, "published ports bypass INPUT rules; the docs must say where to filter"
    readme = (ROOT / "README.md").read_text()
    docker_section = readme.split("## Deploying with Docker Compose", 1)[1].split("\n## ", 1)[0]
    assert "worker-cpu" in docker_section, "the README quick start needs the form for machines without a GPU"
    assert "TUNER_STUDY" in docker_section, "team machines must be told the study name"


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
        subprocess.run([str(BIN / "worker"), "synth-data", str(coord.root / "data" / "synthetic.npz"),
                        "--n", "48", "--seed", "3"], check=True, capture_output=True, timeout=300)
        (coord.root / "data" / "space.yaml").write_text(yaml.safe_dump(E2E_SPACE))
        coord.env(
            COMPOSE_PROJECT_NAME=tag, BASE_IMAGE=CI_BASE_IMAGE, POSTGRES_IMAGE=CI_POSTGRES_IMAGE,
            TUNER_IMAGE=CI_TUNER_IMAGE, POSTGRES_PORT=pg_port, DASHBOARD_PORT=dash_port,
            TUNER_STUDY=E2E_STUDY, TUNER_TRIALS=E2E_TRIALS, TUNER_PRUNER="none", SEARCH_SPACE="/data/space.yaml",
            DATA_FILE="synthetic.npz", TUNER_HEARTBEAT_INTERVAL=2, TUNER_GRACE_PERIOD=10,
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
            users = set(conn.execute(sqlalchemy.text(
                "SELECT DISTINCT usename FROM pg_stat_activity "
                "WHERE application_name LIKE 'mars-tuner-worker@%'")).scalars())
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
            COMPOSE_PROJECT_NAME=f"{tag}-team", BASE_IMAGE=CI_BASE_IMAGE, TUNER_IMAGE=CI_TUNER_IMAGE,
            TUNER_STORAGE=f"postgresql://tuner_worker@127.0.0.1:{pg_port}/optuna", TUNER_STUDY=E2E_STUDY,
            DATA_FILE="synthetic.npz", **pip_build_secrets(tmp_path),
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
            users = dict(conn.execute(sqlalchemy.text(
                "SELECT split_part(application_name, '@', 1), string_agg(DISTINCT usename, ',') "
                "FROM pg_stat_activity WHERE application_name LIKE 'mars-tuner-%' GROUP BY 1")).all())
        assert users.get("mars-tuner-dashboard") == "tuner_viewer", users
        refused = urllib.request.Request(f"http://127.0.0.1:{dash_port}/api/studies/1", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(refused, timeout=30)
        assert denied.value.code == 403 and b"read-only" in denied.value.read()
        with rdb.engine.connect() as conn:
            owners = set(conn.execute(sqlalchemy.text(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")).scalars())
        assert owners == {"tuner_owner"}, owners
        names = [s.get("study_name") for s in studies.get("study_summaries", studies.get("studies", []))]
        assert E2E_STUDY in names, studies
        rdb.engine.dispose()
    finally:
        # --- tear down whatever happened, and check nothing of ours is left ------------------
        for project, line in ((team_, E2E_TEARDOWN[1]), (coord, E2E_TEARDOWN[0])):
            if (project.root / ".env").exists():
                project.sh(line + " --timeout 20", timeout=300, check=False)
        timings["total"] = time.monotonic() - started
        print(f"\ntimings (s): {json.dumps({k: round(v) for k, v in timings.items()})}")
        print("\n".join(log[-30:]))
    for name in (tag, f"{tag}-team"):
        left = leftovers(name)
        assert left == [[], [], []], f"{name} left containers/volumes/networks behind: {left}"
