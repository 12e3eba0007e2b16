"""Coordinator: create studies from a search-space file, watch them, export the winner."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Looked up on use: reading the installed metadata costs every command ~40 ms at start-up.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mars-tuner")
        except PackageNotFoundError:  # running from a source tree without installing
            return "0.0.0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
