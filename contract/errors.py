"""The one base of every error a user is meant to read.

Each layer raises its own subclass (``StorageError``, ``DataError``, ``ConfigError`` ...) with a
one-line, secret-free message; each CLI catches ``TunerError`` once, prints ``error: <message>``
and exits 1, so a new error type needs no new ``except`` anywhere.
"""

from __future__ import annotations


class TunerError(Exception):
    """A problem explained in one line for the person at the terminal; never holds a secret."""
