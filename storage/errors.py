"""The one error type the storage layer raises to its callers."""

from __future__ import annotations

from contract.errors import TunerError


class StorageError(TunerError, RuntimeError):
    """A database problem explained in one line, with any password already masked.

    The CLI prints ``str(error)`` as is and exits non-zero, so messages must never contain a
    secret and must say what to do.
    """
