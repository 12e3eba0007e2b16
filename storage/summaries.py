"""Read what ``tuner list``, ``status`` and ``report`` show with a few bulk queries.

Optuna's own readers load every trial with all its rows (``get_all_study_summaries``, and a
study's first ``get_trials`` through its trial cache, even when filtered by state): about 10 s at
5,000 trials with 30 epoch values each on PostgreSQL. These helpers read Optuna's tables directly
and only what is asked for: studies, counts and best values per study with ``GROUP BY``, the best
trial's id; the trials themselves are read by :func:`storage.trial_reader.load_trials`.

Readers open a plain SQLAlchemy engine (:func:`open_reader`), not an ``RDBStorage``: building
one imports alembic and reads its migration scripts to check the schema version, about a second
that every ``tuner status`` would pay. The schema read here is Optuna 5's
(``storages/_rdb/models.py``); :func:`open_reader` refuses a database without it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
import dataclasses
import datetime
import json
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import TrialState
import sqlalchemy

from storage.columns import as_datetime, as_direction, as_state
from storage.engine import engine_kwargs
from storage.errors import StorageError
from storage.schema import connection_error, current_revision
from storage.url import mask_url


def open_reader(url: str, *, role: str = "reader") -> sqlalchemy.Engine:
    """An engine for the readers below (the caller disposes of it).

    Raises:
        StorageError: unreachable database, or no Optuna schema in it.
    """
    if current_revision(url) is None:
        raise StorageError(
            f"no Optuna schema in {mask_url(url)}: create it first with `tuner db init` or `tuner create`"
        )
    try:
        return sqlalchemy.create_engine(url, **engine_kwargs(url, role=role))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise connection_error(exc, url) from None


@dataclasses.dataclass(frozen=True)
class StudyHead:
    """A study's identity and settings, without its trials."""

    study_id: int
    study_name: str
    directions: tuple[StudyDirection, ...]
    user_attrs: dict[str, Any]


def study_names(engine: sqlalchemy.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(sqlalchemy.text("SELECT study_name FROM studies")))


def find_study(engine: sqlalchemy.Engine, name: str) -> StudyHead | None:
    """The study called ``name``, or ``None`` (2 queries)."""
    with engine.connect() as conn:
        row = conn.execute(
            sqlalchemy.text("SELECT study_id FROM studies WHERE study_name = :name"), {"name": name}
        ).first()
        if row is None:
            return None
        sid = int(row[0])
        attrs = {
            key: json.loads(value)
            for key, value in conn.execute(
                sqlalchemy.text("SELECT key, value_json FROM study_user_attributes WHERE study_id = :sid"), {"sid": sid}
            )
        }
    return StudyHead(study_id=sid, study_name=name, directions=study_directions(engine, sid), user_attrs=attrs)


@dataclasses.dataclass(frozen=True)
class StudyOverview:
    """One study in a few numbers: what ``tuner list`` shows."""

    study_id: int
    name: str
    directions: tuple[StudyDirection, ...]
    counts: dict[TrialState, int]  # every TrialState, absent ones 0
    best_value: float | None  # best finite objective-0 value of COMPLETE trials, in its direction
    user_attrs: dict[str, Any]  # only the keys asked for
    first_start: datetime.datetime | None  # naive UTC
    #: of ``counts``, the trials carrying the user attribute ``apart_key`` per state (every state)
    apart: dict[TrialState, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(TrialState, 0))


def study_overviews(
    engine: sqlalchemy.Engine, user_attr_keys: Collection[str] = (), apart_key: str | None = None
) -> list[StudyOverview]:
    """Every study in the database, with its counts per state and best finite value (5 queries).

    ``apart_key``: also count, per state, the trials carrying that user attribute (one more query).
    """
    with engine.connect() as conn:
        names = conn.execute(sqlalchemy.text("SELECT study_id, study_name FROM studies")).all()
        directions: dict[int, list[tuple[int, StudyDirection]]] = defaultdict(list)
        for sid, objective, direction in conn.execute(
            sqlalchemy.text("SELECT study_id, objective, direction FROM study_directions")
        ):
            directions[sid].append((objective, as_direction(direction)))
        counts, first = _counts_and_first_start(conn)
        extremes = {
            sid: (hi, lo)
            for sid, hi, lo in conn.execute(
                sqlalchemy.text(
                    "SELECT t.study_id, max(v.value), min(v.value) FROM trials t "
                    "JOIN trial_values v ON v.trial_id = t.trial_id "
                    "WHERE t.state = 'COMPLETE' AND v.objective = 0 AND v.value_type = 'FINITE' "
                    "GROUP BY t.study_id"
                )
            )
        }
        apart = _counts_apart(conn, apart_key)
        attrs = _study_attrs(conn, user_attr_keys)
    overviews = []
    for sid, name in names:
        dirs = tuple(d for _, d in sorted(directions[sid]))
        best = None
        if dirs and sid in extremes:  # the first objective, whether or not others follow
            hi, lo = extremes[sid]
            best = hi if dirs[0] == StudyDirection.MAXIMIZE else lo
        overviews.append(
            StudyOverview(
                study_id=sid,
                name=name,
                directions=dirs,
                counts=dict(counts[sid]),
                best_value=None if best is None else float(best),
                user_attrs=dict(attrs[sid]),
                first_start=first.get(sid),
                apart=dict(apart[sid]),
            )
        )
    return overviews


