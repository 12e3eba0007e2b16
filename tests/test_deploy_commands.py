"""Every command the compose files and the docs give exists: checked against the real CLIs.

Each ``tuner``/``worker`` command in the compose files and in the documents users copy from
(docs/*.md, README.md) is checked against the installed CLIs' ``--help`` output: real
subcommands and flags, required options given, every ``TUNER_`` variable read by some CLI; and
their ``docker compose`` lines name real services and profiles and tear everything down.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import os
import re
import shlex
import subprocess
from typing import Any

from deployment import (
    DOC_FILES,
    ROOT,
    coordinator,
    service_env,
    team,
    workers,
)
from helpers import BIN
import pytest

from storage.url import ENV_PASSWORD_FILE

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
    return {
        name: [str(w) for w in svc["command"]]
        for name, svc in compose["services"].items()
        if isinstance(svc.get("command"), list) and svc["command"][0] in ("tuner", "worker")
    }


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
                    targets = [w.split(":")[0] for w in words[i + 1 :] if not w.startswith("-") and "=" not in w]
                    if word in ("up", "logs"):
                        assert set(targets) <= services, line
                    elif targets:
                        assert targets[0] in services, line
                    break


# --- The docs' docker compose lines ------------------------------------------------------------


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
