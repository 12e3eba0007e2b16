"""The report's parallelism view: how many trials ran at once, and how many suggestions repeated.

A team adds workers to finish sooner; this view shows whether they did. The number of trials
in flight over time comes from each trial's start and complete timestamps (a trial still running
counts until the report's "now"); a suggestion that repeats an earlier one, nearly or exactly,
is a trial that could teach the sampler little (:mod:`contract.parallelism` defines it, for this
view and for ``bench/parallel_search.py`` alike). Many near-duplicates *while the twin still ran*
mean workers asked at the same time and got the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime

import numpy as np
from optuna.trial import FrozenTrial

from contract.parallelism import NEAR_FRACTION, Duplicates, Suggestion, in_flight, mean_in_flight, near_duplicates
from tuner.report_plotly import Figure, marker_size, new_figure, numbers

DEFINITION = (
    f"same categorical choices and every number within {NEAR_FRACTION:.0%} of its range "
    "(log scale for a log parameter) of an earlier trial's"
)


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """The started trials' overlap in time and their repeated suggestions."""

    origin: datetime.datetime  # the first start; times below are seconds after it
    times: np.ndarray
    counts: np.ndarray  # trials in flight from times[i] to times[i + 1]
    numbers: list[int]  # the started trials with parameters, by number
    starts: np.ndarray  # their start, seconds after origin
    duplicates: Duplicates  # per trial in ``numbers``

    @property
    def peak(self) -> int:
        return int(self.counts.max()) if len(self.counts) else 0

    @property
    def mean(self) -> float:
        return mean_in_flight(self.times, self.counts)

    def at(self, seconds: np.ndarray) -> np.ndarray:
        """Trials in flight at each of ``seconds`` (the step function's value there)."""
        index = np.searchsorted(self.times, seconds, side="right") - 1
        return np.where(index >= 0, self.counts[np.clip(index, 0, None)], 0)


def summarize(trials: Sequence[FrozenTrial], now: datetime.datetime) -> Parallelism | None:
    """The view of ``trials`` (naive UTC timestamps, as Optuna 5 stores them); ``None`` if none started."""
    started = sorted((t for t in trials if t.datetime_start is not None), key=lambda t: t.number)
    if not started:
        return None
    origin = min(t.datetime_start for t in started)  # type: ignore[type-var]

    def seconds(when: datetime.datetime | None) -> float | None:
        return None if when is None else (when - origin).total_seconds()

    intervals = [(seconds(t.datetime_start), seconds(t.datetime_complete)) for t in started]
    last = max(x for pair in intervals for x in pair if x is not None)
    times, counts = in_flight(intervals, now=max(seconds(now), last))  # type: ignore[arg-type, type-var]
    sampled = [t for t in started if t.params]
    duplicates = near_duplicates(
        [
            Suggestion(t.params, t.distributions, seconds(t.datetime_start), seconds(t.datetime_complete))
            for t in sampled
        ]
    )
    return Parallelism(
        origin=origin,
        times=times,
        counts=counts,
        numbers=[t.number for t in sampled],
        starts=np.array([seconds(t.datetime_start) for t in sampled], dtype=float),
        duplicates=duplicates,
    )


def rows(view: Parallelism) -> list[tuple[str, str]]:
    """The view's figures as (label, text) rows for the report's table."""
    n = len(view.numbers)
    dup = view.duplicates

    def share(k: int) -> str:
        return f"{k} ({k / n:.0%})" if n else "0"

    return [
        ("trials in flight", f"peak {view.peak}, mean {view.mean:.1f} over the study's span"),
        ("suggestions", f"{n} started trials with parameters"),
        ("near-duplicates", f"{share(dup.n_near)}: {DEFINITION}"),
        ("of which exact", share(dup.n_exact)),
        (
            "while the twin ran",
            f"{share(dup.n_concurrent)}: the earlier trial had no result yet "
            "(workers asking at once got the same suggestion)",
        ),
    ]


def figure(view: Parallelism) -> Figure:
    """Trials in flight over wall-clock time (a step line), near-duplicate suggestions marked where they started."""

    def when(seconds: np.ndarray) -> list[datetime.datetime]:
        return [view.origin + datetime.timedelta(seconds=float(s)) for s in seconds]

    dup = view.duplicates
    traces = [
        {
            "type": "scatter",
            "x": when(view.times),
            "y": numbers(view.counts),
            "mode": "lines",
            "name": "trials in flight",
            "line": {"shape": "hv", "color": "#1f77b4"},
        }
    ]
    for mask, name, colour in (
        (dup.near & ~dup.concurrent, "near-duplicate", "#ff7f0e"),
        (dup.concurrent, "near-duplicate while its twin ran", "#d62728"),
    ):
        if mask.any():
            starts = view.starts[mask]
            traces.append(
                {
                    "type": "scatter",
                    "x": when(starts),
                    "y": numbers(view.at(starts)),
                    "mode": "markers",
                    "name": name,
                    "text": [f"trial {view.numbers[i]}" for i in np.nonzero(mask)[0]],
                    "hovertemplate": "%{text}<extra></extra>",
                    "marker": {"size": marker_size(int(mask.sum())), "color": colour, "symbol": "x"},
                }
            )
    fig = new_figure(traces, "trials in flight over wall-clock time", "UTC", "trials running")
    fig["layout"]["xaxis"]["type"] = "date"
    fig["layout"]["yaxis"]["rangemode"] = "tozero"
    if view.peak <= 12:
        fig["layout"]["yaxis"]["dtick"] = 1  # whole trials
    return fig
