"""What parallel workers did to a search: trials in flight over time, near-duplicate suggestions.

Workers that ask at the same time get suggestions from the same history; with too little
repulsion between them they train (nearly) the same configuration twice. The definition of
"nearly the same" lives here, once, because two readers must agree on it: ``tuner report``'s
parallelism view (trials read from the database) and ``bench/parallel_search.py`` (a simulated
study on a virtual clock). numpy and Optuna's distributions only: the coordinator imports it.

Definition: trial *b* is a **near-duplicate** if some trial *a* suggested before it (earlier in the
given order) has the same set of parameters, every categorical choice equal, and every numeric
value within :data:`NEAR_FRACTION` of that parameter's range (on the log scale for a log
parameter). It is an **exact duplicate** if all values are equal, and a **concurrent** one if
such an *a* was still running when *b* started (no result yet to learn from: the waste that
parallelism adds, as opposed to a sampler converging on one point).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

#: Numeric values closer than this share of the parameter's range count as the same suggestion.
NEAR_FRACTION = 0.01
#: Where a parameter a trial did not sample sits on the normalised [0, 1] axis: far from all.
_ABSENT = -1.0e6


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One trial's sampled parameters and when it ran (seconds on any one clock).

    ``end`` is ``None`` while the trial is still running.
    """

    params: Mapping[str, Any]
    distributions: Mapping[str, BaseDistribution]
    start: float | None = None
    end: float | None = None


@dataclasses.dataclass(frozen=True)
class Duplicates:
    """Per suggestion (in the given order): whether it near-/exactly duplicates an earlier one."""

    near: np.ndarray
    exact: np.ndarray
    concurrent: np.ndarray

    @property
    def n_near(self) -> int:
        return int(self.near.sum())

    @property
    def n_exact(self) -> int:
        return int(self.exact.sum())

    @property
    def n_concurrent(self) -> int:
        return int(self.concurrent.sum())


def near_duplicates(suggestions: Sequence[Suggestion], fraction: float = NEAR_FRACTION) -> Duplicates:
    """Flag each suggestion that nearly repeats an earlier one (see the module docstring).

    Pass suggestions in the order they were made (trial number). The range and scale of a
    parameter are those of the first trial that sampled it. Cost: the suggestions are sorted by
    categorical choices and then by the first numeric parameter, and compared with their next
    neighbours in that order only as far as the first numeric value is within reach, so a
    5,000-trial study takes milliseconds unless most of its trials crowd into one 1% band.
    """
    n = len(suggestions)
    near = np.zeros(n, dtype=bool)
    exact = np.zeros(n, dtype=bool)
    concurrent = np.zeros(n, dtype=bool)
    if n < 2:
        return Duplicates(near, exact, concurrent)
    numeric, categorical, raw = _encode(suggestions)
    if categorical.shape[1]:
        group = np.unique(categorical, axis=0, return_inverse=True)[1].reshape(-1)
    else:
        group = np.zeros(n, int)
    first = numeric[:, 0] if numeric.shape[1] else np.zeros(n)
    order = np.lexsort((first, group))
    starts = np.array([_num(s.start, math.inf) for s in suggestions])
    ends = np.array([_num(s.end, math.inf) for s in suggestions])
    tolerance = fraction + 1e-12  # the edge itself counts as near
    for offset in range(1, n):
        a, b = order[:-offset], order[offset:]
        reach = (group[a] == group[b]) & (first[b] - first[a] <= tolerance)
        if not reach.any():
            break  # sorted: no pair further apart can be within reach either
        a, b = a[reach], b[reach]
        close = np.all(np.abs(numeric[a] - numeric[b]) <= tolerance, axis=1)
        a, b = a[close], b[close]
        earlier, later = np.minimum(a, b), np.maximum(a, b)
        near[later] = True
        same = np.all(raw[earlier] == raw[later], axis=1)
        exact[later[same]] = True
        concurrent[later[ends[earlier] > starts[later]]] = True
    return Duplicates(near, exact, concurrent)


def in_flight(
    intervals: Sequence[tuple[float, float | None]],
    now: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Trials running over time, as a step function: ``(times, counts)``.

    ``counts[i]`` trials run from ``times[i]`` until ``times[i + 1]``. An interval is (start, end);
    an end of ``None`` (still running) ends at ``now`` (default: the last time seen). A trial that
    ends as another starts at the same instant does not count twice.
    """
    starts = np.array([s for s, _ in intervals], dtype=float)
    if not len(starts):
        return np.zeros(0), np.zeros(0, dtype=int)
    known = [e for _, e in intervals if e is not None]
    last = now if now is not None else max([*known, float(starts.max())])
    ends = np.array([last if e is None else e for _, e in intervals], dtype=float)
    times = np.concatenate([starts, ends])
    steps = np.concatenate([np.ones(len(starts), int), -np.ones(len(ends), int)])
    order = np.lexsort((steps, times))  # at one instant, ends (-1) before starts (+1)
    times, counts = times[order], np.cumsum(steps[order])
    keep = np.append(times[1:] != times[:-1], True)  # one value per instant: the last one
    return times[keep], counts[keep]


def mean_in_flight(times: np.ndarray, counts: np.ndarray) -> float:
    """Time-weighted mean of :func:`in_flight`'s step function over its whole span."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float(counts.max()) if len(counts) else 0.0
    return float(np.sum(counts[:-1] * np.diff(times)) / (times[-1] - times[0]))


def _num(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _encode(suggestions: Sequence[Suggestion]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numeric positions on [0, 1], categorical codes, a code per raw value) per suggestion."""
    numeric_names: dict[str, BaseDistribution] = {}
    categorical_names: list[str] = []
    for s in suggestions:
        for name, dist in s.distributions.items():
            if name in numeric_names or name in categorical_names:
                continue
            if isinstance(dist, CategoricalDistribution):
                categorical_names.append(name)
            else:
                numeric_names[name] = dist
    values: dict[tuple[str, str, Any], int] = {}

    def code(name: str, value: Any) -> int:
        key = (name, type(value).__name__, value)
        return values.setdefault(key, len(values))

    numeric = np.full((len(suggestions), len(numeric_names)), _ABSENT)
    categorical = np.full((len(suggestions), len(categorical_names)), -1, dtype=np.int64)
    raw = np.full((len(suggestions), len(numeric_names) + len(categorical_names)), -1, dtype=np.int64)
    for i, s in enumerate(suggestions):
        for j, (name, dist) in enumerate(numeric_names.items()):
            if name in s.params:
                numeric[i, j] = _position(s.params[name], dist)
                raw[i, j] = code(name, s.params[name])
        for j, name in enumerate(categorical_names):
            if name in s.params:
                categorical[i, j] = raw[i, len(numeric_names) + j] = code(name, s.params[name])
    return numeric, categorical, raw


def _position(value: Any, dist: BaseDistribution) -> float:
    """Where ``value`` sits on ``dist``'s range, 0 at ``low`` and 1 at ``high`` (log scale if log)."""
    low, high = float(dist.low), float(dist.high)  # type: ignore[attr-defined]
    x = float(value)
    if getattr(dist, "log", False) and low > 0 and x > 0:
        low, high, x = math.log(low), math.log(high), math.log(x)
    return 0.0 if high == low else (x - low) / (high - low)
