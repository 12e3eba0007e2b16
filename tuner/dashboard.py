"""``tuner dashboard``: optuna-dashboard on the study database, opened at the right study.

optuna-dashboard fails on a database without Optuna's schema, so the schema is created first
(under the same lock as ``tuner db init``). It is given our ``RDBStorage`` (small pool,
``pool_pre_ping``) rather than a bare URL, so it behaves like every other client of the database
and survives a database restart.
"""

from __future__ import annotations

import json
from pathlib import Path
import socket
from typing import Any

import optuna
from sqlalchemy.engine import make_url

from contract.artifacts import open_artifact_store
import storage as storage_lib  # `serve` has a keyword argument named storage
from storage.roles import can_write
from tuner.study import StudyError, unknown_study


class DashboardError(StudyError):
    """The dashboard cannot start (port in use); one line for the user."""


def serve(
    target: str | None,
    *,
    storage: str | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifact_dir: Path | None = None,
) -> None:
    """Run optuna-dashboard until interrupted.

    Args:
        target: ``None`` (the ``storage`` database), a storage URL (contains ``://``; it wins over
            ``storage``), or a study name looked up on ``storage``.
        artifact_dir: the workers' artifact store, so saved models can be downloaded in the UI.

    Raises:
        StudyError: unknown study name.
        DashboardError: the port cannot be bound.
        ArtifactDirError: the artifact directory is unusable.
        StorageError: unreachable database.
    """
    url_given, study_name = _split_target(target, storage)
    url = storage_lib.resolve_url(url_given)
    artifact_store = _artifact_store(artifact_dir)
    if study_name is not None and storage_lib.current_revision(url) is None:
        # No schema, so no study: say so instead of creating tables for a mistyped name.
        raise StudyError(f"no study {study_name!r} in {storage_lib.mask_url(url)} (studies: none)")
    rdb = open_dashboard_storage(url)
    path = "/dashboard/"
    if study_name is not None:
        path = f"/dashboard/studies/{study_id(rdb, study_name, url)}"
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    print(f"optuna-dashboard on {storage_lib.mask_url(url)}", flush=True)
    print(f"open http://{_url_host(shown_host)}:{port}{path}  (Ctrl-C to stop)", flush=True)
    app = dashboard_app(rdb, url, artifact_store)
    try:
        import bottle

        bottle.run(app, host=host, port=port)
    except OSError as exc:
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
    finally:
        rdb.engine.dispose()


def make_app(url: str | None, artifact_dir: Path | None = None) -> Any:
    """The dashboard as a WSGI app, e.g. for gunicorn or tests.

    ``gunicorn 'tuner.dashboard:make_app("postgresql://...")'`` serves it with several workers.
    """
    resolved = storage_lib.resolve_url(url)
    rdb = open_dashboard_storage(resolved)
    return dashboard_app(rdb, resolved, _artifact_store(artifact_dir))


def dashboard_app(rdb: optuna.storages.RDBStorage, url: str, artifact_store: Any) -> Any:
    """optuna-dashboard's WSGI app; read-only (writes refused with a reason) unless the role may write."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(rdb, artifact_store=artifact_store)
    if can_write(url):
        return app
    return ReadOnly(
        app,
        f"this dashboard is read-only: its database role ({make_url(url).username}) may not "
        "write. To change studies from the dashboard, set DASHBOARD_ROLE=worker in .env "
        "(docs/roles.md)",
    )


class ReadOnly:
    """WSGI middleware: anything but GET/HEAD is answered 403 with ``{"reason": ...}``.

    optuna-dashboard shows a failed request's ``reason`` to the user, so a viewer who clicks
    "delete study" reads why instead of a server error (the database role refuses it anyway).
    """

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app: Any, reason: str) -> None:
        self.app, self.reason = app, reason

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD", "GET").upper() in self.SAFE:
            return self.app(environ, start_response)
        body = json.dumps({"reason": self.reason}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def open_dashboard_storage(url: str) -> optuna.storages.RDBStorage:
    """Create the schema if missing (the dashboard fails without it), then open the storage.

    An existing schema is left alone, so a read-only role can open it.
    """
    if storage_lib.current_revision(url) is None:
        storage_lib.init_schema(url)
    return storage_lib.open_storage(url, heartbeat_interval=None, role="dashboard")


def study_id(rdb: optuna.storages.RDBStorage, name: str, url: str) -> int:
    """The database id the dashboard's URLs use; unknown names list the studies that exist."""
    try:
        return rdb.get_study_id_from_name(name)
    except KeyError:
        raise unknown_study(name, rdb, url) from None


def _split_target(target: str | None, storage_url: str | None) -> tuple[str | None, str | None]:
    """(storage URL to resolve, study name or None)."""
    if target is None:
        return storage_url, None
    if "://" in target:
        return target, None
    return storage_url, target


def _artifact_store(artifact_dir: Path | None) -> Any:
    return None if artifact_dir is None else open_artifact_store(artifact_dir, create=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
