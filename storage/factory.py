"""Open the Optuna storage every command and worker uses.

Heartbeats are configured here (Optuna only sends them inside ``Study.optimize``; our ask/tell
workers send them with :mod:`storage.heartbeat`). A trial whose worker stops beating for the grace
period is failed by the next worker that asks, and :class:`RetryHeartbeatStaleTrialCallback`
queues a copy of it, a limited number of times.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback  # noqa: F401 - the type returned
import sqlalchemy

from storage.engine import engine_kwargs
from storage.errors import StorageError
from storage.health import head_revision
from storage.roundtrips import LeanRDBStorage, ping_when_idle
from storage.schema import connection_error, current_revision
from storage.url import mask_url


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    role: str = "worker",
) -> RDBStorage:
    """Return an ``RDBStorage`` with our engine and heartbeat settings.

    Without ``heartbeat_interval`` the storage sends no heartbeats (readers, the coordinator);
    workers pass their study's values, whose defaults live in ``contract.study_spec.StudySpec``.

    Args:
        url: a resolved URL (see :func:`storage.url.resolve_url`).
        heartbeat_interval: seconds between heartbeats; ``None`` disables heartbeats.
        grace_period: seconds without a heartbeat after which a RUNNING trial is stale.
        max_retry: how many times a stale trial is re-queued; ``None`` means never.

    Raises:
        StorageError: unreachable database, missing schema, incompatible schema.
    """
    _check_schema(url)
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna; we depend on them knowingly.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _lean_storage(url, heartbeat_interval, grace_period, max_retry, role)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise connection_error(exc, url) from None
    except RuntimeError as exc:  # Optuna's schema-compatibility error
        raise StorageError(f"{mask_url(url)}: {str(exc).splitlines()[0]}") from None


def _check_schema(url: str) -> None:
    """Refuse a database without Optuna's tables, or with another Optuna's schema revision.

    Optuna's own check keeps a transaction open while it opens a second connection: behind a
    pooler in transaction mode, as many workers starting at once as the pool has server
    connections then wait for each other until the pooler gives up (query_wait_timeout).
    The revision read here is compared with Optuna's head instead, on no connection at all.
    """
    revision = current_revision(url)
    if revision is None:
        raise StorageError(
            f"no Optuna schema in {mask_url(url)}: create it first with "
            "`tuner db init` or `tuner create` (workers never create tables)"
        )
    head = head_revision()
    if revision != head:
        raise StorageError(
            f"{mask_url(url)}: schema revision {revision} is not this Optuna's {head}: "
            "run `optuna storage upgrade --storage URL` (do not mix Optuna 4 and 5 workers)"
        )


def _lean_storage(
    url: str, heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None, role: str
) -> RDBStorage:
    """The storage itself: our engine settings, heartbeats and the stale-trial retry callback."""
    callback = None
    if heartbeat_interval is not None and max_retry is not None:
        callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    kwargs = engine_kwargs(url, role=role)
    postgres = sqlalchemy.engine.make_url(url).get_backend_name() == "postgresql"
    if postgres:  # pinged only after idling, not at every checkout (storage.roundtrips)
        kwargs["pool_pre_ping"] = False
    rdb = LeanRDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period if heartbeat_interval is not None else None,
        heartbeat_stale_trial_callback=callback,
        skip_table_creation=True,
        skip_compatibility_check=True,
    )
    if postgres:
        ping_when_idle(rdb.engine)
    return rdb
