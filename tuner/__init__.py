"""Coordinator: create studies from a search-space file, watch them, export the winner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mars-tuner")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
