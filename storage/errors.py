"""The one error type the storage layer raises to its callers."""

from __future__ import annotations

from contract.errors import TunerError


class StorageError(TunerError, RuntimeError):
    """A database problem explained in one line, with any password already masked.

    The CLI prints ``str(error)`` as is and exits non-zero, so messages must never contain a
    secret and must say what to do.
    """


class SettingError(StorageError):
    """A setting is wrong (an environment variable, the password file): waiting cannot fix it.

    Separate from unreachable-database errors so that a worker told to wait for the database
    (``--wait-for-db``) stops at once on a typo instead of retrying it for ten minutes.
    """
