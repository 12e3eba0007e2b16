"""Load, validate and clean the challenge ``.npz``; split it; fingerprint it.

numpy only: the coordinator imports this module (``fingerprint_npz``) and must not pay for
TensorFlow.

The challenge file holds ``training_set`` with shape (N, 2, 64, 128): ``[:, 0]`` is a grayscale
image with whole-number values 0..255 and ``[:, 1]`` its label mask with values in {0..4}
(0 background/unlabelled, 1 soil, 2 bedrock, 3 sand, 4 big rock). An optional ``test_set``
(M, 64, 128) holds unlabelled images.

Every problem with a file is reported as one :class:`DataError` with a one-line message that
names the file and the problem. The checks run in a fixed order (file, key, dtype, shape, empty,
NaN/inf, labels, pixels, then ``test_set``), so a file with several problems reports the first.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import math
from pathlib import Path
import zipfile
import zlib

import numpy as np

from contract.errors import TunerError, first_line

IMAGE_HEIGHT = 64
IMAGE_WIDTH = 128
IMAGE_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH)
NUM_CLASSES = 5
CLASS_NAMES = ("background", "soil", "bedrock", "sand", "big_rock")
BIG_ROCK = 4
# A *structured* label mask (two or more terrain classes) shared by MORE than this many images is
# the "alien" artefact (the challenge file has one such mask shared by 110 unrelated images). A
# structured mask cannot repeat by chance across different photos; a uniform one (one terrain
# class, possibly inside an unlabelled border) does: the real AI4Mars tiles hold 9 such masks
# shared by 6-37 tiles each, and they are genuine data.
ALIEN_MIN_REPEATS = 5
# Terrain classes (1..4) a mask must contain to count as structured.
ALIEN_MIN_CLASSES = 2

#: Largest array (as stored, uncompressed) a data file may hold: the real training_set is 343 MB
#: as float64; this leaves room for a 20x larger set, and refuses a decompression bomb.
MAX_ARRAY_BYTES = 8 * 1024**3

_FINGERPRINT_VERSION = b"mars-data-fingerprint-v1\n"


class DataError(TunerError, ValueError):
    """A data file or array that cannot be used; the message is one line for the user."""


@dataclass(frozen=True, eq=False)
class MarsData:
    """The cleaned training data (and the test images, if the file has them).

    ``eq=False``: comparing numpy arrays element-wise has no single truth value; compare
    ``fingerprint`` instead.
    """

    images: np.ndarray  # (N, 64, 128) float32 in [0, 1]
    masks: np.ndarray  # (N, 64, 128) uint8 in 0..4
    test_images: np.ndarray | None  # (M, 64, 128) float32 in [0, 1], or None if absent/not loaded
    aliens_removed: int  # images dropped because they carry the repeated "alien" mask
    fingerprint: str  # sha256 hex of the cleaned training data BEFORE ``max_images`` subsetting
    # (N,) int64 source-photo id per image (the file's optional ``groups``), or None: images that
    # share an id are split to the same side (see :func:`split`).
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_npz(
    path: str | Path,
    *,
    remove_aliens: bool = True,
    max_images: int | None = None,
    seed: int = 0,
    load_test: bool = True,
) -> MarsData:
    """Read, validate and clean a challenge ``.npz`` file.

    Steps: validate ``training_set`` -> (optionally) drop every image whose label mask is shared
    by more than :data:`ALIEN_MIN_REPEATS` images -> fingerprint the cleaned set -> (optionally)
    keep a seeded random subset of ``max_images`` images -> normalise images to float32 [0, 1].

    The fingerprint is taken before subsetting: it identifies the data set (the file's cleaned
    training images and masks, whatever ``max_images`` and ``seed`` are), not the subset. It does
    depend on ``remove_aliens`` (different training data) and ignores ``test_set``.

    The subset is stratified on "contains big rock" like :func:`split`, so a small subset of a
    file with big-rock images keeps at least one of them (when ``max_images`` >= 2).

    ``load_test=False`` skips ``test_set`` (the real one is ~650 MB as float64, and training and
    fingerprinting do not need it); ``test_images`` is then None.
    """
    path = Path(path)
    if max_images is not None and (isinstance(max_images, bool) or max_images < 1):
        raise DataError(f"max_images must be >= 1 or None, got {max_images!r}")
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

    aliens_removed = 0
    if remove_aliens:
        keep = ~alien_mask_flags(masks8)
        aliens_removed = int(np.count_nonzero(~keep))
        if aliens_removed:
            if not keep.any():
                raise DataError(
                    f"{path}: no images left after removing {aliens_removed} 'alien' images "
                    f"(all masks are one repeated mask)"
                )
            images8, masks8 = images8[keep], masks8[keep]
            groups = None if groups is None else groups[keep]

    fingerprint = _fingerprint(images8, masks8, groups)

    if max_images is not None and max_images < len(masks8):
        chosen = subset_indices(masks8, max_images, seed)
        images8, masks8 = images8[chosen], masks8[chosen]
        groups = None if groups is None else groups[chosen]

    return MarsData(
        images=normalise(images8),
        masks=np.ascontiguousarray(masks8),
        test_images=test_images,
        aliens_removed=aliens_removed,
        fingerprint=fingerprint,
        groups=groups,
    )


#: Fewest images a run can split into training and validation (one each).
MIN_TRAINABLE_IMAGES = 2


def check_trainable(masks: np.ndarray, *, validation_fraction: float = 0.2) -> None:
    """Refuse data no training run can learn from, before a study or a run is started on it.

    Training needs an image to train on and one to validate on, and a labelled (class 1-4)
    pixel on the training side: class weights are inverse class frequencies, so all-background
    training masks give an all-zero loss. Images with foreground in more than the validation
    split's size guarantee that, whichever images the seeded split picks. The message has no
    path: callers prefix the option and file.

    Raises:
        DataError: too few images or too few with labelled pixels.
    """
    masks = np.asarray(masks)
    n = int(masks.shape[0])
    if n < MIN_TRAINABLE_IMAGES:
        raise DataError(
            f"{n} usable image(s) (after removing aliens); training needs at least "
            f"{MIN_TRAINABLE_IMAGES}: one to train on, one to validate on"
        )
    labelled = int(np.count_nonzero(masks.reshape(n, -1).max(axis=1) > 0))
    n_val = min(max(int(round(validation_fraction * n)), 1), n - 1)
    if labelled <= n_val:
        what = "every label is background (0)" if labelled == 0 else (
            f"only {labelled} of {n} images have labelled (class 1-4) pixels"
        )
        raise DataError(
            f"{what}: the training split would have nothing to learn "
            f"(needs more than {n_val} labelled images with validation_fraction {validation_fraction})"
        )


def fingerprint_npz(path: str | Path, *, remove_aliens: bool = True) -> str:
    """The data-set fingerprint of a challenge file (aliens removed, as training uses it)."""
    return load_npz(path, load_test=False, remove_aliens=remove_aliens).fingerprint


def alien_mask_flags(masks: np.ndarray) -> np.ndarray:
    """Boolean (N,): True for images carrying the challenge's repeated-mask artefact.

    An image is an alien when its exact mask is shared by more than :data:`ALIEN_MIN_REPEATS`
    images AND that mask is structured (:func:`is_structured_mask`). Uniform masks repeat in
    genuine data (every all-soil tile inside the same unlabelled border has the same mask), so
    repetition alone would delete real images. Masks are grouped by their exact bytes with one
    vectorised ``np.unique`` over a void view (a collision-free equivalent of hashing each mask).
    """
    masks = np.ascontiguousarray(masks, dtype=np.uint8)
    n = masks.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    rows = masks.reshape(n, -1)
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    repeated = counts > ALIEN_MIN_REPEATS
    for k in np.flatnonzero(repeated):
        repeated[k] = is_structured_mask(masks[first[k]])
    return repeated[inverse.ravel()]


def is_structured_mask(mask: np.ndarray) -> bool:
    """True when a mask holds at least :data:`ALIEN_MIN_CLASSES` terrain classes (1..4).

    Such a mask traces class boundaries of one particular scene, so the same mask on several
    unrelated images is an artefact; a one-class mask is what any uniform tile looks like.
    """
    present = np.unique(np.asarray(mask))
    return int(np.count_nonzero(present > 0)) >= ALIEN_MIN_CLASSES


def has_big_rock(masks: np.ndarray) -> np.ndarray:
    """Boolean (N,): True for images with at least one big-rock (class 4) pixel."""
    masks = np.asarray(masks)
    return (masks.reshape(masks.shape[0], -1) == BIG_ROCK).any(axis=1)


def subset_indices(masks: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """The seeded subset ``load_npz(max_images=..., seed=...)`` keeps: sorted int64 indices.

    Stratified on "contains big rock" (see :func:`split`); everything if ``max_images >= N``.
    """
    n = len(masks)
    if max_images >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(_stratified_choice(has_big_rock(masks), max_images, rng))


def split(
    masks: np.ndarray,
    validation_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split -> (train_indices, validation_indices), both sorted int64.

    Disjoint and together covering ``range(N)``. The validation side has ``round(fraction * N)``
    images (at least 1, at most N - 1). Stratified on "contains big rock": the big-rock images
    are split in the same proportion, and when there are at least 2 of them both sides get at
    least one. Split the clean images first and augment only the training side afterwards.

    With ``groups`` (one id per image, e.g. the source photo of two tiles) whole groups go to
    one side, so no photo is half trained on and half validated; the sizes and the big-rock
    stratification then hold as far as the group sizes allow (see :func:`_grouped_split`).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise DataError(f"masks must have shape (N, 64, 128), got {masks.shape}")
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    n = masks.shape[0]
    if n < 2:
        raise DataError(f"need at least 2 images to split into train and validation, got {n}")
    n_val = min(max(int(round(validation_fraction * n)), 1), n - 1)
    rng = np.random.default_rng(seed)
    if groups is not None:
        validation = _grouped_split(has_big_rock(masks), _check_groups(groups, n), n_val, rng)
    else:
        validation = np.sort(_stratified_choice(has_big_rock(masks), n_val, rng))
    train = np.setdiff1d(np.arange(n, dtype=np.int64), validation, assume_unique=True)
    return train, validation


def class_pixel_shares(masks: np.ndarray) -> np.ndarray:
    """Share of pixels per class 0..4, float64 (5,), summing to 1."""
    masks = np.asarray(masks)
    if masks.size == 0:
        raise DataError("cannot compute class shares of an empty mask array")
    counts = np.array([np.count_nonzero(masks == c) for c in range(NUM_CLASSES)])
    if counts.sum() != masks.size:
        raise DataError(f"mask values must be whole numbers 0..{NUM_CLASSES - 1}")
    return counts / masks.size


# --------------------------------------------------------------------------- internals


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
            raise DataError(
                f"{path}: '{key}' holds Python objects; expected a numeric array"
            ) from None
        raise DataError(f"{path}: cannot read '{key}': {first_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot read '{key}' (corrupt file?): {first_line(exc)}"
        ) from None


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
                np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0
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
            f"{path}: '{key}' is {_bytes(declared)} uncompressed; at most "
            f"{_bytes(MAX_ARRAY_BYTES)} is read"
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
    if np.issubdtype(array.dtype, np.floating) and not (
        np.isfinite(array.min()) and np.isfinite(array.max())
    ):
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
            f"{path}: {what} values must be in 0..{top}, found {_num(lo)}..{_num(hi)} "
            f"(first bad {item} {at})"
        )
    if not whole:
        return values
    values8 = values.astype(np.uint8)
    if not np.array_equal(values8, values):
        at = _first_bad(values8 != values)
        raise DataError(
            f"{path}: {what} values must be whole numbers 0..{top} "
            f"(first non-integer in {item} {at}){hint}"
        )
    return values8


def _validate_training_set(train: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check ``training_set`` and return (images uint8 (N,64,128), masks uint8 (N,64,128))."""
    _check_numeric(train, "training_set", path)
    expected = f"(N, 2, {IMAGE_HEIGHT}, {IMAGE_WIDTH})"
    if train.ndim != 4 or train.shape[1:] != (2, *IMAGE_SHAPE):
        raise DataError(
            f"{path}: 'training_set' has shape {train.shape}, expected {expected} "
            f"(image and mask per sample)"
        )
    if train.shape[0] == 0:
        raise DataError(f"{path}: 'training_set' is empty (shape {train.shape})")
    _check_finite(train, "training_set", path)

    masks8 = _check_values(train[:, 1], NUM_CLASSES - 1, path, "label", "mask", whole=True)
    images8 = _check_values(
        train[:, 0], 255, path, "'training_set' pixel", "image", whole=True,
        hint="; images already scaled to [0, 1]?",
    )
    return images8, masks8


