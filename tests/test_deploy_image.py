"""The tuner image: the Dockerfile, its build context and how Compose builds it; no Docker needed.

The Dockerfile is read instruction by instruction: the pinned TensorFlow's base image, the
project installed against it, every package copied, an unprivileged user, no frontend image from
Docker Hub; .dockerignore keeps private files out; one service builds the image, with pip's
index and CA only as build secrets. tests/test_deploy_e2e.py builds it for real.
"""

from __future__ import annotations

import fnmatch
import re

from deployment import (
    DOCKERFILE,
    MAIN,
    ROOT,
    active,
    builders,
    coordinator,
    team,
    tuner_services,
    variables,
)
import tomllib

DOCKERIGNORE = ROOT / ".dockerignore"


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


# --- How Compose builds it (the defects of issue 12) ----------------------------------------


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
