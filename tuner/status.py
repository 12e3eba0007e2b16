"""``tuner list`` and ``tuner status``: what the study database holds, for a human.

The numbers are computed by pure functions (:func:`list_studies`, :func:`summarize`) that return
dataclasses, and rendered separately with Rich, so tests assert values rather than table layout
and other front ends (a JSON output, a notebook) can reuse them.

Both commands only read: an empty database is reported as "no studies", never initialised,
because creating tables is the coordinator's deliberate act (``tuner db init`` / ``tuner create``).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import datetime
import textwrap
from typing import Any
import unicodedata

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table
from rich.text import Text

from contract import report
from contract.study_spec import SPEC_ATTR, StudySpec
import storage
from storage.counts import count_trials
from tuner.study import open_study

#: The states shown by ``tuner status``, in display order.
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
#: A trial that will not run again and counts against the budget.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Console width from which running trials' parameters fit in their table as a column.
WIDE = 140


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One line of ``tuner list``."""

    name: str
    finished: int
    budget: int | None  # None: the study was not created by `tuner create` (no spec)
    running: int
    failed: int
    best_value: float | None
    created: str | None


@dataclasses.dataclass(frozen=True)
class BestTrial:
    number: int
    value: float
    per_class_iou: dict[str, float | None]
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunningTrial:
    number: int
    host: str | None
    pid: int | None
    gpu: int | None
    age_s: float | None
    last_step: int | None
    last_value: float | None
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StatusSummary:
    """Everything ``tuner status`` shows, as data."""

    name: str
    budget: int | None
    sampler: str | None
    pruner: str | None
    fingerprint: str | None
    counts: dict[str, int]  # state name -> trials, for every state in STATES
    best: BestTrial | None
    running: list[RunningTrial]

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s.name, 0) for s in FINISHED)


# -- data -------------------------------------------------------------------------------------


def utc_now() -> datetime.datetime:
    """Now as naive UTC, the convention of Optuna 5's trial timestamps."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def spec_or_none(study: optuna.Study) -> StudySpec | None:
    """The study's spec, or ``None`` for a study created outside ``tuner`` (still listable)."""
    if SPEC_ATTR not in study.user_attrs:
        return None
    from tuner.study import (
        load_spec,  # raises StudyError for a corrupt spec: worth reporting
    )

    return load_spec(study)


def list_studies(url: str) -> list[StudyRow]:
    """One row per study in the database at the resolved ``url``; ``[]`` if it has no schema."""
    if storage.current_revision(url) is None:
        return []
    rdb = storage.open_storage(url, heartbeat_interval=None, role="coordinator")
    try:
        rows = []
        for summary in optuna.get_all_study_summaries(rdb, include_best_trial=True):
            counts = count_trials(rdb, summary.study_name)
            spec_attr = summary.user_attrs.get(SPEC_ATTR)
            budget = spec_attr.get("n_trials") if isinstance(spec_attr, dict) else None
            created = summary.user_attrs.get("created")
            created_at = created.get("at") if isinstance(created, dict) else None
            if created_at is None and summary.datetime_start is not None:
                created_at = summary.datetime_start.isoformat(timespec="seconds")
            best = summary.best_trial
            rows.append(StudyRow(
                name=summary.study_name,
                finished=sum(counts[s] for s in FINISHED),
                budget=budget,
                running=counts[TrialState.RUNNING],
                failed=counts[TrialState.FAIL],
                best_value=best.value if best is not None else None,
                created=created_at,
            ))
    finally:
        rdb.engine.dispose()
    return sorted(rows, key=lambda r: r.name)


def summarize(
    study: optuna.Study,
    spec: StudySpec | None,
    *,
    counts: Mapping[TrialState, int] | None = None,
    now: datetime.datetime | None = None,
) -> StatusSummary:
    """Compute what ``tuner status`` shows.

    Args:
        counts: trials per state if already known (one GROUP BY, see :mod:`storage.counts`);
            otherwise counted from the study's trials.
        now: naive UTC "now" for the ages of running trials (tests pin it).
    """
    now = now or utc_now()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if counts is None:
        all_states = [t.state for t in study.get_trials(deepcopy=False)]
        counts = {s: all_states.count(s) for s in STATES}
    try:
        best_trial: FrozenTrial | None = study.best_trial
    except ValueError:  # no COMPLETE trial yet (or a multi-objective foreign study)
        best_trial = None
    except RuntimeError:  # multi-objective: best_trial is undefined
        best_trial = None
    best = None
    if best_trial is not None and best_trial.value is not None:
        per_class = best_trial.user_attrs.get(report.PER_CLASS_IOU)
        best = BestTrial(
            number=best_trial.number,
            value=best_trial.value,
            per_class_iou=dict(per_class) if isinstance(per_class, dict) else {},
            params=dict(best_trial.params),
        )
    return StatusSummary(
        name=study.study_name,
        budget=spec.n_trials if spec else None,
        sampler=spec.sampler if spec else None,
        pruner=spec.pruner if spec else None,
        fingerprint=spec.data_fingerprint if spec else None,
        counts={s.name: int(counts.get(s, 0)) for s in STATES},
        best=best,
        running=sorted((_running(t, now) for t in running), key=lambda r: r.number),
    )


