"""Turn what the user gives into a storage URL, and make URLs safe to print.

Precedence: an explicit ``--storage`` URL, then the ``TUNER_STORAGE`` environment variable, then
the embedded default (a SQLite file under ``TUNER_HOME`` or ``./.tuner``) so one machine works
without a database server. A password may also come from the file named by
``TUNER_DB_PASSWORD_FILE`` (Docker secrets), so it never has to sit in an environment variable
or a compose file.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import stat

from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError

from storage.engine import pool_settings
from storage.errors import SettingError, StorageError

ENV_STORAGE = "TUNER_STORAGE"
ENV_HOME = "TUNER_HOME"
ENV_PASSWORD_FILE = "TUNER_DB_PASSWORD_FILE"
DEFAULT_DB_NAME = "tuner.db"
MASK = "***"

# USER:PASSWORD@ up to the LAST "@" of the line: an unencoded "@" or space in a password must not
# leave its tail visible. Over-masking an error message is harmless; under-masking is not.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>.*)(?P<at>@)")
# postgresql:// is psycopg 3 in SQLAlchemy 2.1, and so in optuna-dashboard, the optuna CLI and
# optuna.load_study: we ship that driver so the URL a user types works in every tool, unchanged.
# postgresql+psycopg2:// keeps working (psycopg2-binary is installed too).
_DRIVERS = {
    "postgresql": ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"),
    "sqlite": ("sqlite", "sqlite+pysqlite"),
}
# libpq also takes secrets in the query string (?password=..., ?sslpassword=...) and in
# key=value DSNs that drivers echo in errors: mask both.
_QUERY_SECRET = re.compile(r"(?i)\b((?:ssl)?password=)([^&\s#]*)")
#: Bytes read from TUNER_DB_PASSWORD_FILE at most: a password file, not a data file.
MAX_PASSWORD_FILE_BYTES = 4096


def default_home() -> Path:
    """The project-local directory that holds the embedded SQLite database."""
    return Path(os.environ.get(ENV_HOME) or ".tuner").resolve()


def default_sqlite_url() -> str:
    """The embedded default: a SQLite file, created on first use, no server needed."""
    return f"sqlite:///{default_home() / DEFAULT_DB_NAME}"


def resolve_url(explicit: str | None = None) -> str:
    """Return the storage URL to use, validated and normalised.

    Raises:
        StorageError: the URL cannot be parsed or names a backend we do not support.
    """
    raw = explicit or os.environ.get(ENV_STORAGE) or default_sqlite_url()
    raw = raw.strip()
    if raw.startswith("postgres://"):
        # Many hosting providers hand out this spelling; SQLAlchemy 2 only accepts postgresql://.
        raw = "postgresql://" + raw[len("postgres://") :]
    if _authority(raw).count("@") > 1:
        raise StorageError(
            f"storage URL {mask_url(raw)!r} has more than one '@': percent-encode an '@' in the user or password as %40"
        )
    url = parse_url(raw)
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        raise StorageError(
            f"unsupported storage backend {backend!r} in {mask_url(raw)}: "
            "use postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or sqlite:///PATH"
        )
    if url.drivername not in _DRIVERS[backend]:
        raise StorageError(
            f"driver {url.drivername!r} in {mask_url(raw)} is not installed with the tuner: "
            + (
                "use postgresql:// (psycopg 3) or postgresql+psycopg2://"
                if backend == "postgresql"
                else "use sqlite:// (the built-in sqlite3)"
            )
        )
    if backend == "sqlite":
        _check_sqlite(url)
    else:
        pool_settings()  # a typo in TUNER_POOL_SIZE is one line now, not a retried "outage" later
    url = _with_password_file(url)
    return url.render_as_string(hide_password=False)


def without_file_password(url: str) -> str:
    """``url`` minus its password when that password is what ``TUNER_DB_PASSWORD_FILE`` holds.

    For handing a resolved URL to child processes: they inherit the variable and read the file
    themselves, so the secret never sits in their environment (``/proc/PID/environ``).
    """
    parsed = make_url(url)
    if parsed.password is None or not os.environ.get(ENV_PASSWORD_FILE):
        return url
    bare = parsed._replace(password=None)  # URL.set ignores None
    if _with_password_file(bare).password != parsed.password:
        return url  # typed by the user, not from the file
    return bare.render_as_string(hide_password=False)


def parse_url(raw: str) -> URL:
    """Parse with SQLAlchemy, turning its error into a masked one-line ``StorageError``."""
    try:
        return make_url(raw)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"cannot parse storage URL {mask_url(raw)!r}: expected "
            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or sqlite:///PATH"
        ) from None


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***``; safe to print and log.

    Works on strings SQLAlchemy cannot parse too, so error messages about bad URLs stay safe.
    """
    if isinstance(url, URL):
        return _mask_query(url.render_as_string(hide_password=True))
    if _authority(url).count("@") <= 1:
        try:
            return _mask_query(make_url(url).render_as_string(hide_password=True))
        except (ArgumentError, ValueError):
            pass
    return _mask_query(_USERINFO.sub(lambda m: m["head"] + MASK + m["at"], url))


