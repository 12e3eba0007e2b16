"""The artifact store where workers upload each new best model.

Workers, ``tuner export`` and ``tuner dashboard`` all open the same directory; one function opens
it so that a bad ``--artifact-dir`` (a file, an unwritable path) is one clear line everywhere,
found before any training or serving starts.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
import re
import shutil
import stat
from typing import BinaryIO

from optuna.artifacts.exceptions import ArtifactNotFound

from contract.errors import TunerError
from contract.textfile import short_repr


class ArtifactDirError(TunerError, RuntimeError):
    """The artifact directory cannot be used; one line for the user."""


def open_artifact_store(path: Path, *, create: bool) -> RegularFileArtifactStore:
    """Open the directory as an Optuna artifact store.

    Args:
        create: make the directory if missing (workers and the dashboard); readers such as
            ``tuner export`` pass ``False``, since a missing directory means a wrong path.

    Raises:
        ArtifactDirError: not a directory, cannot be created, or (with ``create``) not writable.
    """
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
    return RegularFileArtifactStore(str(path))


#: Optuna's artifact ids are UUID4 strings; anything path-like ("..", "a/b") is refused, since
#: the file-system store joins the id onto its directory.
_ARTIFACT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")


def is_artifact_id(value: object) -> bool:
    """Whether ``value`` can name a file inside the store (no separators, no dot names)."""
    return isinstance(value, str) and _ARTIFACT_ID.fullmatch(value) is not None


class RegularFileArtifactStore:
    """A file-system artifact store (Optuna's ``ArtifactStore`` protocol) of regular files only.

    The ids come from the database and the directory is often shared (a volume, an NFS mount):
    whoever can write either could name ``../x`` or plant a symlink (``<id> -> ~/.ssh/id_rsa``)
    that the report would embed and ``tuner export --model`` copy out, or a FIFO that hangs the
    reader. Each is an :class:`ArtifactDirError` line instead. It lays files out as Optuna's
    ``FileSystemArtifactStore`` does (one file per id in one directory), so either opens the
    other's directory, but implements the protocol itself rather than overriding that class's
    private methods.
    """

    def __init__(self, base_path: str | Path) -> None:
        self.base_path = Path(base_path)

    def path_of(self, artifact_id: str) -> Path:
        """The file for ``artifact_id``; refuses anything that is not a plain id."""
        if not is_artifact_id(artifact_id):
            raise ArtifactDirError(f"{short_repr(artifact_id)} is not an artifact id (expected a UUID)")
        return self.base_path / artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        path = self.path_of(artifact_id)
        try:  # O_NONBLOCK: a FIFO must not wait for a writer before it is refused
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ArtifactNotFound("not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArtifactDirError(
                    f"artifact {artifact_id} in {self.base_path} is a symbolic link; refusing to follow it"
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArtifactDirError(f"artifact {artifact_id} in {self.base_path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        # A new id each upload: O_EXCL refuses whatever was planted under it, O_NOFOLLOW a link.
        fd = os.open(self.path_of(artifact_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(content_body, handle)

    def remove(self, artifact_id: str) -> None:
        try:  # removes a planted link itself, never what it points at
            os.remove(self.path_of(artifact_id))
        except FileNotFoundError:
            raise ArtifactNotFound("not found") from None


__all__ = ["ArtifactDirError", "RegularFileArtifactStore", "is_artifact_id", "open_artifact_store"]