def _running(trial: FrozenTrial, now: datetime.datetime) -> RunningTrial:
    who = trial.user_attrs.get(report.WORKER)
    who = who if isinstance(who, dict) else {}
    age = None
    if trial.datetime_start is not None:
        start = trial.datetime_start
        if start.tzinfo is not None:  # defensive: a storage returning aware timestamps
            start = start.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        age = (now - start).total_seconds()
    last_step = max(trial.intermediate_values) if trial.intermediate_values else None
    return RunningTrial(
        number=trial.number,
        host=who.get("host"),
        pid=who.get("pid"),
        gpu=who.get("gpu"),
        age_s=age,
        last_step=last_step,
        last_value=trial.intermediate_values[last_step] if last_step is not None else None,
        params=dict(trial.params),
    )


# -- rendering --------------------------------------------------------------------------------


def print_study_list(storage_url: str | None, console: Console | None = None) -> None:
    """Render ``tuner list``."""
    console = console or Console()
    url = storage.resolve_url(storage_url)
    rows = list_studies(url)
    if not rows:
        console.print(f"no studies in {storage.mask_url(url)}", markup=False, highlight=False)
        return
    table = Table(title=Text(printable(f"studies in {storage.mask_url(url)}")), title_justify="left")
    for column, justify in (("study", "left"), ("finished/budget", "right"), ("running", "right"),
                            ("failed", "right"), ("best", "right"), ("created (UTC)", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            Text(printable(row.name)),
            f"{row.finished}/{row.budget if row.budget is not None else '-'}",
            str(row.running),
            str(row.failed),
            _value(row.best_value),
            _when(row.created),
        )
    console.print(table)


def print_status(name: str, storage_url: str | None, console: Console | None = None) -> None:
    """Render ``tuner status NAME``.

    Raises:
        StudyError: no such study (the message lists the existing ones).
        StorageError: unreachable database or no schema.
    """
    console = console or Console()
    study, url, rdb = open_study(name, storage_url)
    spec = spec_or_none(study)
    try:
        summary = summarize(study, spec, counts=count_trials(rdb, name))
    finally:
        rdb.engine.dispose()
    render_status(summary, storage.mask_url(url), console)


def render_status(summary: StatusSummary, masked_url: str, console: Console) -> None:
    """Print a :class:`StatusSummary`; plain lines plus two tables, fitted to ``console.width``."""

    def line(text: str) -> None:
        # Values are escaped where they are composed; this catches anything else (keeping the
        # line breaks of wrapped text).
        console.print("\n".join(map(printable, text.split("\n"))), markup=False, highlight=False)

    budget = summary.budget if summary.budget is not None else "-"
    line(f"study:    {printable(summary.name)}")
    line(f"storage:  {masked_url}")
    if summary.budget is None:
        line("spec:     none (study not created by `tuner create`)")
    else:
        line(f"budget:   {budget} trials; sampler {summary.sampler}, pruner {summary.pruner}")
        line(f"data:     {(summary.fingerprint or '-')[:12]}")
    line(f"progress: {summary.finished}/{budget} finished (complete + pruned)")

    counts = Table(title="trials", title_justify="left")
    for state in STATES:
        counts.add_column(state.name, justify="right")
    counts.add_row(*(str(summary.counts[s.name]) for s in STATES))
    console.print(counts)

    if summary.best is None:
        line("best:     no completed trial yet")
    else:
        best = summary.best
        per_class = " ".join(
            f"{c}={'n/a' if v is None else _value(v)}" for c, v in sorted(best.per_class_iou.items())
        ) or "-"
        line(f"best:     {_value(best.value)} (trial {best.number}); IoU per class: {per_class}")
        line(_wrap(_params(best.params), console.width, indent=10))

    if not summary.running:
        line("running:  none")
        return
    # Wide terminals get the parameters as a column; narrow ones below the table, so that no
    # cell has to break a "name=value" item in the middle.
    wide = console.width >= WIDE
    table = Table(title="running trials", title_justify="left")
    for column, justify in (("trial", "right"), ("host", "left"), ("pid", "right"), ("gpu", "right"),
                            ("age", "right"), ("epoch", "right"), ("val mIoU", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    if wide:
        table.add_column("params", ratio=1)
    for run in summary.running:
        cells = [
            str(run.number),
            Text(printable(run.host or "-")),
            str(run.pid) if run.pid is not None else "-",
            str(run.gpu) if run.gpu is not None else "-",
            format_age(run.age_s),
            str(run.last_step) if run.last_step is not None else "-",
            _value(run.last_value),
        ]
        table.add_row(*cells, *([Text(_params(run.params))] if wide else []))
    console.print(table)
    if not wide:
        for run in summary.running:
            line(_wrap(f"trial {run.number}: {_params(run.params)}", console.width, indent=2, hang=2))


def printable(text: str) -> str:
    """``text`` with control and format characters (ESC, bidi overrides) shown as escapes.

    Study names, hosts and parameter values come from the database, where anyone with access
    can write anything; raw, an ESC sequence would drive the user's terminal. Rich markup is
    the other half: cells are passed as ``Text`` and lines with ``markup=False``.
    """
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in ("Cc", "Cf")
        else ch
        for ch in text
    )


def format_age(seconds: float | None) -> str:
    """``42s``, ``7m05s``, ``3h12m``, ``2d04h``: short enough for a table cell."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(iso: str | None) -> str:
    """``2026-11-24 11:29`` from an ISO timestamp (UTC as recorded); the raw text if unparsable."""
    if not iso:
        return "-"
    try:
        return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def _wrap(text: str, width: int, indent: int, hang: int = 0) -> str:
    pad = " " * indent
    return textwrap.fill(text, width=max(40, width), initial_indent=pad, subsequent_indent=pad + " " * hang,
                         break_long_words=False, break_on_hyphens=False)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _params(params: Mapping[str, Any]) -> str:
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return printable(", ".join(f"{k}={short(v)}" for k, v in params.items())) or "-"
