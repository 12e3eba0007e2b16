"""``tuner list`` and ``tuner status``: what the study database holds, for a human.

The database is read with a few bulk queries (:mod:`storage.summaries`: counts per state, the
best trial, the running trials) instead of Optuna's readers, which load every trial with all its
epoch values (about 10 s at 5,000 trials). The numbers are computed by pure functions
(:func:`summarize`) that return dataclasses, and rendered separately with Rich, so tests assert
values rather than table layout and other front ends (a JSON output, a notebook) can reuse them.

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

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table
from rich.text import Text
import sqlalchemy

from contract import trial_attrs
from contract.confirm import Confirmed, pick_confirmed
from contract.confirm import summarize as summarize_confirmed
from contract.pareto import Pick, front_trials, pick_trial
from contract.study_spec import SPEC_ATTR, StudySpec
import storage
from storage.optuna_internals import trial_id
from storage.summaries import (
    StudyHead,
    best_trial_id,
    count_states,
    load_trials,
    open_reader,
    study_overviews,
)
from tuner.readers import check_pick, find_or_fail, format_cost, objective_names, spec_or_none, utc_now

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
    value: float  # mIoU
    per_class_iou: dict[str, float | None]
    params: dict[str, Any]
    cost: float | None = None  # the second objective of a two-objective study


@dataclasses.dataclass(frozen=True)
class Front:
    """A two-objective study's Pareto front, as ``tuner status`` shows it."""

    objectives: tuple[str, ...]  # names, e.g. ("miou", "params"); directions for a study without spec
    size: int  # trials on the front
    complete: int  # complete trials it was drawn from
    pick: str  # the rule that chose ``best``


@dataclasses.dataclass(frozen=True)
class RunningTrial:
    number: int
    host: str | None
    pid: int | None
    gpu: int | None
    age_s: float | None
    phase: str | None  # what the worker does now: building, compiling, training, evaluating
    epoch: int  # epochs reported so far (the number of intermediate values)
    last_value: float | None  # the latest epoch's validation mIoU
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StatusData:
    """What ``tuner status`` reads from the database, before any computing."""

    name: str
    n_objectives: int
    counts: Mapping[TrialState, int]
    best: FrozenTrial | None  # single objective: the best; two: the picked trial
    running: list[FrozenTrial]
    front: list[FrozenTrial] | None = None  # two objectives: the Pareto front, by cost
    n_complete: int = 0  # two objectives: the complete trials the front was drawn from
    pick: Pick = Pick()
    directions: tuple[Any, ...] = ()  # StudyDirection per objective
    # `tuner confirm`'s trials (every state) and the search trials they confirm (tuner/confirm.py)
    confirmations: list[FrozenTrial] = dataclasses.field(default_factory=list)


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
    front: Front | None = None  # two objectives only
    confirmed: list[Confirmed] = dataclasses.field(default_factory=list)  # per confirmed configuration
    confirming: dict[str, int] = dataclasses.field(default_factory=dict)  # confirmation trials per state
    picked: Confirmed | None = None  # with --pick confirmed: the chosen configuration's summary

    @property
    def finished(self) -> int:
        """Finished search trials: what the budget counts (confirmation trials take no slot)."""
        return sum(self.counts.get(s.name, 0) - self.confirming.get(s.name, 0) for s in FINISHED)


# -- data -------------------------------------------------------------------------------------


def list_studies(url: str) -> list[StudyRow]:
    """One row per study in the database at the resolved ``url``; ``[]`` if it has no schema."""
    if storage.current_revision(url) is None:
        return []
    engine = open_reader(url)
    try:
        overviews = study_overviews(engine, user_attr_keys=(SPEC_ATTR, "created"), apart_key=trial_attrs.CONFIRMS)
    finally:
        engine.dispose()
    rows = []
    for overview in overviews:
        spec_attr = overview.user_attrs.get(SPEC_ATTR)
        created = overview.user_attrs.get("created")
        created_at = created.get("at") if isinstance(created, dict) else None
        created_at = None if created_at is None else str(created_at)  # anything a hand edit wrote
        if created_at is None and overview.first_start is not None:
            created_at = overview.first_start.isoformat(timespec="seconds")
        counts = overview.counts
        rows.append(StudyRow(
            name=overview.name,
            finished=sum(counts[s] - overview.apart[s] for s in FINISHED),  # search trials: the budget's
            budget=_count_or_none(spec_attr.get("n_trials")) if isinstance(spec_attr, dict) else None,
            running=counts[TrialState.RUNNING],
            failed=counts[TrialState.FAIL],
            best_value=overview.best_value,
            created=created_at,
        ))
    return sorted(rows, key=lambda r: r.name)


