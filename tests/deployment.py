"""What the Docker deployment tests share (tests/test_deploy_*.py).

The compose files as Compose sees them, without Docker: parsed with PyYAML and interpolated the
way Compose does (``${VAR:-default}``, ``${VAR:?error}``, ``$$``). And for the tests that run
the deployment for real: the machine check, a user's checkout, the documented setup lines, one
compose project running command lines in it, and the check that nothing of it is left.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os
from pathlib import Path
import re
import subprocess
import sys
import time
from typing import Any

from helpers import tiny_space_dict
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "docker-compose.yml"
WORKERS = ROOT / "docker-compose.workers.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "deployment.md"
DOC_FILES = (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")  # every document whose commands users copy
SECRET_DIR = "/run/secrets/"
TEAM_URL = "postgresql://tuner@coordinator.example.org:5432/optuna"
NOT_TUNER = ("postgres", "pgbouncer")  # the services that do not run the tuner image


# --- Compose interpolation -------------------------------------------------------------------


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is unset, as Compose would refuse to start."""


_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's substitution rules for the forms these files use."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m["bare"]:
            return env.get(m["bare"], "")
        name, op, arg = m["name"], m["op"], m["arg"]
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _VAR.sub(sub, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def load(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it after YAML anchors/merges and interpolation."""
    return resolve(yaml.safe_load(path.read_text()), env or {})


def coordinator(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return load(MAIN, env)


def team(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return load(WORKERS, {"TUNER_STORAGE": TEAM_URL, **(env or {})})


def env_example(commented: bool = True) -> dict[str, str]:
    """Assignments in .env.example; commented-out ones (documented, not set) unless told not to."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(#?)\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m and (commented or not m[1]):
            values[m[2]] = m[3].strip()
    return values


def variables(path: Path) -> dict[str, str | None]:
    """Every ``${VAR...}`` a file references, with its ``:-`` default if it has one."""
    found: dict[str, str | None] = {}
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    for m in _VAR.finditer(text):  # Compose does not interpolate comments (the secret recipe's $f)
        if m["name"]:
            default = m["arg"] if m["op"] in (":-", "-") else None
            found.setdefault(m["name"], default)
    return found


def workers(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("worker")}


def tuner_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the tuner image: all but the database and its pooler."""
    return {name: svc for name, svc in compose["services"].items() if name not in NOT_TUNER}


def builders(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> ``build`` of the services that build the tuner image."""
    return {name: svc["build"] for name, svc in tuner_services(compose).items() if "build" in svc}


def active(compose: Mapping[str, Any], profiles: set[str], named: set[str] = frozenset()) -> set[str]:
    """Services `up` starts with these profiles (and these services named), with dependencies."""
    services = compose["services"]
    chosen = {n for n, s in services.items() if (not s.get("profiles") or set(s["profiles"]) & profiles)}
    if named:
        chosen = set(named)
    todo = list(chosen)
    while todo:
        for dep in services[todo.pop()].get("depends_on", {}):
            if dep not in chosen:
                chosen.add(dep)
                todo.append(dep)
    return chosen


def devices(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def gpu_ids(service: Mapping[str, Any]) -> list[str]:
    """GPUs a service gets: Docker maps ``count: n`` to the first n GPUs (0..n-1)."""
    (device,) = devices(service)
    if "device_ids" in device:
        return [str(d) for d in device["device_ids"]]
    return [str(i) for i in range(int(device["count"]))]


# --- For real: the deployment with Docker ----------------------------------------------------
#
# deploy/ci-images.sh prepares the machine (Docker, the Compose plugin, stand-in base images);
# .ci/run calls it. The tests copy the repository like a user's checkout, write `.env` and the
# secret files, and run the documented commands. deploy/compose.ci.yml and
# deploy/compose.ci-workers.yml are added with -f: builds on the host network, and the "team
# machine" (this same host) reaching the coordinator's published ports.

CI_BASE_IMAGE = os.environ.get("CI_BASE_IMAGE", "mars-tuner-ci/python:3.11-bookworm")
CI_POSTGRES_IMAGE = os.environ.get("CI_POSTGRES_IMAGE", "mars-tuner-ci/postgres:15-bookworm")
CI_DEBIAN_IMAGE = os.environ.get("CI_DEBIAN_IMAGE", "mars-tuner-ci/debian:bookworm")
# Built by tests/test_deploy_e2e.py's `docker compose build`; later tests reuse it (`up` builds it
# only when it is missing).
CI_TUNER_IMAGE = os.environ.get("CI_TUNER_IMAGE", "mars-tuner-ci/tuner:e2e")
E2E_SETUP = (
    "cp .env.example .env",
    "mkdir -p secrets && chmod 700 secrets",
    "for f in postgres owner worker viewer; do [ -s secrets/${f}_password ] "
    "|| openssl rand -hex 24 > secrets/${f}_password; done",
    'chmod 640 secrets/*_password && echo "SECRETS_GID=$(id -g)" >> .env',
)
E2E_TEARDOWN = (
    "docker compose --profile '*' down --volumes",
    "docker compose -f docker-compose.workers.yml --profile '*' down --volumes",
)
E2E_SPACE = tiny_space_dict(epochs=3, early_stopping_patience=50, reduce_lr_patience=50)


def compose_available() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def why_no_docker(*images: str) -> str | None:
    """None when the Docker engine, Compose and these images (the stand-in base images) are there, else why not."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker: {exc}"
    if info.returncode != 0:
        return f"no Docker engine: {info.stderr.strip()[-200:]}"
    if not compose_available():
        return "the docker compose plugin is not installed"
    for image in images or (CI_BASE_IMAGE, CI_POSTGRES_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode:
            return f"base image {image} missing"
    return None


def require_docker(*images: str) -> None:
    """Skip without Docker or these images (each module's ``docker_ready`` fixture); fail under CI=true."""
    why = why_no_docker(*images)
    if why:
        message = f"{why}; run deploy/ci-images.sh (as root) to set up Docker and the base images"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the Docker deployment test: {message}")
        pytest.skip(message)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout(dest: Path) -> Path:
    """A copy of the repository as a user's checkout would have it (no venv, data or secrets)."""
    import shutil

    skip = shutil.ignore_patterns(
        ".git",
        ".venv",
        "__pycache__",
        ".pytest_cache",
        ".tuner",
        "*.egg-info",
        "build",
        "data",
        "secrets",
        ".env",
        "artifacts",
        "bench",
    )
    shutil.copytree(ROOT, dest, ignore=skip)
    return dest


def pip_build_secrets(where: Path) -> dict[str, str]:
    """This host's pip index settings and CA bundle, as the build-secret files .env names."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^[\w:.-]*?\.?(index-url|extra-index-url|trusted-host)='(.*)'$", line.strip())
        if m:
            settings.setdefault(m[1], []).extend(m[2].split())
    pip_settings = (
        ("index-url", "PIP_INDEX_URL"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
        ("trusted-host", "PIP_TRUSTED_HOST"),
    )
    for key, var in pip_settings:
        if os.environ.get(var):
            settings[key] = os.environ[var].split()
    # Local file:// indexes of this host cannot be seen from inside a build.
    reachable = {k: [v for v in vs if not v.startswith("file:")] for k, vs in settings.items()}
    conf = where / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {' '.join(vs)}\n" for k, vs in reachable.items() if vs))
    env = {"PIP_CONF_FILE_HOST": str(conf)}
    for ca in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if ca and Path(ca).is_file():
            env["PIP_CA_FILE_HOST"] = ca
            break
    return env


class Project:
    """One compose project in its own checkout; runs documented command lines there."""

    def __init__(self, root: Path, override: str, log: list[str]):
        self.root, self.override, self.log = root, override, log

    def sh(self, line: str, *, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        team_file = "docker compose -f docker-compose.workers.yml "
        if line.startswith(team_file):  # the CI override right after the documented file
            line = f"{team_file}-f {self.override} {line[len(team_file) :]}"
        elif line.startswith("docker compose "):
            line = f"docker compose -f docker-compose.yml -f {self.override} {line[len('docker compose ') :]}"
        start = time.monotonic()
        result = subprocess.run(["bash", "-c", line], cwd=self.root, capture_output=True, text=True, timeout=timeout)
        self.log.append(
            f"$ {line}  # {time.monotonic() - start:.0f}s rc={result.returncode}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
        if check:
            assert result.returncode == 0, self.log[-1]
        return result

    def env(self, **values: object) -> None:
        with (self.root / ".env").open("a") as env:
            env.write("\n# tests/deployment.py\n" + "".join(f"{k}={v}\n" for k, v in values.items()))


def wait_for(predicate, timeout: float, what: str, log: list[str]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(3)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n" + "\n".join(log[-8:]))


def tear_down(
    coord: Project, team_: Project, tag: str, *, timings: dict[str, float], started: float, log: list[str]
) -> None:
    """The documented teardown of both projects (team first), the run's timings and last log lines."""
    for project, line in ((team_, E2E_TEARDOWN[1]), (coord, E2E_TEARDOWN[0])):
        if (project.root / ".env").exists():
            project.sh(line + " --timeout 20", timeout=300, check=False)
    timings["total"] = time.monotonic() - started
    print(f"\ntimings (s): {json.dumps({k: round(v) for k, v in timings.items()})}")
    print("\n".join(log[-30:]))


def assert_nothing_left(tag: str) -> None:
    """Neither the coordinator's project ``tag`` nor the team's ``tag-team`` left anything behind."""
    for name in (tag, f"{tag}-team"):
        left = leftovers(name)
        assert left == [[], [], []], f"{name} left containers/volumes/networks behind: {left}"


def leftovers(project: str) -> list[list[str]]:
    """Containers, volumes and networks still labelled with this compose project."""
    label = f"label=com.docker.compose.project={project}"
    return [
        subprocess.run(
            ["docker", kind, "ls", "-q", *(["-a"] if kind == "container" else []), "--filter", label],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        for kind in ("container", "volume", "network")
    ]
