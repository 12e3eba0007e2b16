"""The package layers hold by structure: the coordinator and the contract never load TensorFlow.

Each check imports modules in a fresh interpreter, so what other tests imported cannot hide a
violation.
"""

from __future__ import annotations

import json
from pathlib import Path
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
