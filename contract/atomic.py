"""Write files so that readers see the old file or the new one, never half of one.

Data files, saved models and exported configs are all written to a temporary name in the target's
directory (the same filesystem, so ``os.replace`` is atomic) and renamed into place once
complete. A crash or an error leaves no temporary file and the previous file untouched.

Only a regular file (or nothing) at the path is replaced. Anything else is refused: replacing a
device node would, as root, turn ``-o /dev/null`` into a regular file; replacing a FIFO or
socket breaks whoever uses it. Symbolic links are refused too rather than written through:
``os.replace`` would swap the link itself for a file, and following it would let a link planted
in a shared directory redirect the write anywhere. Name the link's target instead.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import errno
import os
from pathlib import Path
import secrets
import stat

#: Longest file name (bytes) on the filesystems we write to (ext4, xfs, tmpfs, overlayfs).
NAME_MAX = 255


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it replaces ``path``.

    The temporary path does not exist yet: the caller creates it (``np.savez``, ``model.save``
    and ``download_artifact`` all insist on creating their file themselves), so it gets the
    usual umask permissions. ``suffix`` keeps writers that choose the format by extension happy
    (``.keras``, ``.npz``).
    """
    path = Path(path)
    _refuse_non_regular(path)
    ancestor = _existing_ancestor(path)
    if ancestor is not None and not ancestor.is_dir():  # mkdir would only say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{ancestor} is a file, not a directory", str(ancestor))
    path.parent.mkdir(parents=True, exist_ok=True)
    tail = f".{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"
    # A name that just fits must still get a temporary name that fits: shorten the copy of it.
    stem = path.name.encode()[: NAME_MAX - 1 - len(tail.encode())].decode(errors="ignore")
    tmp = path.with_name(f".{stem}{tail}")
    try:
        yield tmp
        _refuse_non_regular(path)  # again: the writer may have run for an hour
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def writable_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` could not be written by :func:`replacing`, or ``None`` if it looks fine.

    Checked before long work (training) so that a typo in an output path fails in a second,
    not after an hour with the result lost.
    """
    path = Path(path)
    kind = _non_regular_kind(path)
    if kind is not None:
        return f"{path} is {kind}, not a regular file; refusing to replace it"
    if len(path.name.encode()) > NAME_MAX:
        return f"the file name is {len(path.name.encode())} bytes long; at most {NAME_MAX} fit"
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


class NotRegularFileError(OSError):
    """The output path holds something other than a regular file (see the module docstring)."""


def _non_regular_kind(path: Path) -> str | None:
    """What is at ``path`` if it is neither absent nor a regular file ("a directory", ...)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable parent and the like: the write itself reports it
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"


def _refuse_non_regular(path: Path) -> None:
    kind = _non_regular_kind(path)
    if kind is not None:
        raise NotRegularFileError(errno.EEXIST, f"it is {kind}, not a regular file; refusing to replace it", str(path))