def _validate_test_set(test: np.ndarray, path: Path) -> np.ndarray:
    """Check ``test_set`` (M, 64, 128) with pixels 0..255 and return it as float32 [0, 1]."""
    _check_numeric(test, "test_set", path)
    if test.ndim != 3 or test.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{path}: 'test_set' has shape {test.shape}, "
            f"expected (M, {IMAGE_HEIGHT}, {IMAGE_WIDTH})"
        )
    if test.shape[0] == 0:
        return np.zeros((0, *IMAGE_SHAPE), dtype=np.float32)
    _check_finite(test, "test_set", path)
    # Test images need not be whole numbers: nothing hashes them.
    return normalise(_check_values(test, 255, path, "'test_set' pixel", "image", whole=False))


def normalise(images: np.ndarray) -> np.ndarray:
    """Pixels 0..255 -> float32 in [0, 1]: the one scaling training and ``worker predict`` share."""
    out = images.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _fingerprint(images8: np.ndarray, masks8: np.ndarray, groups: np.ndarray | None = None) -> str:
    """sha256 of images and masks, plus the groups when the file has them (they steer the split).

    A file without ``groups`` hashes exactly as before groups existed.
    """
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for name, array in (("images", images8), ("masks", masks8)):
        array = np.ascontiguousarray(array, dtype=np.uint8)
        digest.update(f"{name}:{array.shape}\n".encode())
        digest.update(array.data.cast("B"))
    if groups is not None:
        array = np.ascontiguousarray(groups, dtype="<i8")
        digest.update(f"groups:{array.shape}\n".encode())
        digest.update(array.data.cast("B"))
    return digest.hexdigest()


