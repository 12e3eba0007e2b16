"""Confirmation runs: which configurations ``tuner confirm`` re-runs, and what their seeds say.

One trial is one training run with one seed, scored on one validation split; the best of many
noisy runs is biased upwards (the winner's curse). ``tuner confirm STUDY --top K --seeds S``
re-runs the K best configurations of the search with S more seeds each, as trials of the same
study marked with :data:`contract.trial_attrs.CONFIRMS` and :data:`contract.trial_attrs.CONFIRM_SEED`.
Readers then summarise each confirmed configuration over its confirmation runs: n, mean,
sample standard deviation, minimum, per-class means. The search run is left out of these: it was
chosen *because* it scored high, so it is biased; the confirmation seeds are not.

``--pick confirmed`` (``tuner status``, ``export``, ``report``) chooses the configuration with
the highest mean minus one standard error (``sd / sqrt(n)``): a configuration must be good on
average *and* measured well enough to be trusted, so a high mean from two wildly different runs
ranks below a slightly lower mean that every seed agrees on. It needs at least
:data:`MIN_RUNS` complete runs of a configuration (one run has no standard deviation).

Pure Python (no TensorFlow, no database), so every reader and the command share one definition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
import dataclasses
import math
import statistics
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from contract import trial_attrs
from contract.errors import TunerError

#: Complete confirmation runs a configuration needs before ``--pick confirmed`` can rank it.
MIN_RUNS = 2


class ConfirmError(TunerError, ValueError):
    """``tuner confirm`` or ``--pick confirmed`` cannot do what was asked; one line."""


def seeds_for(base_seed: int, n: int) -> list[int]:
    """The ``n`` confirmation seeds of a configuration trained with ``base_seed``.

    ``base_seed + 1 .. base_seed + n``: never the search run's own seed, and the same first
    seeds for any ``n``, so a larger ``--seeds`` adds only the difference.
    """
    return [base_seed + i for i in range(1, n + 1)]


def is_search(trial: FrozenTrial) -> bool:
    return trial_attrs.confirmation_of(trial.user_attrs) is None


def top_trials(trials: Iterable[FrozenTrial], directions: Sequence[StudyDirection], k: int) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE search trials (fewer if there are fewer), best first.

    One objective: by value in the study's direction, then by number. Two (mIoU and a cost): by
    Pareto rank (the front first, then the front of the rest, ...), within a rank by mIoU down
    and then cost, so a short list holds the front's most accurate trials.
    """
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.values and is_search(t) and all(math.isfinite(v) for v in t.values)
    ]
    if len(directions) == 2:
        from contract.pareto import points_of, ranked

        by_number = {t.number: t for t in done}
        order = ranked(points_of(done, directions))
        return [by_number[p.number] for p in order[:k]]
    sign = -1.0 if directions[0] == StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (sign * t.values[0], t.number))[:k]


