"""Read and write one array of an ``.npz`` a slice at a time.

``np.load`` and ``np.savez`` hold whole arrays: the challenge's ``test_set`` is 650 MB as float64,
and the probabilities of 100,000 predicted images are 8 GB as float16. Prediction reads its
input and writes its probabilities in slices along the first axis instead, so its memory does
not grow with the number of images. Both sides speak the ``.npy`` format inside the zip, so the
files are ordinary ``.npz`` files for ``np.load``.

numpy only (the coordinator's layer).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import math
from pathlib import Path
from typing import IO, Any
import zipfile
import zlib

import numpy as np

from contract.data_format import DataError
from contract.errors import first_line
from contract.npz_file import MAX_ARRAY_BYTES, open_npz


@dataclasses.dataclass
class ArrayReader:
    """One array of an open ``.npz``: its shape and dtype, and its rows in slices."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    _member: IO[bytes]
    _fortran: bool
    _npz: Any

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def slices(self, rows: int) -> Iterator[np.ndarray]:
        """Consecutive slices of up to ``rows`` rows (the last may be shorter), in file order."""
        if self._fortran:  # column-major data has no contiguous rows: read it whole (rare)
            whole = self._npz[self.key]
            for start in range(0, len(whole), rows):
                yield whole[start : start + rows]
            return
        row_items = math.prod(self.shape[1:])
        row_bytes = row_items * self.dtype.itemsize
        for start in range(0, len(self), rows):
            n = min(rows, len(self) - start)
            try:
                raw = self._member.read(n * row_bytes)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                reason = first_line(exc, limit=200)
                raise DataError(f"{self.path}: cannot read '{self.key}' (corrupt file?): {reason}") from None
            if len(raw) != n * row_bytes:
                raise DataError(f"{self.path}: '{self.key}' ends early (truncated file?)")
            yield np.frombuffer(raw, dtype=self.dtype).reshape((n, *self.shape[1:]))


@contextlib.contextmanager
def open_array(path: str | Path, key: str) -> Iterator[ArrayReader]:
    """Open ``key`` of the ``.npz`` at ``path`` for :meth:`ArrayReader.slices`.

    Raises:
        DataError: no such file, not an ``.npz``, no ``key`` in it (the message lists the keys
            found), Python objects instead of numbers, or a header that declares more data
            than the file holds.
    """
    path = Path(path)
    with open_npz(path) as npz:
        if key not in npz.files:
            found = ", ".join(sorted(npz.files)) or "none"
            raise DataError(f"{path}: no '{key}' in the file (keys found: {found})")
        name = f"{key}.npy" if f"{key}.npy" in npz.zip.namelist() else key
        try:
            info = npz.zip.getinfo(name)
            member = npz.zip.open(info)
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(member, max_header_size=10_000)
            stored = info.file_size - member.tell()
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path}: cannot read '{key}' (corrupt file?): {first_line(exc, limit=200)}") from None
        with member:
            if dtype.hasobject:
                raise DataError(f"{path}: '{key}' holds Python objects; expected a numeric array")
            if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
                raise DataError(f"{path}: '{key}' must hold real numbers, found dtype {dtype}")
            declared = math.prod(int(d) for d in shape) * dtype.itemsize
            if declared > stored:
                raise DataError(
                    f"{path}: '{key}' declares shape {tuple(shape)} but the file holds "
                    f"less data than that (corrupt or hostile header)"
                )
            if fortran and declared > MAX_ARRAY_BYTES:
                raise DataError(f"{path}: '{key}' is stored column-major and too large to read whole")
            yield ArrayReader(path, key, tuple(int(d) for d in shape), dtype, member, bool(fortran), npz)


class NpzWriter:
    """Write arrays into a new ``.npz`` (uncompressed, as ``np.savez``), one member at a time.

    :meth:`array` writes a whole array; :meth:`stream` opens a member of a known shape and takes
    its rows in slices. Only one member is open at once (a zip is written front to back).
    The caller makes the file atomic (``contract.atomic.replacing``).
    """

    def __init__(self, path: str | Path) -> None:
        self._zip = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def array(self, key: str, array: np.ndarray) -> None:
        with self._zip.open(f"{key}.npy", mode="w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)

    @contextlib.contextmanager
    def stream(self, key: str, shape: tuple[int, ...], dtype: Any) -> Iterator[_RowSink]:
        """A sink for ``shape[0]`` rows of ``dtype``; closing it with rows missing is an error."""
        dtype = np.dtype(dtype)
        with self._zip.open(f"{key}.npy", mode="w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(member, header)
            sink = _RowSink(member, shape, dtype)
            yield sink
            if sink.rows != shape[0]:
                raise ValueError(f"'{key}': {sink.rows} rows written, {shape[0]} declared")


class _RowSink:
    def __init__(self, member: IO[bytes], shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._member, self._row_shape, self._dtype = member, tuple(shape[1:]), dtype
        self.rows = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self._dtype)
        if rows.shape[1:] != self._row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]}, expected {self._row_shape}")
        self._member.write(rows.data.cast("B"))
        self.rows += len(rows)