def _counts_and_first_start(
    conn: sqlalchemy.Connection,
) -> tuple[dict[int, dict[TrialState, int]], dict[int, datetime.datetime | None]]:
    """Per study: trials per state (every state), and the earliest start of any trial (one query)."""
    counts: dict[int, dict[TrialState, int]] = defaultdict(lambda: dict.fromkeys(TrialState, 0))
    first: dict[int, datetime.datetime | None] = {}
    for sid, state, n, started in conn.execute(
        sqlalchemy.text("SELECT study_id, state, count(*), min(datetime_start) FROM trials GROUP BY study_id, state")
    ):
        counts[sid][as_state(state)] = int(n)
        started = as_datetime(started)
        earliest = first.get(sid)
        if started is not None and (earliest is None or started < earliest):
            first[sid] = started
    return counts, first


def _counts_apart(conn: sqlalchemy.Connection, key: str | None) -> dict[int, dict[TrialState, int]]:
    """Per study and state, the trials carrying user attribute ``key`` (none without a key)."""
    apart: dict[int, dict[TrialState, int]] = defaultdict(lambda: dict.fromkeys(TrialState, 0))
    if key is not None:
        for sid, state, n in conn.execute(
            sqlalchemy.text(
                "SELECT t.study_id, t.state, count(*) FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id AND a.key = :key GROUP BY t.study_id, t.state"
            ),
            {"key": key},
        ):
            apart[sid][as_state(state)] = int(n)
    return apart


def _study_attrs(conn: sqlalchemy.Connection, keys: Collection[str]) -> dict[int, dict[str, Any]]:
    """Per study, its user attributes named in ``keys`` (none read when empty)."""
    attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    if keys:
        query = sqlalchemy.text(
            "SELECT study_id, key, value_json FROM study_user_attributes WHERE key IN :keys"
        ).bindparams(sqlalchemy.bindparam("keys", expanding=True))
        for sid, key, value in conn.execute(query, {"keys": list(keys)}):
            attrs[sid][key] = json.loads(value)
    return attrs


def count_states(engine: sqlalchemy.Engine, study_id: int) -> dict[TrialState, int]:
    """Trials per state (every state present, absent ones 0): one GROUP BY."""
    counts = dict.fromkeys(TrialState, 0)
    with engine.connect() as conn:
        for state, n in conn.execute(
            sqlalchemy.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state"),
            {"sid": study_id},
        ):
            counts[as_state(state)] = int(n)
    return counts


def study_directions(engine: sqlalchemy.Engine, study_id: int) -> tuple[StudyDirection, ...]:
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT objective, direction FROM study_directions WHERE study_id = :sid ORDER BY objective"
            ),
            {"sid": study_id},
        ).all()
    return tuple(as_direction(d) for _, d in rows)


def best_trial_id(engine: sqlalchemy.Engine, study_id: int, direction: StudyDirection) -> int | None:
    """The COMPLETE trial with the best finite objective-0 value (the lowest number on ties)."""
    order = "DESC" if direction == StudyDirection.MAXIMIZE else "ASC"
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
        "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = 0 "
        f"AND v.value_type = 'FINITE' ORDER BY v.value {order}, t.number ASC LIMIT 1"
    )
    with engine.connect() as conn:
        row = conn.execute(query, {"sid": study_id}).first()
    return None if row is None else int(row[0])


def marked_trial_ids(engine: sqlalchemy.Engine, study_id: int, key: str) -> list[int]:
    """Ids of the trials carrying user attribute ``key``, whose value is another trial's number,
    and of the trials so named (``tuner confirm``'s runs and the trials they confirm): 2 queries."""
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT t.trial_id, a.value_json FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id AND a.key = :key WHERE t.study_id = :sid"
            ),
            {"sid": study_id, "key": key},
        ).all()
        numbers = sorted({n for _, value in rows if isinstance(n := json.loads(value), int)})
        named = []
        if numbers:
            query = sqlalchemy.text("SELECT trial_id FROM trials WHERE study_id = :sid AND number IN :numbers")
            named = [
                r[0]
                for r in conn.execute(
                    query.bindparams(sqlalchemy.bindparam("numbers", expanding=True)),
                    {"sid": study_id, "numbers": numbers},
                )
            ]
    return sorted({int(r[0]) for r in rows} | {int(i) for i in named})