def _validate_groups(npz, n: int, path: Path) -> np.ndarray | None:
    """The optional ``groups`` array as int64 (N,), or None when the file has none."""
    if "groups" not in npz.files:
        return None
    groups = _read_array(npz, "groups", path)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise DataError(
            f"{path}: 'groups' has shape {groups.shape}, expected ({n},) (one id per training image)"
        )
    if not np.issubdtype(groups.dtype, np.integer):
        raise DataError(f"{path}: 'groups' must hold integer ids, found dtype {groups.dtype}")
    return groups.astype(np.int64)


def _check_groups(groups: np.ndarray, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise DataError(f"groups must have shape ({n},) like the masks, got {groups.shape}")
    if len(np.unique(groups)) < 2:
        raise DataError("need at least 2 groups to split into train and validation by group")
    return groups


def _grouped_split(
    rock: np.ndarray, groups: np.ndarray, n_val: int, rng: np.random.Generator
) -> np.ndarray:
    """Validation indices made of whole groups, about ``n_val`` images, stratified on big rock.

    A group counts as "big rock" when any of its images has big rock. Big-rock groups are taken
    in random order until their images reach the validation side's share of big-rock images
    (at least one group, and at least one left for training, when there are 2 or more such
    groups); the other groups fill up to ``n_val`` images. Both sides stay non-empty.
    """
    ids, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.ravel()
    sizes = np.bincount(inverse, minlength=len(ids))
    group_rock = np.bincount(inverse, weights=rock.astype(np.float64), minlength=len(ids)) > 0
    pos = rng.permutation(np.flatnonzero(group_rock))
    neg = rng.permutation(np.flatnonzero(~group_rock))
    n = len(groups)
    pos_images = int(sizes[pos].sum())
    target_pos = int(round(n_val * pos_images / n))
    take_pos = _take_until(sizes[pos], target_pos)
    if len(pos) >= 2:
        take_pos = min(max(take_pos, 1), len(pos) - 1)
    taken = int(sizes[pos[:take_pos]].sum())
    take_neg = _take_until(sizes[neg], n_val - taken)
    chosen = np.concatenate([pos[:take_pos], neg[:take_neg]])
    if len(chosen) == 0:  # n_val smaller than any group: one group, the smallest side wins
        chosen = (neg if len(neg) else pos)[:1]
    if len(chosen) == len(ids):  # every group on one side: give the last one back to training
        chosen = chosen[:-1]
    val_groups = np.zeros(len(ids), dtype=bool)
    val_groups[chosen] = True
    return np.flatnonzero(val_groups[inverse]).astype(np.int64)


def _take_until(sizes: np.ndarray, target: int) -> int:
    """How many leading groups to take so their total size is closest to ``target``."""
    if target <= 0 or len(sizes) == 0:
        return 0
    cumulative = np.cumsum(sizes)
    k = int(np.searchsorted(cumulative, target))  # first prefix reaching the target
    if k >= len(sizes):
        return len(sizes)
    below = cumulative[k - 1] if k > 0 else 0
    return k + 1 if cumulative[k] - target <= target - below else k


def _stratified_choice(flags: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` of ``len(flags)`` indices at random, keeping the flagged share.

    When at least 2 indices are flagged and 0 < k < N, both the picked and the unpicked indices
    contain a flagged one. The total is exactly ``k``.
    """
    n = len(flags)
    pos = rng.permutation(np.flatnonzero(flags))
    neg = rng.permutation(np.flatnonzero(~flags))
    k_pos = int(round(k * len(pos) / n)) if n else 0
    if len(pos) >= 2 and 0 < k < n:
        k_pos = min(max(k_pos, 1), len(pos) - 1)
    # Feasible range: the unflagged side must supply the rest.
    k_pos = min(max(k_pos, k - len(neg), 0), k, len(pos))
    return np.concatenate([pos[:k_pos], neg[: k - k_pos]]).astype(np.int64)


def _num(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"

