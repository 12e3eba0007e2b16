"""``load_trials``: a study's chosen trials as :class:`FrozenTrial` objects, one query per table.

Optuna's ``get_trials`` loads every trial with all its rows through the study's trial cache, even
when filtered by state. Here the trials are chosen in SQL (states, ids), each of Optuna's trial
tables is read with one query for all of them (not one per trial), and the per-epoch values or
user attributes only when wanted; the rows become ordinary :class:`FrozenTrial` objects, so
callers (and ``optuna.visualization``) use them as if Optuna had loaded them. The engine is
:func:`storage.summaries.open_reader`'s; the schema read is Optuna 5's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
import dataclasses
import json
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy

from storage.columns import as_datetime, as_float, as_state


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
        trials.append(
            FrozenTrial(
                number=number,
                state=as_state(state),
                value=None,
                values=[objective_values[k] for k in sorted(objective_values)] if objective_values else None,
                datetime_start=as_datetime(start),
                datetime_complete=as_datetime(complete),
                params=params_of[tid],
                distributions=dists_of[tid],
                user_attrs=tables.attrs[tid],
                system_attrs={},
                intermediate_values=tables.steps[tid],
                trial_id=tid,
            )
        )
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
            heads = rows(
                conn,
                "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                "WHERE trial_id IN ({chosen})",
            )
            if not heads:
                return None
            values: dict[int, dict[int, float]] = defaultdict(dict)
            for tid, objective, value, kind in rows(
                conn, "SELECT trial_id, objective, value, value_type FROM trial_values WHERE trial_id IN ({chosen})"
            ):
                values[tid][objective] = value if kind == "FINITE" else as_float(value, kind)
            param_rows = rows(
                conn,
                "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                "WHERE trial_id IN ({chosen}) ORDER BY param_id",
            )
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
            conn,
            "SELECT trial_id, array_agg(step), "
            "array_agg(CASE WHEN intermediate_value_type = 'FINITE' THEN intermediate_value END) "
            f"{table} GROUP BY trial_id",
        ):
            steps[tid] = dict(zip(numbers, values, strict=False))
        for tid, step, kind in rows(
            conn, f"SELECT trial_id, step, intermediate_value_type {table} AND intermediate_value_type <> 'FINITE'"
        ):
            steps[tid][step] = as_float(None, kind)
        return
    for tid, step, value, kind in rows(
        conn, f"SELECT trial_id, step, intermediate_value, intermediate_value_type {table}"
    ):
        steps[tid][step] = value if kind == "FINITE" else as_float(value, kind)