def read_status(engine: sqlalchemy.Engine, head: StudyHead, pick: Pick = Pick()) -> StatusData:
    """Counts, best trial and running trials of a study: a handful of queries, no epoch values
    except the running trials'.

    With two objectives the best trial is the one ``pick`` chooses from the Pareto front, which
    needs every complete trial's values (read without attributes or epoch values).

    Raises:
        StudyError: a pick other than the default for a study with one objective.
    """
    from tuner.confirm import read_confirmations

    check_pick(pick, len(head.directions), head.study_name)
    best = None
    front = None
    n_complete = 0
    confirmations = read_confirmations(engine, head.study_id)
    if pick.confirmed:
        chosen, _ = pick_confirmed(confirmations, head.study_name)
        best = load_trials(engine, head.study_id, trial_ids=[trial_id(chosen)], intermediate=False)[0]
    if len(head.directions) != 2 and best is None:  # one objective (or more than two: the best mIoU, as `list` shows)
        best_id = best_trial_id(engine, head.study_id, head.directions[0])
        if best_id is not None:
            best = load_trials(engine, head.study_id, trial_ids=[best_id], intermediate=False)[0]
    elif len(head.directions) == 2:
        complete = load_trials(engine, head.study_id, states=(TrialState.COMPLETE,), user_attr_keys=(),
                               intermediate=False)
        n_complete = len(complete)
        front = front_trials(complete, head.directions)
        picked = None if pick.confirmed else pick_trial(complete, head.directions, pick)
        if picked is not None:
            best = load_trials(engine, head.study_id, trial_ids=[trial_id(picked)], intermediate=False)[0]
    running = load_trials(engine, head.study_id, states=(TrialState.RUNNING,),
                          user_attr_keys=(trial_attrs.WORKER, trial_attrs.PHASE))
    return StatusData(name=head.study_name, n_objectives=len(head.directions),
                      counts=count_states(engine, head.study_id), best=best, running=running,
                      front=front, n_complete=n_complete, pick=pick, directions=head.directions,
                      confirmations=confirmations)


def summarize(data: StatusData, spec: StudySpec | None, *, now: datetime.datetime | None = None) -> StatusSummary:
    """Compute what ``tuner status`` shows from what :func:`read_status` read.

    Args:
        now: naive UTC "now" for the ages of running trials (tests pin it).
    """
    now = now or utc_now()
    best_trial = data.best
    best = None
    if best_trial is not None and best_trial.values:
        best = BestTrial(
            number=best_trial.number,
            value=best_trial.values[0],
            per_class_iou=trial_attrs.per_class_iou_of(best_trial),
            params=dict(best_trial.params),
            cost=best_trial.values[1] if len(best_trial.values) > 1 else None,
        )
    front = None
    if data.front is not None:
        front = Front(objectives=objective_names(spec, data.directions), size=len(data.front), complete=data.n_complete,
                      pick=str(data.pick))
    confirmed = summarize_confirmed(data.confirmations)
    confirming = {s.name: 0 for s in STATES}
    for trial in data.confirmations:
        if trial_attrs.confirmation_of(trial.user_attrs) is not None and trial.state.name in confirming:
            confirming[trial.state.name] += 1
    picked = None
    if data.pick.confirmed and best is not None:
        picked = next((c for c in confirmed if c.number == best.number), None)
    return StatusSummary(
        name=data.name,
        budget=spec.n_trials if spec else None,
        sampler=spec.sampler if spec else None,
        pruner=spec.pruner if spec else None,
        fingerprint=spec.data_fingerprint if spec else None,
        counts={s.name: int(data.counts.get(s, 0)) for s in STATES},
        best=best,
        running=sorted((_running(t, now) for t in data.running), key=lambda r: r.number),
        front=front,
        confirmed=confirmed,
        confirming=confirming,
        picked=picked,
    )


def _running(trial: FrozenTrial, now: datetime.datetime) -> RunningTrial:
    who = trial_attrs.worker_of(trial)
    age = None
    if trial.datetime_start is not None:
        start = trial.datetime_start
        if start.tzinfo is not None:  # defensive: a storage returning aware timestamps
            start = start.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        age = (now - start).total_seconds()
    last_step = max(trial.intermediate_values) if trial.intermediate_values else None
    phase = trial.user_attrs.get(trial_attrs.PHASE)
    return RunningTrial(
        number=trial.number,
        host=who.get("host"),
        pid=who.get("pid"),
        gpu=who.get("gpu"),
        age_s=age,
        phase=phase if isinstance(phase, str) else None,
        epoch=len(trial.intermediate_values),
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
            Text(printable(f"{row.finished}/{row.budget if row.budget is not None else '-'}")),  # a hand-edited spec
            str(row.running),
            str(row.failed),
            _value(row.best_value),
            Text(printable(_when(row.created))),
        )
    console.print(table)


