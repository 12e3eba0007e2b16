"""Read the small text files users hand us (search spaces, training configs), defensively.

These files come from anywhere: ``--space /dev/zero`` must not read until memory runs out, a 1 KB
YAML "billion laughs" must not expand into gigabytes, ``[`` x 10000 must not end in a
RecursionError traceback, and an error message about a value must not print a megabyte of it.
So: regular files only, at most :data:`MAX_TEXT_BYTES`, YAML without anchors/aliases (a config
has no use for them, and they are what makes the bomb), and values in messages shortened by
:func:`short_repr`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import reprlib
import stat
from typing import Any

import yaml

#: Largest config or search-space file read: real ones are a few KB.
MAX_TEXT_BYTES = 1024 * 1024

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: Any) -> str:
    """``repr`` cut to a few dozen characters, however large or deeply nested ``value`` is."""
    return _REPR.repr(value)


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    Raises:
        ValueError: not a regular file (a device, FIFO, directory), too large, or not UTF-8;
            the message is one line without the path (callers name the file and its role).
        OSError: the file cannot be opened.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer before we can refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("is a directory")
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB; not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not a UTF-8 text file") from None


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): no exponential expansion."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not supported here", event.start_mark
            )
        return super().compose_node(parent, index)


def parse(text: str, *, json_format: bool = False) -> Any:
    """Parse YAML (or JSON); nesting too deep for the parser is a ``ValueError``, not a crash.

    Raises:
        yaml.YAMLError, json.JSONDecodeError: malformed text.
        ValueError: nested too deeply.
    """
    try:
        return json.loads(text) if json_format else yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_file(path: Path, *, json_format: bool = False) -> Any:
    """:func:`read_text` then :func:`parse`."""
    return parse(read_text(path), json_format=json_format)


def load_or_raise(path: Path, *, what: str, error: type[Exception], json_format: bool = False) -> Any:
    """:func:`load_file`, with every way it fails as one ``error`` line naming ``what`` and the file.

    The config, search-space and ``--enqueue`` loaders share this, so all say the same thing for
    the same problem.
    """
    try:
        return load_file(path, json_format=json_format)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        verb, reason = load_failure(exc)
        raise error(f"{verb} {what} {path}: {reason}") from None


def load_failure(exc: OSError | ValueError | yaml.YAMLError) -> tuple[str, str]:
    """What failed (``cannot read`` / ``cannot parse``) and why, in one line, for an exception of
    :func:`load_file`."""
    if isinstance(exc, OSError):
        return "cannot read", str(exc.strerror or exc)
    if isinstance(exc, json.JSONDecodeError):  # before ValueError, of which it is a kind
        return "cannot parse", str(exc)
    if isinstance(exc, yaml.YAMLError):
        return "cannot parse", yaml_error_line(exc)
    return "cannot read", " ".join(str(exc).split())


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """One line naming the problem and where it is.

    PyYAML's own message spans several lines and starts with the context ("while parsing a flow
    node"), so its first line alone tells the user neither what is wrong nor where.
    """
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {' '.join(str(problem).split())}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
