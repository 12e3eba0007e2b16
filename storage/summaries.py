"""Read what ``tuner list``, ``status`` and ``report`` show with a few bulk queries.

Optuna's own readers load every trial with all its rows (``get_all_study_summaries``, and a
study's first ``get_trials`` through its trial cache, even when filtered by state): about 10 s at
5,000 trials with 30 epoch values each on PostgreSQL. These helpers read Optuna's tables directly
and only what is asked for: counts and best values per study with ``GROUP BY``, trials of chosen
states or ids, and intermediate values or user attributes only when wanted. Each table is read
with one query (not one per trial), and the rows become ordinary :class:`FrozenTrial` objects, so
callers (and ``optuna.visualization``) use them as if Optuna had loaded them.

Readers open a plain SQLAlchemy engine (:func:`open_reader`), not an ``RDBStorage``: building
one imports alembic and reads its migration scripts to check the schema version, about a second
that every ``tuner status`` would pay. The schema read here is Optuna 5's
(``storages/_rdb/models.py``); :func:`open_reader` refuses a database without it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
import dataclasses
import datetime
import json
import math
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy

from storage.engine import engine_kwargs
from storage.errors import StorageError
from storage.schema import connection_error, current_revision
from storage.url import mask_url

_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


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
        row = conn.execute(sqlalchemy.text("SELECT study_id FROM studies WHERE study_name = :name"),
                           {"name": name}).first()
        if row is None:
            return None
        sid = int(row[0])
        attrs = {key: json.loads(value) for key, value in conn.execute(sqlalchemy.text(
            "SELECT key, value_json FROM study_user_attributes WHERE study_id = :sid"), {"sid": sid})}
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


def study_overviews(engine: sqlalchemy.Engine, user_attr_keys: Collection[str] = (),
                    apart_key: str | None = None) -> list[StudyOverview]:
    """Every study in the database, with its counts per state and best finite value (5 queries).

    ``apart_key``: also count, per state, the trials carrying that user attribute (one more query).
    """
    with engine.connect() as conn:
        names = conn.execute(sqlalchemy.text("SELECT study_id, study_name FROM studies")).all()
        directions: dict[int, list[tuple[int, StudyDirection]]] = defaultdict(list)
        for sid, objective, direction in conn.execute(sqlalchemy.text(
                "SELECT study_id, objective, direction FROM study_directions")):
            directions[sid].append((objective, _direction(direction)))
        counts: dict[int, dict[TrialState, int]] = defaultdict(lambda: dict.fromkeys(TrialState, 0))
        first: dict[int, datetime.datetime | None] = {}
        for sid, state, n, started in conn.execute(sqlalchemy.text(
                "SELECT study_id, state, count(*), min(datetime_start) FROM trials GROUP BY study_id, state")):
            counts[sid][_state(state)] = int(n)
            started = _when(started)
            earliest = first.get(sid)
            if started is not None and (earliest is None or started < earliest):
                first[sid] = started
        extremes = {sid: (hi, lo) for sid, hi, lo in conn.execute(sqlalchemy.text(
            "SELECT t.study_id, max(v.value), min(v.value) FROM trials t "
            "JOIN trial_values v ON v.trial_id = t.trial_id "
            "WHERE t.state = 'COMPLETE' AND v.objective = 0 AND v.value_type = 'FINITE' "
            "GROUP BY t.study_id"))}
        apart: dict[int, dict[TrialState, int]] = defaultdict(lambda: dict.fromkeys(TrialState, 0))
        if apart_key is not None:
            for sid, state, n in conn.execute(sqlalchemy.text(
                    "SELECT t.study_id, t.state, count(*) FROM trials t JOIN trial_user_attributes a "
                    "ON a.trial_id = t.trial_id AND a.key = :key GROUP BY t.study_id, t.state"), {"key": apart_key}):
                apart[sid][_state(state)] = int(n)
        attrs: dict[int, dict[str, Any]] = defaultdict(dict)
        if user_attr_keys:
            query = sqlalchemy.text(
                "SELECT study_id, key, value_json FROM study_user_attributes WHERE key IN :keys"
            ).bindparams(sqlalchemy.bindparam("keys", expanding=True))
            for sid, key, value in conn.execute(query, {"keys": list(user_attr_keys)}):
                attrs[sid][key] = json.loads(value)
    overviews = []
    for sid, name in names:
        dirs = tuple(d for _, d in sorted(directions[sid]))
        best = None
        if dirs and sid in extremes:  # the first objective, whether or not others follow
            hi, lo = extremes[sid]
            best = hi if dirs[0] == StudyDirection.MAXIMIZE else lo
        overviews.append(StudyOverview(
            study_id=sid, name=name, directions=dirs, counts=dict(counts[sid]),
            best_value=None if best is None else float(best), user_attrs=dict(attrs[sid]),
            first_start=first.get(sid), apart=dict(apart[sid]),
        ))
    return overviews


def count_states(engine: sqlalchemy.Engine, study_id: int) -> dict[TrialState, int]:
    """Trials per state (every state present, absent ones 0): one GROUP BY."""
    counts = dict.fromkeys(TrialState, 0)
    with engine.connect() as conn:
        for state, n in conn.execute(sqlalchemy.text(
                "SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state"), {"sid": study_id}):
            counts[_state(state)] = int(n)
    return counts


def study_directions(engine: sqlalchemy.Engine, study_id: int) -> tuple[StudyDirection, ...]:
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT objective, direction FROM study_directions WHERE study_id = :sid ORDER BY objective"
        ), {"sid": study_id}).all()
    return tuple(_direction(d) for _, d in rows)


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
        rows = conn.execute(sqlalchemy.text(
            "SELECT t.trial_id, a.value_json FROM trials t JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key = :key WHERE t.study_id = :sid"), {"sid": study_id, "key": key}).all()
        numbers = sorted({n for _, value in rows if isinstance(n := json.loads(value), int)})
        named = []
        if numbers:
            query = sqlalchemy.text("SELECT trial_id FROM trials WHERE study_id = :sid AND number IN :numbers")
            named = [r[0] for r in conn.execute(query.bindparams(sqlalchemy.bindparam("numbers", expanding=True)),
                                                {"sid": study_id, "numbers": numbers})]
    return sorted({int(r[0]) for r in rows} | {int(i) for i in named})


def load_trials(
    engine: sqlalchemy.Engine,
    study_id: int,
    *,
    states: Collection[TrialState] | None = None,
    trial_ids: Collection[int] | None = None,
    user_attr_keys: Collection[str] | None = None,
    intermediate: bool = True,
) -> list[FrozenTrial]:
    """The study's trials (optionally only some states or ids), ordered by number.

    Args:
        user_attr_keys: read only these user attributes; ``None`` reads all of them.
        intermediate: read the per-epoch values (the largest table: skip it when not shown).

    System attributes are not read (no reader here shows them): they come back empty.
    """
    chosen = _Chosen.of(study_id, states, trial_ids)
    if chosen is None:
        return []
    tables = _read_tables(engine, chosen, user_attr_keys, intermediate)
    if tables is None:
        return []
    params_of, dists_of = _params(tables.param_rows)
    trials = []
    for tid, number, state, start, complete in tables.heads:
        objective_values = tables.values.get(tid)
        trials.append(FrozenTrial(
            number=number, state=_state(state), value=None,
            values=[objective_values[k] for k in sorted(objective_values)] if objective_values else None,
            datetime_start=_when(start), datetime_complete=_when(complete),
            params=params_of[tid], distributions=dists_of[tid], user_attrs=tables.attrs[tid], system_attrs={},
            intermediate_values=tables.steps[tid], trial_id=tid,
        ))
    return sorted(trials, key=lambda t: t.number)


@dataclasses.dataclass
class _Chosen:
    """The trials one :func:`load_trials` call reads, as SQL: ``{chosen}`` in a query is replaced
    by the sub-select of their ids."""

    sql: str
    binds: list[sqlalchemy.BindParameter[Any]]
    params: dict[str, Any]

    @classmethod
    def of(
        cls, study_id: int, states: Collection[TrialState] | None, trial_ids: Collection[int] | None
    ) -> _Chosen | None:
        """The study's trials in ``states`` with ``trial_ids`` (each ``None``: any); ``None``
        when an empty collection leaves no trial to read."""
        where = ["study_id = :sid"]
        binds: list[sqlalchemy.BindParameter[Any]] = []
        params: dict[str, Any] = {"sid": study_id}
        if states is not None:
            where.append("state IN :states")
            binds.append(sqlalchemy.bindparam("states", expanding=True))
            params["states"] = [s.name for s in states]
        if trial_ids is not None:
            where.append("trial_id IN :ids")
            binds.append(sqlalchemy.bindparam("ids", expanding=True))
            params["ids"] = list(trial_ids)
        if (states is not None and not params["states"]) or (trial_ids is not None and not params["ids"]):
            return None
        return cls("SELECT trial_id FROM trials WHERE " + " AND ".join(where), binds, params)

    def rows(self, conn: sqlalchemy.Connection, sql: str, extra: dict[str, list[Any]] | None = None) -> Sequence[Any]:
        """``sql`` with ``{chosen}`` replaced; ``extra`` binds more lists (``IN :name``)."""
        more: list[Any] = [sqlalchemy.bindparam(name, expanding=True) for name in extra or {}]
        query = sqlalchemy.text(sql.replace("{chosen}", self.sql)).bindparams(*self.binds, *more)
        return conn.execute(query, {**self.params, **(extra or {})}).all()


@dataclasses.dataclass
class _Tables:
    """The chosen trials' rows of each of Optuna's trial tables, by trial id."""

    heads: Sequence[Any]  # (trial_id, number, state, datetime_start, datetime_complete)
    values: dict[int, dict[int, float]]  # objective -> value
    param_rows: Sequence[Any]  # (trial_id, param_name, param_value, distribution_json)
    attrs: dict[int, dict[str, Any]]
    steps: dict[int, dict[int, float]]


def _read_tables(
    engine: sqlalchemy.Engine, chosen: _Chosen, user_attr_keys: Collection[str] | None, intermediate: bool
) -> _Tables | None:
    """One query per table; ``None`` when no trial is chosen."""
    rows = chosen.rows
    attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    steps: dict[int, dict[int, float]] = defaultdict(dict)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # On PostgreSQL the per-epoch values (the largest table) are read on a second connection
        # meanwhile: the server aggregates them while this thread parses the other tables.
        apart = intermediate and engine.dialect.name == "postgresql"
        read_apart = pool.submit(_read_steps_apart, engine, rows) if apart else None
        with engine.connect() as conn:
            heads = rows(conn, "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                               "WHERE trial_id IN ({chosen})")
            if not heads:
                return None
            values: dict[int, dict[int, float]] = defaultdict(dict)
            for tid, objective, value, kind in rows(
                    conn, "SELECT trial_id, objective, value, value_type FROM trial_values "
                          "WHERE trial_id IN ({chosen})"):
                values[tid][objective] = value if kind == "FINITE" else _float(value, kind)
            param_rows = rows(conn, "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                                    "WHERE trial_id IN ({chosen}) ORDER BY param_id")
            _read_user_attrs(conn, rows, user_attr_keys, attrs)
            if intermediate and not apart:
                _read_steps(conn, rows, steps)
        if read_apart is not None:
            steps.update(read_apart.result())
    return _Tables(heads, values, param_rows, attrs, steps)


def _read_user_attrs(
    conn: sqlalchemy.Connection, rows: Any, keys: Collection[str] | None, attrs: dict[int, dict[str, Any]]
) -> None:
    """Fill ``attrs[trial_id][key] = value``: every key, only ``keys``, or none (``keys`` empty)."""
    if keys is not None and not keys:
        return
    sql = "SELECT trial_id, key, value_json FROM trial_user_attributes WHERE trial_id IN ({chosen})"
    extra = None
    if keys is not None:
        sql += " AND key IN :keys"
        extra = {"keys": list(keys)}
    for tid, key, value in rows(conn, sql, extra):
        attrs[tid][key] = json.loads(value)


def _params(
    param_rows: Sequence[Any],
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, BaseDistribution]]]:
    """Each trial's parameters (external values) and distributions, from its ``trial_params`` rows."""
    dists: dict[str, BaseDistribution] = {}  # the same few JSON texts repeat on every trial
    params_of: dict[int, dict[str, Any]] = defaultdict(dict)
    dists_of: dict[int, dict[str, BaseDistribution]] = defaultdict(dict)
    for tid, name, internal, dist_json in param_rows:
        dist = dists.get(dist_json)
        if dist is None:
            dist = dists[dist_json] = json_to_distribution(dist_json)
        params_of[tid][name] = dist.to_external_repr(internal)
        dists_of[tid][name] = dist
    return params_of, dists_of


