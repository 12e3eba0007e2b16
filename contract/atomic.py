"""Write files so that readers see the old file or the new one, never half of one.

Data files, saved models and exported configs are all written to a temporary name in the target's
directory (the same filesystem, so ``os.replace`` is atomic) and renamed into place once
complete. A crash or an error leaves no temporary file and the previous file untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import errno
import os
from pathlib import Path
import secrets


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it replaces ``path``.

    The temporary path does not exist yet: the caller creates it (``np.savez``, ``model.save``
    and ``download_artifact`` all insist on creating their file themselves), so it gets the
    usual umask permissions. ``suffix`` keeps writers that choose the format by extension happy
    (``.keras``, ``.npz``).
    """
    path = Path(path)
    ancestor = _existing_ancestor(path)
    if ancestor is not None and not ancestor.is_dir():  # mkdir would only say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{ancestor} is a file, not a directory", str(ancestor))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def writable_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` could not be written by :func:`replacing`, or ``None`` if it looks fine.

    Checked before long work (training) so that a typo in an output path fails in a second,
    not after an hour with the result lost.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory"
    ancestor = _existing_ancestor(path)
    if ancestor is None:
        return None
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable"
    return None


def _existing_ancestor(path: Path) -> Path | None:
    """The nearest parent of ``path`` that exists: where ``mkdir(parents=True)`` would start."""
    return next((parent for parent in path.parents if parent.exists()), None)
