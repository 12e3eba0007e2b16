"""Accuracy against cost: the Pareto front of (mIoU, cost) and the rules that pick one trial.

A two-objective study (``tuner create --objectives miou,params``) has no single best trial, only
a front of trials that no other trial beats on both mIoU and cost. ``tuner status``, ``export``
and ``report`` all choose from it with the same :class:`Pick`:

- ``best-miou``: the highest mIoU on the front (ties: the smaller cost);
- ``smallest-within D``: the smallest cost whose mIoU is at most ``D`` below the best mIoU
  (``D`` in mIoU units: 0.01 is one point of mIoU);
- ``confirmed`` (any study, one objective too): the configuration ``tuner confirm`` re-ran whose
  confirmation runs have the highest mean mIoU minus one standard error (``contract/confirm.py``);
  it needs the confirmation runs' attributes, so the readers resolve it, not :meth:`Pick.choose`.

Pure Python (no TensorFlow, no database), so every reader shares one definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import dataclasses
import enum
import math
import re

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from contract.errors import TunerError


class PickError(TunerError, ValueError):
    """A ``--pick`` that is not one of the rules."""


class PickRule(str, enum.Enum):
    BEST_MIOU = "best-miou"
    SMALLEST_WITHIN = "smallest-within"
    CONFIRMED = "confirmed"


@dataclasses.dataclass(frozen=True)
class Point:
    """One COMPLETE trial as the front sees it: higher ``miou`` and lower ``cost`` are better."""

    number: int
    miou: float
    cost: float


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` on both and better on one."""
    return a.miou >= b.miou and a.cost <= b.cost and (a.miou > b.miou or a.cost < b.cost)


def front(points: Iterable[Point]) -> list[Point]:
    """The points no other point dominates, by cost (then mIoU down, then number).

    Points with equal values are all kept (neither dominates the other), as in Optuna's
    ``study.best_trials``. Non-finite values are left out. Sorting first makes this
    O(n log n): scanning by cost, a point is on the front iff its mIoU beats every cheaper one.
    """
    finite = sorted(
        (p for p in points if math.isfinite(p.miou) and math.isfinite(p.cost)),
        key=lambda p: (p.cost, -p.miou, p.number),
    )
    out: list[Point] = []
    best = -math.inf  # the highest mIoU among strictly cheaper points
    group: list[Point] = []  # the points of the current cost
    for point in finite + [Point(-1, -math.inf, math.inf)]:  # a sentinel flushes the last group
        if group and point.cost != group[0].cost:
            top = group[0].miou  # sorted by mIoU down within a cost
            if top > best:
                out.extend(p for p in group if p.miou == top)
                best = top
            group = []
        group.append(point)
    return out


@dataclasses.dataclass(frozen=True)
class Pick:
    """How to choose one trial from the front; :meth:`parse` reads the ``--pick`` text."""

    rule: PickRule = PickRule.BEST_MIOU
    within: float | None = None  # smallest-within's mIoU tolerance

    @classmethod
    def parse(cls, text: str | Pick) -> Pick:
        """``best-miou``, ``confirmed``, ``smallest-within 0.01`` or ``smallest-within=0.01``.

        Raises:
            PickError: anything else, or a tolerance that is not a finite number >= 0.
        """
        if isinstance(text, Pick):
            return text
        usage = "use best-miou or 'smallest-within D' with D >= 0 in mIoU units (e.g. 0.01), or confirmed"
        words = [w for w in re.split(r"[\s=]+", str(text).strip().lower()) if w]
        if words == [PickRule.BEST_MIOU.value]:
            return cls()
        if words == [PickRule.CONFIRMED.value]:
            return cls(PickRule.CONFIRMED)
        if len(words) == 2 and words[0] == PickRule.SMALLEST_WITHIN.value:
            try:
                within = float(words[1])
            except ValueError:
                within = math.nan
            if math.isfinite(within) and within >= 0:
                return cls(PickRule.SMALLEST_WITHIN, within)
        shown = str(text)[:60] + ("..." if len(str(text)) > 60 else "")
        raise PickError(f"--pick {shown!r} is not a pick rule: {usage}")

    @property
    def is_default(self) -> bool:
        return self == Pick()

    @property
    def confirmed(self) -> bool:
        return self.rule == PickRule.CONFIRMED

    def __str__(self) -> str:
        return self.rule.value if self.within is None else f"{self.rule.value} {self.within:g}"

    def choose(self, points: Iterable[Point]) -> Point | None:
        """The picked point of the front of ``points``; ``None`` if there is none."""
        if self.confirmed:
            raise ValueError("the confirmed pick ranks confirmation runs, not points: see contract.confirm")
        candidates = front(points)
        if not candidates:
            return None
        best = max(p.miou for p in candidates)
        if self.rule == PickRule.BEST_MIOU:
            return min((p for p in candidates if p.miou == best), key=lambda p: (p.cost, p.number))
        assert self.within is not None
        good = [p for p in candidates if p.miou >= best - self.within]
        return min(good, key=lambda p: (p.cost, -p.miou, p.number))


def ranked(points: Iterable[Point]) -> list[Point]:
    """Every point by Pareto rank (the front, then the front of the rest, ...), within a rank by
    mIoU down, then cost, then number: ``tuner confirm``'s order for two objectives."""
    rest = list(points)
    out: list[Point] = []
    while rest:
        layer = front(rest)
        if not layer:  # only non-finite points left
            break
        out.extend(sorted(layer, key=lambda p: (-p.miou, p.cost, p.number)))
        taken = {p.number for p in layer}
        rest = [p for p in rest if p.number not in taken]
    return out


# -- trials -------------------------------------------------------------------------------------


def points_of(trials: Iterable[FrozenTrial], directions: Sequence[StudyDirection]) -> list[Point]:
    """COMPLETE two-value trials as points; a study whose directions are not (maximize,
    minimize) is turned around so that "higher mIoU, lower cost" still means better."""
    if len(directions) != 2:
        raise ValueError(f"a Pareto front needs 2 objectives, got {len(directions)}")
    up = 1.0 if directions[0] == StudyDirection.MAXIMIZE else -1.0
    down = 1.0 if directions[1] == StudyDirection.MINIMIZE else -1.0
    return [
        Point(t.number, up * float(t.values[0]), down * float(t.values[1]))
        for t in trials
        if t.state == TrialState.COMPLETE and t.values and len(t.values) == 2
    ]


def front_trials(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """The COMPLETE trials on the Pareto front, by cost."""
    by_number = {t.number: t for t in trials}
    return [by_number[p.number] for p in front(points_of(trials, directions))]


def pick_trial(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection], pick: Pick) -> FrozenTrial | None:
    """The trial ``pick`` chooses from the front of ``trials``; ``None`` without a complete one."""
    chosen = pick.choose(points_of(trials, directions))
    if chosen is None:
        return None
    return next(t for t in trials if t.number == chosen.number)
