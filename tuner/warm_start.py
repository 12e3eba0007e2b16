"""Warm start: known configurations enqueued once, by the coordinator, when a study is created.

A search that starts from random points wastes its first trials rediscovering what a team
already knows. ``tuner create --enqueue FILE.yaml`` (repeatable) and the shipped seed
configuration (``seed_config.yaml``, on by default) are turned into Optuna enqueued trials
(``Study.enqueue_trial``) in the same step that creates the study, so they exist exactly once
whatever number of workers later join; workers only ask, and Optuna hands the enqueued trials out
first.

A file is a training config (``worker train --config`` format), complete or partial. It must fit
the study's search space: a searched parameter's value lies in its range or choices, a fixed
value equals the space's, and any other field keeps the training config's default (else the trial
would train something other than the file says). Searched parameters the file leaves out are
sampled as usual.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
import math
from pathlib import Path
from typing import Any

import yaml

from contract.config import ConfigError, TrainConfig
from contract.errors import TunerError
from contract.space import Param, SearchSpace
from contract.textfile import load_failure, load_file

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


class WarmStartError(TunerError, ValueError):
    """A configuration to enqueue that cannot be read or does not fit the study's space."""


def seed_config_path() -> Path:
    """The seed team's best configuration, shipped with the tuner."""
    return Path(str(resources.files("tuner") / "seed_config.yaml"))


def plan(space: SearchSpace, files: list[Path], *, seed_config: bool) -> tuple[list[dict[str, Any]], str]:
    """The trials to enqueue, in order, as ``{"params", "source"}``; plus a note for the user.

    Files named explicitly must fit (else :class:`WarmStartError`). The default seed
    configuration is skipped, with the reason in the note, when the study's space cannot hold it
    (a custom space with other widths, say): it was not asked for by name. Identical parameter
    sets are enqueued once.
    """
    queued: list[dict[str, Any]] = []
    notes: list[str] = []
    sources = [(Path(f), True) for f in files]
    if seed_config and all(Path(f).resolve() != seed_config_path().resolve() for f in files):
        sources.append((seed_config_path(), False))
    for path, explicit in sources:
        try:
            params = fit_params(space, read_config(path))
        except WarmStartError as exc:
            if explicit:
                raise WarmStartError(f"--enqueue {path}: {exc}") from None
            notes.append(f"seed configuration not enqueued ({exc}; --no-seed-config silences this)")
            continue
        if any(q["params"] == params for q in queued):
            continue
        queued.append({"params": params, "source": "seed_config" if not explicit else path.name})
    if queued:
        notes.insert(0, f"enqueued {len(queued)} configuration(s): " + ", ".join(q["source"] for q in queued))
    return queued, "; ".join(notes)


def read_config(path: Path) -> dict[str, Any]:
    """A (partial) training config file as a mapping, validated as a training config."""
    try:
        values = load_file(path, json_format=path.suffix == ".json")
    except (OSError, ValueError, yaml.YAMLError) as exc:  # the same guarded reader as --space/--config
        verb, reason = load_failure(exc)
        raise WarmStartError(f"{verb}: {reason}") from None
    values = {} if values is None else values
    try:
        TrainConfig.from_dict(values)
    except ConfigError as exc:
        # Kept: plan() catches WarmStartError to name the --enqueue file, or to turn the seed
        # configuration's into a note instead of a failed `tuner create`.
        raise WarmStartError(str(exc)) from None
    return dict(values)


def fit_params(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters ``values`` sets, after checking that all of it fits ``space``."""
    params: dict[str, Any] = {}
    for name, value in values.items():
        if name in space.params:
            problem = _outside(space.params[name], value)
            if problem:
                raise WarmStartError(f"{name}={value!r} is outside the study's search space ({problem})")
            params[name] = value
        elif name in space.fixed:
            if space.fixed[name] != value:
                raise WarmStartError(f"{name}={value!r}, but the study fixes {name}={space.fixed[name]!r}")
        elif _DEFAULTS.get(name) != value:
            raise WarmStartError(
                f"{name}={value!r} is neither searched nor fixed by the study's space "
                f"(its trials use {name}={_DEFAULTS.get(name)!r})"
            )
    return params


def _outside(param: Param, value: Any) -> str:
    """Why ``value`` cannot be sampled from ``param`` ('' when it can)."""
    if param.type in ("categorical", "bool"):
        choices = (False, True) if param.type == "bool" else tuple(param.choices or ())
        ok = any(type(value) is type(c) and value == c for c in choices)
        return "" if ok else f"choices {list(choices)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"expected a number in {param.low}..{param.high}"
    if param.type == "int" and not isinstance(value, int):
        return f"expected an integer in {param.low}..{param.high}"
    if not param.low <= value <= param.high:
        return f"range {param.low}..{param.high}"
    if param.step is not None:
        steps = (value - param.low) / param.step
        if not math.isclose(steps, round(steps), abs_tol=1e-9):
            return f"range {param.low}..{param.high} in steps of {param.step}"
    return ""
