"""The report's study header: (label, text) rows about the study, its budget, time and workers.

Also the one line that describes the best trial (:func:`best_values`), which the header and the
best-trial section both show.
"""

from __future__ import annotations

from collections import Counter
import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from contract import trial_attrs as attrs
from contract.study_spec import StudySpec
from tuner.report_data import ReportData
from tuner.report_figures import complete as complete_trials

METRIC_NAME = "validation mIoU"

Rows = list[tuple[str, str]]


def header_rows(data: ReportData) -> Rows:
    """The study header as (label, text) rows."""
    trials = data.trials
    counts = Counter(t.state for t in trials)
    search = Counter(t.state for t in trials if attrs.confirmation_of(t.user_attrs) is None)
    rows = [("study", data.head.study_name), ("storage", data.masked_url)]
    created = data.head.user_attrs.get("created")
    if isinstance(created, dict):
        rows.append(("created", f"{created.get('at', '-')} by {created.get('by', '-')}"))
    rows += _objective_rows(data, counts[TrialState.COMPLETE])
    rows += _spec_rows(data.spec, finished=search[TrialState.COMPLETE] + search[TrialState.PRUNED])
    if data.confirmed:
        n_confirming = len(trials) - sum(search.values())
        rows.append(
            (
                "confirmation",
                f"{n_confirming} trials of `tuner confirm` (outside the budget), {len(data.confirmed)} configurations",
            )
        )
    rows.append(
        ("trials per state", ", ".join(f"{s.name.lower()} {counts[s]}" for s in TrialState if counts[s]) or "none")
    )
    rows += _time_rows(trials, data.now)
    rows += _worker_rows(trials)
    odd = counts[TrialState.COMPLETE] - len(complete_trials(trials))
    if odd:
        rows.append(
            (
                "not drawn",
                f"{_count(odd, 'complete trial')} with a value that is not a finite "
                "number (inf, nan): left out of ranking and figures",
            )
        )
    if data.best is not None:
        rows.append(("best", f"trial {data.best.number}: {best_values(data)}"))
    return rows


def best_values(data: ReportData) -> str:
    """``validation mIoU 0.6123`` and, with two objectives, ``, params 12,345 (pick best-miou)``."""
    from tuner.readers import format_cost

    assert data.best is not None
    text = f"{METRIC_NAME} {data.best.values[0]:.4f}"
    picked = next((c for c in data.confirmed if c.number == data.best.number), None) if data.pick.confirmed else None
    if picked is not None:
        text += (
            f" (search run); confirmed pick: mean {picked.mean:.4f}, sd {picked.sd:.4f}, "
            f"min {picked.minimum:.4f} over {picked.n} seeds"
        )
    if len(data.best.values) == 2:
        text += f", {data.objectives[1]} {format_cost(data.best.values[1])} (pick {data.pick})"
    return text


def _objective_rows(data: ReportData, n_complete: int) -> Rows:
    """The objectives (named when the spec names them) and, for two, the front's size and pick."""
    spec = data.spec
    directions = [d.name.lower() for d in data.head.directions]
    if spec is not None and spec.multi_objective and len(spec.objectives) == len(directions):
        rows = [("objectives", ", ".join(f"{o} ({d})" for o, d in zip(spec.objectives, directions, strict=False)))]
    else:
        rows = [("objectives", ", ".join(directions))]
    if len(directions) == 2:
        rows.append(("Pareto front", f"{len(data.front)} of {n_complete} complete trials; best = pick {data.pick}"))
    return rows


def _spec_rows(spec: StudySpec | None, finished: int) -> Rows:
    """What ``tuner create`` set: the budget (``finished``: search trials it counts), sampler, pruner, data."""
    if spec is None:
        return [("spec", "none (study not created by `tuner create`)"), ("budget", f"{finished} finished")]
    return [
        ("budget", f"{finished}/{spec.n_trials} finished (complete + pruned)"),
        ("sampler", f"{spec.sampler} (seed {spec.seed})"),
        (
            "pruner",
            f"{spec.pruner} (min {_count(spec.min_epochs, 'epoch')})"
            if not spec.multi_objective
            else f"{spec.pruner} (two objectives: nothing prunes them)",
        ),
        ("data fingerprint", spec.data_fingerprint),
    ]


def _time_rows(trials: list[FrozenTrial], now: datetime.datetime) -> Rows:
    """Wall time from the first start to the last end (or now), and the device-hours trials took."""
    rows = []
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete or now for t in trials if t.datetime_start]
    if starts:
        rows.append(
            (
                "wall time",
                f"{_duration((max(ends) - min(starts)).total_seconds())} "
                f"({min(starts):%Y-%m-%d %H:%M} to {max(ends):%Y-%m-%d %H:%M} UTC)",
            )
        )
    seconds = sum(((t.datetime_complete or now) - t.datetime_start).total_seconds() for t in trials if t.datetime_start)
    gpu = any(isinstance(p := t.user_attrs.get(attrs.PROVENANCE), dict) and p.get("device") == "gpu" for t in trials)
    rows.append(
        (
            "GPU-hours" if gpu else "device-hours",
            f"{seconds / 3600:.1f} (sum of trial durations{'' if gpu else '; no trial ran on a GPU'})",
        )
    )
    return rows


def _worker_rows(trials: list[FrozenTrial]) -> Rows:
    """How many worker processes on how many hosts ran the trials, and each host's share."""
    workers: Counter[tuple[Any, Any]] = Counter()
    hosts: Counter[str] = Counter()
    for trial in trials:
        if isinstance(trial.user_attrs.get(attrs.WORKER), dict):
            who = attrs.worker_of(trial)
            workers[(who["host"], who["pid"])] += 1
            hosts[str(who["host"])] += 1
    rows = [("workers", f"{_count(len(workers), 'process', 'processes')} on {_count(len(hosts), 'host')}")]
    if hosts:
        rows.append(("hosts", ", ".join(f"{h} ({n} trials)" for h, n in sorted(hosts.items()))))
    return rows


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


__all__ = ["METRIC_NAME", "best_values", "header_rows"]
