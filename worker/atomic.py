"""Write files so that readers see the old file or the new one, never half of one.

Data files, saved models and exported configs are all written to a temporary name in the target's
directory (the same filesystem, so ``os.replace`` is atomic) and renamed into place once
complete. A crash or an error leaves no temporary file and the previous file untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
