"""The package layers hold by structure: the coordinator and the contract never load TensorFlow,
and only ``storage/`` touches Optuna's internals.

Each import check imports modules in a fresh interpreter, so what other tests imported cannot
hide a violation. The internals check reads the source (AST): Optuna's private attributes and
statements that write Optuna's tables belong in ``storage/`` (``storage/optuna_internals.py``),
so that an Optuna upgrade has one adapter to re-check. ``tests/`` is not checked: tests compare
our readers with Optuna's own objects (``FrozenTrial._trial_id``), which is how an upgrade that
changes them is noticed.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
import re
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    base = ROOT / package
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in base.rglob("*.py")
        if path.name != "__main__.py"
    )


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", ["tuner", "contract", "storage"])
def test_package_never_imports_tensorflow_or_keras(package):
    loaded = _loaded_after_import(_modules(package))
    heavy = sorted(m for m in loaded if m.split(".")[0] in {"tensorflow", "keras", "jax"})
    assert not heavy, f"importing {package} loaded {heavy[:5]}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("contract", {"storage", "tuner", "worker"}), ("storage", {"tuner", "worker"}), ("tuner", {"worker"})],
)
def test_package_imports_only_downwards(package, forbidden):
    loaded = _loaded_after_import(_modules(package))
    upward = sorted(m for m in loaded if m.split(".")[0] in forbidden)
    assert not upward, f"importing {package} loaded {upward[:5]}"


#: Optuna's private attributes this project uses; only storage/ may name them.
OPTUNA_PRIVATE = frozenset({"_storage", "_study_id", "_thread_local", "_trial_id", "_get_filepath", "_base_path"})
#: A statement that changes one of Optuna's tables (its schema: studies, trials, trial_*, study_*, ...).
OPTUNA_WRITE = re.compile(
    r"\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+(studies|trials|trial_\w+|study_\w+|version_info|alembic_version)\b",
    flags=re.IGNORECASE,
)


def _private_optuna_module(module: str) -> bool:
    """``optuna.storages._grpc.server`` yes, ``optuna.artifacts`` or ``optuna_dashboard`` no."""
    parts = module.split(".")
    return parts[0] == "optuna" and any(part.startswith("_") for part in parts[1:])


def _internals_used(source: str, *, sql: bool) -> list[str]:
    """Optuna private attributes (and, with ``sql``, writes to Optuna's tables) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and _private_optuna_module(node.module or ""):
            found.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import) and any(_private_optuna_module(a.name) for a in node.names):
            found.append(f"line {node.lineno}: import {', '.join(a.name for a in node.names)}")
        elif sql and isinstance(node, ast.Constant) and isinstance(node.value, str) and OPTUNA_WRITE.search(node.value):
            found.append(f"line {node.lineno}: {OPTUNA_WRITE.search(node.value).group(0)}")
    return found


def test_the_internals_check_sees_what_it_looks_for():
    planted = (
        "n = study._storage.create_new_trial(study._study_id)\n"
        "study._thread_local.cached_all_trials = None\n"
        "ids = {t._trial_id for t in trials}\n"
        "conn.execute(text('UPDATE studies SET study_name = :n'))\n"
        "from optuna.storages._grpc.server import make_server\n"
        "import optuna.study._frozen\n"
    )
    assert len(_internals_used(planted, sql=True)) == 7
    assert len(_internals_used(planted, sql=False)) == 6
    assert (
        _internals_used(
            "study.study_name; storage.open_storage(url); 'SELECT 1 FROM trials'\n"
            "from optuna.artifacts import upload_artifact\nimport optuna_dashboard",
            sql=True,
        )
        == []
    )


# bench/ may write Optuna's tables (bench/status_speed.py bulk-builds a 5,000-trial study), but
# its private attributes go through storage/ like everyone's.
@pytest.mark.parametrize(("package", "sql"), [("contract", True), ("tuner", True), ("worker", True), ("bench", False)])
def test_optuna_internals_only_in_storage(package, sql):
    found = {
        str(path.relative_to(ROOT)): used
        for path in sorted((ROOT / package).rglob("*.py"))
        if (used := _internals_used(path.read_text(), sql=sql))
    }
    assert not found, f"Optuna internals outside storage/ (use storage/optuna_internals.py): {found}"
