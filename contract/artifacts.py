"""The artifact store where workers upload each new best model.

Workers, ``tuner export`` and ``tuner dashboard`` all open the same directory; one function opens
it so that a bad ``--artifact-dir`` (a file, an unwritable path) is one clear line everywhere,
found before any training or serving starts.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
from typing import TYPE_CHECKING

from contract.errors import TunerError

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore


class ArtifactDirError(TunerError, RuntimeError):
    """The artifact directory cannot be used; one line for the user."""


def open_artifact_store(path: Path, *, create: bool) -> FileSystemArtifactStore:
    """Open the directory as an Optuna artifact store.

    Args:
        create: make the directory if missing (workers and the dashboard); readers such as
            ``tuner export`` pass ``False``, since a missing directory means a wrong path.

    Raises:
        ArtifactDirError: not a directory, cannot be created, or (with ``create``) not writable.
    """
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactDirError(f"artifact directory {path} is a file, not a directory")
    if not path.exists():
        if not create:
            raise ArtifactDirError(f"artifact directory {path} does not exist")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactDirError(f"cannot create artifact directory {path}: {exc.strerror}") from None
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise ArtifactDirError(f"artifact directory {path} is not writable")
    return FileSystemArtifactStore(str(path))


#: Optuna's artifact ids are UUID4 strings; anything path-like ("..", "a/b") is refused, since
#: the file-system store joins the id onto its directory.
_ARTIFACT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")


def is_artifact_id(value: object) -> bool:
    """Whether ``value`` can name a file inside the store (no separators, no dot names)."""
    return isinstance(value, str) and _ARTIFACT_ID.fullmatch(value) is not None


__all__ = ["ArtifactDirError", "is_artifact_id", "open_artifact_store"]
