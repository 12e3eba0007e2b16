"""The one base of every error a user is meant to read.

Each layer raises its own subclass (``StorageError``, ``DataError``, ``ConfigError`` ...) with a
one-line, secret-free message; each CLI catches ``TunerError`` once, prints ``error: <message>``
and exits 1, so a new error type needs no new ``except`` anywhere.
"""

from __future__ import annotations


class TunerError(Exception):
    """A problem explained in one line for the person at the terminal; never holds a secret."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type's name.

    For messages that wrap a library's error: its first line is enough, and the rest (a dump,
    a traceback-like tail) would break the one-line contract.
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None or not text else line[:limit]
