"""The search space file: what the user edits, what each trial samples.

A YAML file with two sections, both keyed by :class:`~contract.config.TrainConfig` field names::

    fixed:                       # the same for every trial
      epochs: 60
    params:                      # sampled per trial
      learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
      batch_size:    {type: categorical, choices: [64, 128, 256]}
      base_filters:  {type: int, low: 16, high: 48, step: 16}

Types: ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (``low``, ``high``,
optional ``log`` or ``step``), ``categorical`` (``choices``: a list of scalars), ``bool``
(shorthand for ``categorical`` over ``[false, true]``). Sampling a trial gives a complete
``TrainConfig``, so what a worker trains and what ``tuner export`` writes cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from contract import textfile
from contract.config import ConfigError, TrainConfig
from contract.errors import TunerError
from contract.textfile import short_repr

PARAM_TYPES = ("float", "int", "categorical", "bool")
#: Longer keys cannot be field names; refusing them keeps messages short.
MAX_KEY_LENGTH = 64
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class SpaceError(TunerError, ValueError):
    """A search space file that cannot be used; one line naming the parameter and the problem."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One sampled hyperparameter."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def _range(self) -> tuple[float | int, float | int]:
        assert self.low is not None and self.high is not None, "checked when the space is parsed"
        return self.low, self.high

    def distribution(self) -> BaseDistribution:
        if self.type in ("float", "int"):
            low, high = self._range()
        if self.type == "float":
            return FloatDistribution(float(low), float(high), log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        choices = (False, True) if self.type == "bool" else self.choices
        assert choices is not None
        return CategoricalDistribution(choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            low, high = self._range()
            return trial.suggest_float(self.name, low, high, log=self.log, step=self.step)
        if self.type == "int":
            low, high = self._range()
            return trial.suggest_int(self.name, low, high, log=self.log, step=int(self.step or 1))  # type: ignore[arg-type]
        choices = (False, True) if self.type == "bool" else self.choices
        return trial.suggest_categorical(self.name, list(choices or ()))

    def extremes(self) -> list[Any]:
        """Values at the edges of the range, used to validate the space against TrainConfig."""
        if self.type in ("float", "int"):
            return [self.low, self.high]
        return list((False, True) if self.type == "bool" else self.choices or ())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type in ("float", "int"):
            out.update(low=self.low, high=self.high)
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        elif self.type == "categorical":
            out["choices"] = list(self.choices or ())
        return out


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Fixed values plus sampled parameters; see the module docstring for the file format."""

    params: dict[str, Param]
    fixed: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        values = textfile.load_or_raise(path, what="search space", error=SpaceError)
        try:
            return cls.from_dict(values)
        except SpaceError as exc:
            raise SpaceError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, values: Any) -> SearchSpace:
        if not isinstance(values, dict):
            raise SpaceError("a search space must be a mapping with 'params' (and optional 'fixed')")
        _require_string_keys("top level", values)
        unknown = sorted(set(values) - {"params", "fixed"})
        if unknown:
            raise SpaceError(f"unknown top-level key(s): {', '.join(unknown[:8])} (use params, fixed)")
        raw_params = _mapping("params", values.get("params"))
        fixed = _mapping("fixed", values.get("fixed"))
        if not raw_params:
            raise SpaceError("'params' is empty: nothing to search")
        params = {name: _parse_param(name, spec) for name, spec in raw_params.items()}
        for name in fixed:
            if name not in _CONFIG_FIELDS:
                raise SpaceError(f"fixed.{name}: not a training config field")
        both = sorted(set(params) & set(fixed))
        if both:
            raise SpaceError(f"{', '.join(both)}: both fixed and searched; pick one")
        space = cls(params=params, fixed=fixed)
        space._validate_against_config()
        return space

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "params": {n: p.to_dict() for n, p in self.params.items()}}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: p.distribution() for name, p in self.params.items()}

    def sample(self, trial: optuna.Trial) -> TrainConfig:
        """Suggest every parameter on the trial and return the complete config."""
        values = {name: param.suggest(trial) for name, param in self.params.items()}
        return self.config(values)

    def config(self, params: dict[str, Any]) -> TrainConfig:
        """The full training config for sampled ``params`` (e.g. a finished trial's).

        Raises:
            ConfigError: the values make no valid training config.
        """
        return TrainConfig.from_dict({**self.fixed, **params})

    @property
    def max_epochs(self) -> int:
        """Epoch budget of one trial: the pruner's maximum resource."""
        if "epochs" in self.params:
            return int(self.params["epochs"].high)  # type: ignore[arg-type]
        return int(self.fixed.get("epochs", TrainConfig.epochs))

    def _validate_against_config(self) -> None:
        try:
            TrainConfig.from_dict(dict(self.fixed))
        except ConfigError as exc:
            raise SpaceError(f"fixed: {exc}") from None
        for name, param in self.params.items():
            for value in param.extremes():
                try:
                    TrainConfig.from_dict({**self.fixed, name: value})
                except ConfigError as exc:
                    raise SpaceError(f"params.{name}: value {short_repr(value)} is invalid: {exc}") from None


def _mapping(section: str, value: Any) -> dict[str, Any]:
    """A ``params`` or ``fixed`` section as a dict; an empty section (``fixed:``) is ``{}``.

    Checked before ``dict()``, which would turn a list of pairs into a mapping or fail with a
    TypeError that does not name the section.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"'{section}' must be a mapping of training config fields, got {type(value).__name__}")
    _require_string_keys(section, value)
    return dict(value)


def _require_string_keys(where: str, mapping: dict[Any, Any]) -> None:
    """YAML reads ``1:`` or ``null:`` as non-string keys; every key here names a field or option."""
    for key in mapping:
        if not isinstance(key, str):
            raise SpaceError(f"{where}: key {short_repr(key)} is not a name (keys must be strings)")
        if len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise SpaceError(f"{where}: key {short_repr(key)} is not a field or option name")


def _parse_param(name: str, spec: Any) -> Param:
    where = f"params.{name}"
    if name not in _CONFIG_FIELDS:
        raise SpaceError(f"{where}: not a training config field")
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{where}: needs a mapping with a 'type' ({', '.join(PARAM_TYPES)})")
    _require_string_keys(where, spec)
    kind = spec["type"]
    if kind not in PARAM_TYPES:
        raise SpaceError(f"{where}: type {short_repr(kind)} is not one of {', '.join(PARAM_TYPES)}")
    if name == "epochs" and kind != "int":
        # max_epochs reads the range's high end: Hyperband's maximum resource.
        raise SpaceError(f"{where}: must be type int (it is the pruner's epoch budget)")
    allowed = {
        "float": {"type", "low", "high", "log", "step"},
        "int": {"type", "low", "high", "log", "step"},
        "categorical": {"type", "choices"},
        "bool": {"type"},
    }[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpaceError(f"{where}: unknown key(s) {', '.join(extra[:8])} for type {kind}")
    if kind in ("float", "int"):
        return _parse_range(where, name, kind, spec)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: 'choices' must be a non-empty list")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise SpaceError(f"{where}: choices must be numbers, strings, booleans or null")
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"{where}: choices repeat")
        return Param(name, kind, choices=tuple(choices))
    return Param(name, kind)


def _parse_range(where: str, name: str, kind: str, spec: dict[str, Any]) -> Param:
    number = (int,) if kind == "int" else (int, float)
    for key in ("low", "high"):
        value = spec.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, number):
            article = "an int" if kind == "int" else "a number"
            raise SpaceError(f"{where}: '{key}' must be {article}, got {short_repr(value)}")
    low, high = spec["low"], spec["high"]
    log = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: 'log' must be true or false")
    if low > high:
        raise SpaceError(f"{where}: low {low} is greater than high {high}")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None:
        if log:
            raise SpaceError(f"{where}: 'step' and 'log' cannot be combined")
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise SpaceError(f"{where}: 'step' must be a positive number")
    if kind == "float":
        try:
            low, high = float(low), float(high)
        except OverflowError:  # an int literal beyond float range
            raise SpaceError(f"{where}: 'low' and 'high' must be finite numbers") from None
    return Param(name, kind, low=low, high=high, log=log, step=step)
