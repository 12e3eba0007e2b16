"""Open the challenge ``.npz`` and check its arrays, each problem one line naming the file.

The checks run in a fixed order (file, key, dtype, shape, empty, NaN/inf, labels, pixels, then
``groups`` and ``test_set``), so a file with several problems reports the first. An array's
declared size is checked against the file before numpy allocates it (:data:`MAX_ARRAY_BYTES`).
numpy only; :mod:`contract.npz_stream` opens its files here too.
"""

from __future__ import annotations

import math
from pathlib import Path
import zipfile
import zlib

import numpy as np

from contract.data_format import IMAGE_HEIGHT, IMAGE_SHAPE, IMAGE_WIDTH, NUM_CLASSES, DataError, normalise
from contract.errors import first_line

#: Largest array (as stored, uncompressed) a data file may hold: the real training_set is 343 MB
#: as float64; this leaves room for a 20x larger set, and refuses a decompression bomb.
MAX_ARRAY_BYTES = 8 * 1024**3


def read_checked(path: Path, *, load_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The file's checked arrays: images uint8 (N, 64, 128), masks uint8 (N, 64, 128), groups
    int64 (N,) or None, and the test images float32 [0, 1] (None when absent or not asked for)."""
    with open_npz(path) as npz:
        if "training_set" not in npz.files:
            found = ", ".join(sorted(npz.files)) or "none"
            raise DataError(f"{path}: missing key 'training_set' (keys found: {found})")
        train = _read_array(npz, "training_set", path)
        images8, masks8 = _validate_training_set(train, path)
        del train
        groups = _validate_groups(npz, len(masks8), path)
        test_images = None
        if load_test and "test_set" in npz.files:
            test_images = _validate_test_set(_read_array(npz, "test_set", path), path)
    return images8, masks8, groups, test_images


def open_npz(path: Path):
    """``np.load`` of a challenge file, its failures as one-line ``DataError``s (no pickles)."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz (zip) file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open {path} as .npz: {first_line(exc, limit=200)}") from None
    return npz


def _read_array(npz, key: str, path: Path) -> np.ndarray:
    _check_declared_size(npz, key, path)
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: '{key}' holds Python objects; expected a numeric array") from None
        raise DataError(f"{path}: cannot read '{key}': {first_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read '{key}' (corrupt file?): {first_line(exc)}") from None


def _check_declared_size(npz, key: str, path: Path) -> None:
    """Refuse an array whose header declares more bytes than the file holds, before allocating.

    numpy allocates the declared shape first and reads afterwards, so a 100-byte file whose
    header says 1 PiB would end in MemoryError (or, below the machine's memory, in a huge
    allocation) instead of a one-line error.
    """
    name = f"{key}.npy" if f"{key}.npy" in npz.zip.namelist() else key
    try:
        info = npz.zip.getinfo(name)
        with npz.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member)
            stored = info.file_size - member.tell()
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read '{key}' (corrupt file?): {first_line(exc)[:200]}") from None
    if dtype.hasobject:
        return  # pickled objects: _read_array reports them
    declared = math.prod(int(d) for d in shape) * dtype.itemsize
    if declared > stored:
        raise DataError(
            f"{path}: '{key}' declares shape {tuple(shape)} ({_bytes(declared)}) "
            f"but the file holds {_bytes(max(stored, 0))} of it (corrupt or hostile header)"
        )
    if declared > MAX_ARRAY_BYTES:
        raise DataError(
            f"{path}: '{key}' is {_bytes(declared)} uncompressed; at most {_bytes(MAX_ARRAY_BYTES)} is read"
        )


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"


def _check_numeric(array: np.ndarray, key: str, path: Path) -> None:
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{path}: '{key}' must hold real numbers, found dtype {array.dtype}")


def _first_bad(bad: np.ndarray) -> int:
    """Index (along axis 0) of the first image with a True entry in ``bad``."""
    return int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))


def _check_finite(array: np.ndarray, key: str, path: Path) -> None:
    # min/max propagate NaN and expose inf without a full-size temporary array.
    if np.issubdtype(array.dtype, np.floating) and not (np.isfinite(array.min()) and np.isfinite(array.max())):
        at = _first_bad(~np.isfinite(array))
        raise DataError(f"{path}: '{key}' contains NaN or infinite values (first in image {at})")


def _check_values(
    values: np.ndarray, top: int, path: Path, what: str, item: str, *, whole: bool, hint: str = ""
) -> np.ndarray:
    """Require ``values`` in 0..top; with ``whole`` also whole numbers, returned as uint8.

    ``what`` names the values in the message ("label", "'test_set' pixel"), ``item`` the unit
    the first bad index counts ("mask", "image").
    """
    lo, hi = values.min(), values.max()
    if lo < 0 or hi > top:
        at = _first_bad((values < 0) | (values > top))
        raise DataError(
            f"{path}: {what} values must be in 0..{top}, found {_num(lo)}..{_num(hi)} (first bad {item} {at})"
        )
    if not whole:
        return values
    values8 = values.astype(np.uint8)
    if not np.array_equal(values8, values):
        at = _first_bad(values8 != values)
        raise DataError(
            f"{path}: {what} values must be whole numbers 0..{top} (first non-integer in {item} {at}){hint}"
        )
    return values8


def _validate_training_set(train: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check ``training_set`` and return (images uint8 (N,64,128), masks uint8 (N,64,128))."""
    _check_numeric(train, "training_set", path)
    expected = f"(N, 2, {IMAGE_HEIGHT}, {IMAGE_WIDTH})"
    if train.ndim != 4 or train.shape[1:] != (2, *IMAGE_SHAPE):
        raise DataError(
            f"{path}: 'training_set' has shape {train.shape}, expected {expected} (image and mask per sample)"
        )
    if train.shape[0] == 0:
        raise DataError(f"{path}: 'training_set' is empty (shape {train.shape})")
    _check_finite(train, "training_set", path)

    masks8 = _check_values(train[:, 1], NUM_CLASSES - 1, path, "label", "mask", whole=True)
    images8 = _check_values(
        train[:, 0],
        255,
        path,
        "'training_set' pixel",
        "image",
        whole=True,
        hint="; images already scaled to [0, 1]?",
    )
    return images8, masks8


def _validate_test_set(test: np.ndarray, path: Path) -> np.ndarray:
    """Check ``test_set`` (M, 64, 128) with pixels 0..255 and return it as float32 [0, 1]."""
    _check_numeric(test, "test_set", path)
    if test.ndim != 3 or test.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: 'test_set' has shape {test.shape}, expected (M, {IMAGE_HEIGHT}, {IMAGE_WIDTH})")
    if test.shape[0] == 0:
        return np.zeros((0, *IMAGE_SHAPE), dtype=np.float32)
    _check_finite(test, "test_set", path)
    # Test images need not be whole numbers: nothing hashes them.
    return normalise(_check_values(test, 255, path, "'test_set' pixel", "image", whole=False))


def _validate_groups(npz, n: int, path: Path) -> np.ndarray | None:
    """The optional ``groups`` array as int64 (N,), or None when the file has none."""
    if "groups" not in npz.files:
        return None
    groups = _read_array(npz, "groups", path)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise DataError(f"{path}: 'groups' has shape {groups.shape}, expected ({n},) (one id per training image)")
    if not np.issubdtype(groups.dtype, np.integer):
        raise DataError(f"{path}: 'groups' must hold integer ids, found dtype {groups.dtype}")
    return groups.astype(np.int64)


def _num(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"
