"""What ``tuner list`` and ``tuner status`` show, as data: read in a few queries, computed by pure functions.

The database is read with a few bulk queries (:mod:`storage.summaries`: counts per state, the
best trial, the running trials) instead of Optuna's readers, which load every trial with all its
epoch values (about 10 s at 5,000 trials). The numbers are computed by :func:`summarize`, which
returns dataclasses that :mod:`tuner.status` renders with Rich, so tests assert values rather
than table layout and other front ends (a JSON output, a notebook) can reuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState
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
    open_reader,
    study_overviews,
)
from storage.trial_reader import load_trials
from tuner.readers import check_pick, objective_names, utc_now

#: The states shown by ``tuner status``, in display order.
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
#: A trial that will not run again and counts against the budget.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
        rows.append(
            StudyRow(
                name=overview.name,
                finished=sum(counts[s] - overview.apart[s] for s in FINISHED),  # search trials: the budget's
                budget=_count_or_none(spec_attr.get("n_trials")) if isinstance(spec_attr, dict) else None,
                running=counts[TrialState.RUNNING],
                failed=counts[TrialState.FAIL],
                best_value=overview.best_value,
                created=created_at,
            )
        )
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
        complete = load_trials(
            engine, head.study_id, states=(TrialState.COMPLETE,), user_attr_keys=(), intermediate=False
        )
        n_complete = len(complete)
        front = front_trials(complete, head.directions)
        picked = None if pick.confirmed else pick_trial(complete, head.directions, pick)
        if picked is not None:
            best = load_trials(engine, head.study_id, trial_ids=[trial_id(picked)], intermediate=False)[0]
    running = load_trials(
        engine, head.study_id, states=(TrialState.RUNNING,), user_attr_keys=(trial_attrs.WORKER, trial_attrs.PHASE)
    )
    return StatusData(
        name=head.study_name,
        n_objectives=len(head.directions),
        counts=count_states(engine, head.study_id),
        best=best,
        running=running,
        front=front,
        n_complete=n_complete,
        pick=pick,
        directions=head.directions,
        confirmations=confirmations,
    )


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
        front = Front(
            objectives=objective_names(spec, data.directions),
            size=len(data.front),
            complete=data.n_complete,
            pick=str(data.pick),
        )
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


def _count_or_none(value: Any) -> int | None:
    """A whole number from a study attribute, else ``None`` (shown as '-'): anyone can write them."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = [
    "FINISHED",
    "STATES",
    "BestTrial",
    "Front",
    "RunningTrial",
    "StatusData",
    "StatusSummary",
    "StudyRow",
    "list_studies",
    "read_status",
    "summarize",
]