@dataclasses.dataclass(frozen=True)
class Confirmed:
    """One confirmed configuration: the search trial and its confirmation runs."""

    number: int  # the search trial whose configuration was re-run
    search_miou: float | None  # that trial's own (selected, so biased) mIoU
    seeds: tuple[int, ...]  # seeds of the complete confirmation runs, in order
    mious: tuple[float, ...]  # their mIoU, in the same order
    per_class_iou: dict[str, float | None]  # mean per class over those runs (None: never defined)
    pending: int = 0  # confirmation runs queued or running
    failed: int = 0  # confirmation runs failed for good (no retry queued)

    @property
    def n(self) -> int:
        return len(self.mious)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.mious) if self.mious else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (n - 1); ``None`` below two runs."""
        return statistics.stdev(self.mious) if self.n >= 2 else None

    @property
    def minimum(self) -> float | None:
        return min(self.mious) if self.mious else None

    @property
    def stderr(self) -> float | None:
        return None if self.sd is None else self.sd / math.sqrt(self.n)

    @property
    def score(self) -> float | None:
        """What ``--pick confirmed`` ranks by: mean minus one standard error."""
        if self.n < MIN_RUNS or self.mean is None or self.stderr is None:
            return None
        return self.mean - self.stderr

    def line(self) -> str:
        """``trial 7: n 3, mean 0.6123, sd 0.0150, min 0.5981 (search run 0.6400)``."""

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        extra = (f", {self.pending} pending" if self.pending else "") + (
            f", {self.failed} failed" if self.failed else ""
        )
        return (
            f"trial {self.number}: n {self.n}, mean {f(self.mean)}, sd {f(self.sd)}, min {f(self.minimum)}, "
            f"mean-SE {f(self.score)} (search run {f(self.search_miou)}){extra}"
        )


def summarize(trials: Iterable[FrozenTrial]) -> list[Confirmed]:
    """Every confirmed configuration among ``trials``, by its search trial's number.

    ``trials`` holds the confirmation trials (any state, user attrs read) and, for their search
    mIoU, the confirmed search trials; others are ignored. Per seed: a complete run counts (the
    first one, should a study hold two), else a queued or running one is pending, else a failed
    one (its retries used up) is failed.
    """
    by_seed: dict[int, dict[int, list[FrozenTrial]]] = defaultdict(lambda: defaultdict(list))
    search: dict[int, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        mark = trial_attrs.confirmation_of(trial.user_attrs)
        if mark is None:
            search[trial.number] = trial
        else:
            by_seed[mark[0]][mark[1]].append(trial)
    out = []
    for number in sorted(by_seed):
        done: dict[int, FrozenTrial] = {}
        pending = failed = 0
        for seed, runs in sorted(by_seed[number].items()):
            complete = [t for t in runs if t.state == TrialState.COMPLETE and _miou(t) is not None]
            if complete:
                done[seed] = complete[0]
            elif any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in runs):
                pending += 1
            elif any(t.state == TrialState.FAIL for t in runs):
                failed += 1
        out.append(
            Confirmed(
                number=number,
                search_miou=_miou(search[number]) if number in search else None,
                seeds=tuple(done),
                mious=tuple(_miou(t) for t in done.values()),  # type: ignore[misc]
                per_class_iou=_per_class_means(list(done.values())),
                pending=pending,
                failed=failed,
            )
        )
    return out


def best(confirmed: Iterable[Confirmed]) -> Confirmed | None:
    """The configuration ``--pick confirmed`` chooses: the highest mean minus one standard error
    among those with :data:`MIN_RUNS` complete runs (ties: the higher mean, then the lower trial
    number); ``None`` if none has."""
    ranked = [c for c in confirmed if c.score is not None]
    if not ranked:
        return None
    return max(ranked, key=lambda c: (c.score, c.mean, -c.number))


def pick_confirmed(trials: Sequence[FrozenTrial], study_name: str) -> tuple[FrozenTrial, Confirmed]:
    """The search trial ``--pick confirmed`` chooses among ``trials``, with its summary.

    Raises:
        ConfirmError: no configuration has :data:`MIN_RUNS` complete confirmation runs yet.
    """
    chosen = best(summarize(trials))
    by_number = {t.number: t for t in trials}
    if chosen is None or chosen.number not in by_number:
        raise ConfirmError(
            f"--pick confirmed: no configuration of study {study_name!r} has {MIN_RUNS} complete confirmation "
            f"runs yet; run `tuner confirm {study_name} --top K --seeds S` (S >= {MIN_RUNS}) and let workers run them"
        )
    return by_number[chosen.number], chosen


def _miou(trial: FrozenTrial) -> float | None:
    value: Any = trial.user_attrs.get(trial_attrs.MIOU)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = trial.values[0] if trial.values else None
    return float(value) if value is not None and math.isfinite(value) else None


def _per_class_means(trials: Sequence[FrozenTrial]) -> dict[str, float | None]:
    sums: dict[str, list[float]] = defaultdict(list)
    names: set[str] = set()
    for trial in trials:
        per_class = trial.user_attrs.get(trial_attrs.PER_CLASS_IOU)
        if not isinstance(per_class, dict):
            continue
        for name, value in per_class.items():
            names.add(str(name))
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                sums[str(name)].append(float(value))
    return {name: (statistics.fmean(sums[name]) if sums[name] else None) for name in sorted(names)}
