"""Where and how every benchmark writes its JSON result."""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import time
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_result(
    result: dict[str, Any], name: str, out: Path | None, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``result`` to ``out`` or ``bench/results/NAME-<timestamp>.json``; print the path."""
    path = out or RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=default) + "\n")
    print(f"\nresults: {path}")
    return path