def scrub(message: str, url: str | URL) -> str:
    """Remove the URL's password from an arbitrary message (driver errors may echo a DSN)."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        secrets = [parsed.password, *_query_secrets(parsed)]
    except (ArgumentError, ValueError):
        secrets = []
    for secret in secrets:
        if secret:
            message = message.replace(str(secret), MASK)
    return _mask_query(_USERINFO.sub(lambda m: m["head"] + MASK + m["at"], message))


def _mask_query(text: str) -> str:
    """``password=VALUE`` (query string or libpq key=value DSN) -> ``password=***``."""
    return _QUERY_SECRET.sub(lambda m: m[1] + MASK, text)


def _query_secrets(url: URL) -> list[str]:
    """The values of secret query parameters (``?password=``), however often they are given."""
    out: list[str] = []
    for key, value in url.query.items():
        if key.lower() in ("password", "sslpassword"):
            out.extend([value] if isinstance(value, str) else list(value))
    return out


def missing_sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL if it does not exist yet, else ``None``.

    Read-only commands stop there: connecting would create an empty file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)  # relative paths are relative to the working directory
    return None if path.exists() else path


def _authority(raw: str) -> str:
    """What precedes the query string: where USER:PASSWORD@HOST lives."""
    return raw.partition("?")[0]


def _check_sqlite(url: URL) -> None:
    """A SQLite URL must name a file: workers are separate processes that share it."""
    if url.username or url.password or url.host:
        raise StorageError(
            f"a SQLite URL has no user, password or host: use sqlite:///RELATIVE/PATH or "
            f"sqlite:////ABSOLUTE/PATH, not {mask_url(url)}"
        )
    if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
        raise StorageError(
            "in-memory SQLite is not supported (every worker process would see its own empty "
            "database): use sqlite:///PATH"
        )


def _with_password_file(url: URL) -> URL:
    path = os.environ.get(ENV_PASSWORD_FILE)
    if not path or url.password or _query_secrets(url) or url.get_backend_name() == "sqlite":
        return url
    return url.set(password=read_password_file(path, ENV_PASSWORD_FILE))


def read_password_file(path: str | os.PathLike[str], name: str) -> str:
    """The password in ``path``, the file a setting called ``name`` names (for messages).

    The one reader of password files. Refused, each in one line and at once: anything but a
    regular file (a FIFO would block every command, a directory or device is a wrong path), a
    file other users may read or write (the secret recipe keeps them to the owner and the
    containers' group), more than :data:`MAX_PASSWORD_FILE_BYTES`, not UTF-8, or empty.

    Raises:
        SettingError: any of the above, or the file cannot be opened.
    """
    where = f"{name}={path}"
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SettingError(f"cannot read {where}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o007:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SettingError(f"{where} is not a regular file: name the password file itself")
        raise SettingError(
            f"{where} is readable or writable by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"`chmod o-rwx {path}` (docs/deployment.md, the secrets recipe)"
        )
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_PASSWORD_FILE_BYTES + 1)
    if len(raw) > MAX_PASSWORD_FILE_BYTES:
        raise SettingError(f"{where} is larger than {MAX_PASSWORD_FILE_BYTES} bytes: not a password file")
    try:
        password = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SettingError(f"{where} is not UTF-8 text") from None
    if not password:
        raise SettingError(f"{where} is empty: write the password into it")
    return password
