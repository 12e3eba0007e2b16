"""Load the challenge ``.npz`` as clean training data (:class:`MarsData`) and fingerprint it.

numpy only: the coordinator imports this module (``fingerprint_npz``) and must not pay for
TensorFlow. The format is :mod:`contract.data_format`, the file's checks :mod:`contract.npz_file`
(every problem one :class:`~contract.data_format.DataError` naming the file), the removed
artefact :mod:`contract.aliens`, subsets and splits :mod:`contract.splitting`.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
from pathlib import Path

import numpy as np

from contract.aliens import alien_mask_flags
from contract.data_format import NUM_CLASSES, DataError, normalise
from contract.npz_file import read_checked
from contract.splitting import subset_indices

_FINGERPRINT_VERSION = b"mars-data-fingerprint-v1\n"


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
    # share an id are split to the same side (see :func:`contract.splitting.split`).
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
    by more than :data:`contract.aliens.ALIEN_MIN_REPEATS` images -> fingerprint the cleaned
    set -> (optionally) keep a seeded random subset of ``max_images`` images -> normalise images
    to float32 [0, 1].

    The fingerprint is taken before subsetting: it identifies the data set (the file's cleaned
    training images and masks, whatever ``max_images`` and ``seed`` are), not the subset. It does
    depend on ``remove_aliens`` (different training data) and ignores ``test_set``.

    The subset is stratified on "contains big rock" like :func:`contract.splitting.split`, so a
    small subset of a file with big-rock images keeps at least one of them (when ``max_images``
    >= 2).

    ``load_test=False`` skips ``test_set`` (the real one is ~650 MB as float64, and training and
    fingerprinting do not need it); ``test_images`` is then None.
    """
    path = Path(path)
    if max_images is not None and (isinstance(max_images, bool) or max_images < 1):
        raise DataError(f"max_images must be >= 1 or None, got {max_images!r}")
    images8, masks8, groups, test_images = read_checked(path, load_test=load_test)
    aliens_removed = 0
    if remove_aliens:
        images8, masks8, groups, aliens_removed = _without_aliens(images8, masks8, groups, path)

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
        what = (
            "every label is background (0)"
            if labelled == 0
            else (f"only {labelled} of {n} images have labelled (class 1-4) pixels")
        )
        raise DataError(
            f"{what}: the training split would have nothing to learn "
            f"(needs more than {n_val} labelled images with validation_fraction {validation_fraction})"
        )


def fingerprint_npz(path: str | Path, *, remove_aliens: bool = True) -> str:
    """The data-set fingerprint of a challenge file (aliens removed, as training uses it)."""
    return load_npz(path, load_test=False, remove_aliens=remove_aliens).fingerprint


def class_pixel_shares(masks: np.ndarray) -> np.ndarray:
    """Share of pixels per class 0..4, float64 (5,), summing to 1."""
    masks = np.asarray(masks)
    if masks.size == 0:
        raise DataError("cannot compute class shares of an empty mask array")
    counts = np.array([np.count_nonzero(masks == c) for c in range(NUM_CLASSES)])
    if counts.sum() != masks.size:
        raise DataError(f"mask values must be whole numbers 0..{NUM_CLASSES - 1}")
    return counts / masks.size


def _without_aliens(
    images8: np.ndarray, masks8: np.ndarray, groups: np.ndarray | None, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """The images, masks and groups without the aliens (:mod:`contract.aliens`), and their count."""
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
    return images8, masks8, groups, aliens_removed


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
