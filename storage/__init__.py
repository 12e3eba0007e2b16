"""Everything about the database behind the Optuna study.

One place turns what a user gives (``--storage URL``, ``TUNER_STORAGE`` or nothing) into an
Optuna storage with engine settings fit for many worker processes, creates the schema once, and
reports health with passwords masked.
"""

from storage.errors import StorageError
from storage.factory import open_storage
from storage.health import Health, check
from storage.heartbeat import (
    Heartbeat,
    adopt_orphans,
    fail_stale_trials,
    first_heartbeat,
)
from storage.schema import current_revision, init_schema
from storage.url import default_sqlite_url, mask_url, resolve_url

__all__ = [
    "Health",
    "Heartbeat",
    "StorageError",
    "adopt_orphans",
    "check",
    "current_revision",
    "default_sqlite_url",
    "fail_stale_trials",
    "first_heartbeat",
    "init_schema",
    "mask_url",
    "open_storage",
    "resolve_url",
]
