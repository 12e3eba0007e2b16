"""What every command that reads a study shares: ``tuner status``, ``report``, ``export`` and ``demo``.

Finding the study (or failing with the names that exist), its spec when ``tuner create`` wrote
one, whether a ``--pick`` fits the study's objectives, the objectives' names, the clock the
trial timestamps use, and how a cost is written. They lived in :mod:`tuner.status`, which made
the report and the exporter import the status command to get them.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy

from contract.pareto import Pick
from contract.study_spec import SPEC_ATTR, StudySpec
import storage
from storage.summaries import StudyHead, find_study, study_names
from tuner.study import StudyError


def utc_now() -> datetime.datetime:
    """Now as naive UTC, the convention of Optuna 5's trial timestamps."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def spec_or_none(head: StudyHead) -> StudySpec | None:
    """The study's spec, or ``None`` for a study created outside ``tuner`` (still listable).

    Raises:
        SpecError: a corrupt spec (worth reporting).
    """
    if SPEC_ATTR not in head.user_attrs:
        return None
    return StudySpec.of(head)  # type: ignore[arg-type]  # reads study_name and user_attrs only


def find_or_fail(engine: sqlalchemy.Engine, name: str, url: str) -> StudyHead:
    """The study called ``name``.

    Raises:
        StudyError: no such study; the message lists the studies that exist.
    """
    head = find_study(engine, name)
    if head is None:
        known = ", ".join(study_names(engine)) or "none"
        raise StudyError(f"no study {name!r} in {storage.mask_url(url)} (studies: {known})")
    return head


def check_pick(pick: Pick, n_objectives: int, study_name: str) -> None:
    """``--pick`` chooses from a Pareto front: with one objective only the default and
    ``confirmed`` (which ranks confirmation runs, not a front) make sense.

    Raises:
        StudyError: a Pareto pick for a study without two objectives.
    """
    if n_objectives != 2 and not pick.is_default and not pick.confirmed:
        raise StudyError(
            f"--pick {pick} needs a study with two objectives (miou and a cost); study "
            f"{study_name!r} has {n_objectives}: create one with --objectives miou,params"
        )


def objective_names(spec: StudySpec | None, directions: tuple[Any, ...]) -> tuple[str, ...]:
    """The objectives by name (``miou``, ``params``), or by direction (``maximize``) for a study
    not created by ``tuner create``."""
    if spec is not None and len(spec.objectives) == len(directions):
        return spec.objectives
    return tuple(d.name.lower() for d in directions)


def format_cost(value: float | None) -> str:
    """A parameter count as an integer with separators, milliseconds with 3 significant digits."""
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3g}"
