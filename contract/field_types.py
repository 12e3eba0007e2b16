"""Type checks of a dataclass's fields by their annotations, for values anyone could have written.

A training config comes from YAML (which makes ``1e-3`` a string) and a study spec from JSON in
the database: both are checked field by field here, once, so that a wrong type is one line that
names the field instead of a failure deep inside training or a sampler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import dataclasses
import math
from typing import Any, get_args, get_origin

from contract.errors import TunerError
from contract.textfile import short_repr

#: The annotation names every dataclass here may use (``from __future__ import annotations``
#: leaves them as text).
_BUILTIN: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}


def check_field_types(
    instance: Any, error: type[TunerError], *, names: Mapping[str, type] | None = None, skip: Iterable[str] = ()
) -> None:
    """Raise ``error`` for the first field whose value is not of its annotated type.

    ``bool`` is not an ``int`` here (YAML's ``yes`` is not a filter count); an ``int`` for a
    ``float`` field becomes that float (set on ``instance``, frozen or not); a float must be
    finite. ``names`` resolves annotations other than the builtins (``"SearchSpace"``,
    ``"tuple[str, ...]"``); fields in ``skip`` are checked by the caller.
    """
    known = {**_BUILTIN, **(names or {})}
    skipped = set(skip)
    for field in dataclasses.fields(instance):
        if field.name in skipped:
            continue
        value = getattr(instance, field.name)
        allowed = _allowed(field.type, known)
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an int literal beyond float range
                raise error(f"{field.name} must be finite, got {short_repr(value)}") from None
            object.__setattr__(instance, field.name, value)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise error(f"{field.name} must be {_name(allowed)}, got {short_repr(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{field.name} must be finite, got {short_repr(value)}")


def _allowed(annotation: Any, known: Mapping[str, type]) -> tuple[type, ...]:
    """The types an annotation allows: ``"int | None"`` -> ``(int, NoneType)``."""
    if isinstance(annotation, str):
        return tuple(known[part.strip()] for part in annotation.split("|"))
    return get_args(annotation) if get_origin(annotation) is not None else (annotation,)


def _name(allowed: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in allowed)


__all__ = ["check_field_types"]
