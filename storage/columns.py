"""Column values of Optuna's tables as Python values, for the plain-SQL readers.

A raw query hands back what the driver gives: enum columns as their name (or SQLAlchemy's enum
member, ``TrialState.COMPLETE``), timestamps as ISO text on SQLite, and a non-finite float as a
kind column beside a NULL value (Optuna 5's ``*_value_type``).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import TrialState

_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


def as_datetime(value: Any) -> datetime.datetime | None:
    """A timestamp column as a naive datetime: SQLite hands raw queries its ISO text."""
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    return value


def as_float(value: float | None, kind: Any) -> float:
    """A value column with its ``value_type``: the value when FINITE, else inf, -inf or NaN."""
    name = getattr(kind, "name", str(kind)).split(".")[-1]
    return float(value) if name == "FINITE" else _INF[name]  # type: ignore[arg-type]  # FINITE rows have a value


def as_state(value: Any) -> TrialState:
    return TrialState[getattr(value, "name", str(value)).split(".")[-1]]


def as_direction(value: Any) -> StudyDirection:
    return StudyDirection[getattr(value, "name", str(value)).split(".")[-1]]