def _read_steps_apart(engine: sqlalchemy.Engine, rows: Any) -> dict[int, dict[int, float]]:
    steps: dict[int, dict[int, float]] = defaultdict(dict)
    with engine.connect() as conn:
        _read_steps(conn, rows, steps)
    return steps


def _read_steps(conn: sqlalchemy.Connection, rows: Any, steps: dict[int, dict[int, float]]) -> None:
    """Fill ``steps[trial_id][step] = value``: the largest table (epochs x trials rows).

    On PostgreSQL each trial's values come as two arrays (one row per trial instead of one per
    epoch: 5,000 rows instead of 150,000 at 30 epochs), both in the same (unsorted) order.
    Non-finite values, rare, are read apart.
    """
    table = "FROM trial_intermediate_values WHERE trial_id IN ({chosen})"
    if conn.dialect.name == "postgresql":
        for tid, numbers, values in rows(
                conn, "SELECT trial_id, array_agg(step), "
                      "array_agg(CASE WHEN intermediate_value_type = 'FINITE' THEN intermediate_value END) "
                      f"{table} GROUP BY trial_id"):
            steps[tid] = dict(zip(numbers, values, strict=False))
        for tid, step, kind in rows(
                conn, f"SELECT trial_id, step, intermediate_value_type {table} "
                      "AND intermediate_value_type <> 'FINITE'"):
            steps[tid][step] = _float(None, kind)
        return
    for tid, step, value, kind in rows(
            conn, f"SELECT trial_id, step, intermediate_value, intermediate_value_type {table}"):
        steps[tid][step] = value if kind == "FINITE" else _float(value, kind)


def _when(value: Any) -> datetime.datetime | None:
    """A timestamp column as a naive datetime: SQLite hands raw queries its ISO text."""
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    return value


def _float(value: float | None, kind: Any) -> float:
    name = getattr(kind, "name", str(kind)).split(".")[-1]
    return float(value) if name == "FINITE" else _INF[name]  # type: ignore[arg-type]  # FINITE rows have a value


def _state(value: Any) -> TrialState:
    return TrialState[getattr(value, "name", str(value)).split(".")[-1]]


def _direction(value: Any) -> StudyDirection:
    return StudyDirection[getattr(value, "name", str(value)).split(".")[-1]]
