"""What a study carries besides its trials, so every worker runs it the same way.

Optuna does not persist a study's sampler, pruner or budget. The coordinator therefore writes a
:class:`StudySpec` into the study's user attributes and every worker rebuilds the sampler and
pruner from it, checks its data against the recorded fingerprint and obeys the shared budget.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import enum
import hashlib
from pathlib import Path
from typing import Any

import optuna

from contract.errors import TunerError
from contract.field_types import check_field_types
from contract.space import SearchSpace, SpaceError

SPEC_ATTR = "tuner_spec"


class Sampler(str, enum.Enum):
    """How workers draw the next configuration (``tuner create --sampler``).

    NSGA-II is for two-objective studies only: with one objective TPE learns faster from the
    same trials, and NSGA-II's first generation (50 trials) is random sampling anyway.
    """

    TPE = "tpe"
    RANDOM = "random"
    NSGA2 = "nsga2"


class Pruner(str, enum.Enum):
    """How workers stop unpromising trials early, on epochs (``tuner create --pruner``)."""

    HYPERBAND = "hyperband"
    MEDIAN = "median"
    NONE = "none"


class Objective(str, enum.Enum):
    """What a study optimises (``tuner create --objectives``): mIoU, optionally against a cost.

    ``params`` is the model's parameter count; ``latency`` the measured inference milliseconds
    per image on the worker's device (one forward pass over a fixed validation batch, four with
    flip TTA).
    """

    MIOU = "miou"
    PARAMS = "params"
    LATENCY = "latency"


#: Optuna's direction of each objective: mIoU up, costs down.
DIRECTIONS = {Objective.MIOU: "maximize", Objective.PARAMS: "minimize", Objective.LATENCY: "minimize"}
OBJECTIVES = tuple(o.value for o in Objective)
SAMPLERS = tuple(s.value for s in Sampler)
PRUNERS = tuple(p.value for p in Pruner)
MAX_SEED = 2**32 - 1


class SpecError(TunerError, ValueError):
    """A study that was not created by ``tuner create`` or has an unusable spec."""


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """The study's settings; its field defaults are the only defaults ``tuner create`` knows."""

    space: SearchSpace
    data_fingerprint: str
    n_trials: int
    sampler: str = Sampler.TPE.value
    seed: int = 0
    pruner: str = Pruner.HYPERBAND.value
    min_epochs: int = 1
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 2
    # Whether the study's data had the repeated-mask "alien" images removed (the fingerprint is
    # of that cleaned data); workers load their file the same way. Specs from before: True.
    remove_aliens: bool = True
    # mIoU first, then at most one cost; specs from before: mIoU only.
    objectives: tuple[str, ...] = (Objective.MIOU.value,)
    # How many workers the team expects to run at once (``tuner create --workers-hint``); the
    # sampler's options depend on it (:func:`tpe_options`). Specs from before: 1.
    workers_hint: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.objectives, list):  # the JSON round trip of to_attr
            object.__setattr__(self, "objectives", tuple(self.objectives))
        check_field_types(self, SpecError, names=_FIELD_TYPES)  # a stored spec: JSON anyone could write
        check_objectives(self.objectives)
        if self.multi_objective:
            if self.pruner != Pruner.NONE:
                raise SpecError(
                    f"pruner {self.pruner!r} cannot prune a study with several objectives (Optuna's "
                    "pruners judge one value); leave --pruner out, or give --pruner none"
                )
        elif self.sampler == Sampler.NSGA2:
            raise SpecError(
                "sampler nsga2 is for several objectives (--objectives miou,params); use tpe or random for mIoU alone"
            )
        if self.sampler not in SAMPLERS:
            raise SpecError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise SpecError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if not 1 <= self.min_epochs <= self.space.max_epochs:
            raise SpecError(
                f"min epochs before pruning must be in 1..{self.space.max_epochs} "
                f"(the space's epoch budget), got {self.min_epochs}"
            )
        if self.n_trials < 1:
            raise SpecError(f"the trial budget must be >= 1, got {self.n_trials}")
        if self.workers_hint < 1:
            raise SpecError(f"--workers-hint must be >= 1, got {self.workers_hint}")
        if not 0 <= self.seed <= MAX_SEED:  # numpy's seeds, which Optuna's samplers use
            raise SpecError(f"--seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.grace_period <= self.heartbeat_interval:
            raise SpecError(
                f"grace period ({self.grace_period}s) must exceed the heartbeat interval "
                f"({self.heartbeat_interval}s), or live trials would be failed"
            )

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        """Optuna's study directions, one per objective."""
        return [DIRECTIONS[Objective(o)] for o in self.objectives]

    @property
    def cost(self) -> str | None:
        """The cost objective (``params`` or ``latency``), or ``None`` for mIoU alone."""
        return self.objectives[1] if self.multi_objective else None

    def to_attr(self) -> dict[str, Any]:
        """JSON-safe fields. A one-objective spec leaves ``objectives`` out, so workers from
        before it existed still join such a study; they refuse a two-objective one (unexpected
        field) instead of running it as one objective."""
        out = dataclasses.asdict(self)
        out["space"] = self.space.to_dict()
        if self.workers_hint == 1:  # as objectives: older workers still join such a study
            del out["workers_hint"]
        if self.multi_objective:
            out["objectives"] = list(self.objectives)
        else:
            del out["objectives"]
        return out

    @classmethod
    def from_attr(cls, value: Any) -> StudySpec:
        """Rebuild from :meth:`to_attr`'s output, checking every field.

        The attribute lives in a shared database, so another tuner version (or a hand edit) may
        have written it; anything unusable is a :class:`SpecError` naming the field.
        """
        if not isinstance(value, dict):
            raise SpecError(f"expected a mapping, got {type(value).__name__}")
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        for key in value:
            if key not in names:
                raise SpecError(f"unexpected field {str(key)!r}")
        for f in fields:
            if f.name not in value and f.default is dataclasses.MISSING:
                raise SpecError(f"missing field {f.name!r}")
        try:
            space = SearchSpace.from_dict(value["space"])
        except SpaceError as exc:
            raise SpecError(f"space: {exc}") from None
        return cls(**{**value, "space": space})

    @classmethod
    def of(cls, study: optuna.Study) -> StudySpec:
        value = study.user_attrs.get(SPEC_ATTR)
        if value is None:
            raise SpecError(f"study {study.study_name!r} was not created by `tuner create` (no {SPEC_ATTR} attribute)")
        try:
            return cls.from_attr(value)
        except (SpecError, KeyError, TypeError, ValueError) as exc:
            # KeyError/TypeError/ValueError: a shape the checks above missed; still one line.
            detail = (str(exc).splitlines() or [""])[0]
            if not isinstance(exc, SpecError):
                detail = f"{type(exc).__name__}: {detail}"
            raise SpecError(
                f"study {study.study_name!r} has an unreadable tuner spec: {detail} (written by another tuner version?)"
            ) from None

    def make_sampler(self, worker_key: str = "") -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded per worker.

        See :func:`worker_seed`; TPE's options follow the expected number of workers
        (:func:`tpe_options`).
        """
        seed = worker_seed(self.seed, worker_key)
        if self.sampler == Sampler.RANDOM:
            return optuna.samplers.RandomSampler(seed=seed)
        if self.sampler == Sampler.NSGA2:
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, **tpe_options(self.workers_hint))  # also two objectives

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """Pruning on epochs: the resource is the 1-based epoch number reported by the worker.

        ``min_epochs`` is the least a trial trains before it can be pruned (Hyperband's minimum
        resource, the median pruner's warm-up): raise it when early epochs say little. A study
        with several objectives always has pruner ``none`` (checked on creation).
        """
        if self.pruner == Pruner.HYPERBAND:
            return optuna.pruners.HyperbandPruner(
                min_resource=self.min_epochs, max_resource=self.space.max_epochs, reduction_factor=3
            )
        if self.pruner == Pruner.MEDIAN:
            return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=self.min_epochs)
        return optuna.pruners.NopPruner()


def worker_seed(seed: int, worker_key: str) -> int:
    """The sampler seed of one worker of a study seeded with ``seed``.

    All workers sharing one seed would draw the same start-up configurations; mixing a worker
    key (host, pid) into the seed keeps them apart while a single worker started with an empty
    key reproduces the study's seed exactly.
    """
    if not worker_key:
        return seed
    digest = hashlib.sha256(f"{seed}:{worker_key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


#: TPE's random start-up trials with one worker (Optuna's default).
STARTUP_TRIALS = 10


def tpe_options(workers_hint: int) -> dict[str, Any]:
    """``TPESampler`` keyword arguments for a study run by about ``workers_hint`` workers at once.

    Chosen from ``bench/parallel_search.py`` (docs/benchmarks.md, "Parallel search quality"),
    16 and 64 simulated workers on three tables:

    * the constant liar stays on (pinned here, not left to Optuna's default): without it, 16
      workers started the configuration another worker was still training in a sixth of their
      trials (NAS-Bench-201), and no table gave a better result for it beyond the spread;
    * the random start-up trials stay at 10 whatever the number of workers: scaling them with
      the workers (``max(10, N)``) was better on one table, even on one and worse on one (HPOLib:
      median regret 0.046 against 0.021 at 16 workers).

    ``workers_hint`` is the place for a rule that a larger measurement supports; today it
    changes nothing here (``tuner create`` uses it to warn about budgets of too few waves).
    """
    del workers_hint  # no measured rule depends on it yet (see above)
    return {"constant_liar": True, "n_startup_trials": STARTUP_TRIALS}


#: The spec's annotations beyond the builtins, for :func:`contract.field_types.check_field_types`.
_FIELD_TYPES: dict[str, type] = {"SearchSpace": SearchSpace, "tuple[str, ...]": tuple}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CreateOptions:
    """What ``tuner create`` was asked for: the spec's settings plus where and how to create it.

    ``tuner create``, ``tuner demo`` and the tests fill one of these; ``create_study`` checks it
    and turns it into a :class:`StudySpec`. The defaults are the spec's own.
    """

    storage_url: str | None
    data: Path | None  # the .npz whose fingerprint is recorded; or give ``fingerprint``
    fingerprint: str | None
    space_path: Path | None  # None: the shipped default space
    trials: int
    sampler: str = StudySpec.sampler
    seed: int = StudySpec.seed
    pruner: str | None = None  # None: the default of the objectives (:func:`default_pruner`)
    min_epochs: int = StudySpec.min_epochs
    heartbeat_interval: int = StudySpec.heartbeat_interval
    grace_period: int = StudySpec.grace_period
    max_retry: int = StudySpec.max_retry
    overwrite: bool = False
    exist_ok: bool = False
    enqueue: Sequence[Path] = ()  # training configs to enqueue as first trials
    seed_config: bool = True  # also enqueue the seed team's best configuration
    remove_aliens: bool = True
    objectives: str | tuple[str, ...] = StudySpec.objectives  # "miou,params" or names; mIoU first
    workers_hint: int = StudySpec.workers_hint  # workers expected at once (the sampler's options)


def default_pruner(objectives: tuple[str, ...]) -> str:
    """The pruner ``tuner create`` uses when none is given: none for several objectives."""
    return StudySpec.pruner if len(objectives) == 1 else Pruner.NONE.value


def parse_objectives(text: str) -> tuple[str, ...]:
    """``"miou,params"`` -> ``("miou", "params")``, checked (see :func:`check_objectives`).

    Raises:
        SpecError: an unknown name, mIoU not first, a repeat, or more than one cost.
    """
    names = tuple(part.strip().lower() for part in text.split(","))
    check_objectives(names)
    return names


def check_objectives(objectives: tuple[str, ...]) -> None:
    """mIoU first, then at most one cost objective, nothing repeated.

    Raises:
        SpecError: naming what is wrong.
    """
    choices = ", ".join(OBJECTIVES)
    for name in objectives:
        if not isinstance(name, str) or name not in OBJECTIVES:
            raise SpecError(f"unknown objective {name!r} in --objectives; choose from {choices}")
    if not objectives or objectives[0] != Objective.MIOU:
        raise SpecError(f"--objectives must start with miou (the accuracy), got {','.join(objectives) or 'nothing'}")
    if len(set(objectives)) != len(objectives):
        raise SpecError(f"--objectives {','.join(objectives)} repeats an objective")
    if len(objectives) > 2:
        raise SpecError(f"--objectives {','.join(objectives)}: at most one cost (params or latency) next to miou")