def print_status(name: str, storage_url: str | None, console: Console | None = None,
                 pick: Pick | str = Pick()) -> None:
    """Render ``tuner status NAME``.

    Raises:
        StudyError: no such study (the message lists the existing ones), or a ``pick`` for a
            study with one objective.
        PickError: ``pick`` is not a pick rule.
        StorageError: unreachable database or no schema.
    """
    console = console or Console()
    pick = Pick.parse(pick)
    url = storage.resolve_url(storage_url)
    engine = open_reader(url)
    try:
        head = find_or_fail(engine, name, url)
        summary = summarize(read_status(engine, head, pick), spec_or_none(head))
    finally:
        engine.dispose()
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
    if summary.confirmed:
        total = sum(summary.confirming.values())
        line(f"confirm:  {summary.confirming.get('COMPLETE', 0)}/{total} confirmation trials complete "
             f"(outside the budget; `tuner confirm`)")

    counts = Table(title="trials", title_justify="left")
    for state in STATES:
        counts.add_column(state.name, justify="right")
    counts.add_row(*(str(summary.counts[s.name]) for s in STATES))
    console.print(counts)

    front = summary.front
    if front is not None:
        line(f"goal:     {front.objectives[0]} against {front.objectives[1]} (two objectives)")
        line(f"front:    {front.size} of {front.complete} complete trials on the Pareto front")
    if summary.best is None:
        line("best:     no completed trial yet")
    else:
        best = summary.best
        per_class = " ".join(
            f"{c}={'n/a' if v is None else _value(v)}" for c, v in sorted(best.per_class_iou.items())
        ) or "-"
        if summary.picked is not None:
            c = summary.picked
            line(f"pick:     confirmed -> trial {best.number}: mean {_value(c.mean)} - SE {_value(c.stderr)} = "
                 f"{_value(c.score)} over {c.n} confirmation runs (search run {_value(best.value)})")
        elif front is not None:
            line(f"pick:     {front.pick} -> trial {best.number}: {front.objectives[0]} {_value(best.value)}, "
                 f"{front.objectives[1]} {format_cost(best.cost)}; IoU per class: {per_class}")
        else:
            line(f"best:     {_value(best.value)} (trial {best.number}); IoU per class: {per_class}")
        line(_wrap(_params(best.params), console.width, indent=10))

    if summary.confirmed:
        console.print(confirmed_table(summary.confirmed))

    if not summary.running:
        line("running:  none")
        return
    # Wide terminals get the parameters as a column; narrow ones below the table, so that no
    # cell has to break a "name=value" item in the middle.
    wide = console.width >= WIDE
    table = Table(title="running trials", title_justify="left")
    for column, justify in (("trial", "right"), ("host", "left"), ("pid", "right"), ("gpu", "right"),
                            ("age", "right"), ("phase", "left"), ("epoch", "right"), ("val mIoU", "right")):
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
            Text(printable(run.phase or "-")),
            str(run.epoch),
            _value(run.last_value),
        ]
        table.add_row(*cells, *([Text(_params(run.params))] if wide else []))
    console.print(table)
    if not wide:
        for run in summary.running:
            line(_wrap(f"trial {run.number}: {_params(run.params)}", console.width, indent=2, hang=2))


def confirmed_table(confirmed: list[Confirmed]) -> Table:
    """Per confirmed configuration: its search run, then n, mean, sd, min, mean - SE and the
    per-class means over its confirmation runs (the search run left out: it was selected)."""
    table = Table(title="confirmed configurations (over confirmation seeds; --pick confirmed ranks by mean - SE)",
                  title_justify="left")
    for column in ("trial", "search", "n", "mean", "sd", "min", "mean-SE", "pending", "failed", "IoU per class (mean)"):
        table.add_column(column, justify="left" if column.startswith("IoU") else "right")
    for c in confirmed:
        per_class = " ".join(f"{k}={'n/a' if v is None else _value(v)}" for k, v in c.per_class_iou.items()) or "-"
        table.add_row(str(c.number), _value(c.search_miou), str(c.n), _value(c.mean), _value(c.sd),
                      _value(c.minimum), _value(c.score), str(c.pending), str(c.failed), per_class)
    return table


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


def _count_or_none(value: Any) -> int | None:
    """A whole number from a study attribute, else ``None`` (shown as '-'): anyone can write them."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
    """``2026-11-24 11:29`` from an ISO timestamp (UTC as recorded); the raw text if unparsable
    (to be shown through :func:`printable`, as every text from the database)."""
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
