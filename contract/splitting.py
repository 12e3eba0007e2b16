"""Seeded train/validation splits and subsets, stratified on big rock, whole groups together.

Both sides of a split (and a subset) keep the share of images with big rock, the rare class
that the score weighs as much as the others; with source-photo ``groups`` no photo is half
trained on and half validated. Split the clean images first and augment only the training side
afterwards. numpy only.
"""

from __future__ import annotations

import numpy as np

from contract.data_format import BIG_ROCK, DataError


def has_big_rock(masks: np.ndarray) -> np.ndarray:
    """Boolean (N,): True for images with at least one big-rock (class 4) pixel."""
    masks = np.asarray(masks)
    return (masks.reshape(masks.shape[0], -1) == BIG_ROCK).any(axis=1)


def subset_indices(masks: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """The seeded subset :func:`contract.data.load_npz` keeps for ``max_images``: sorted int64 indices.

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


def _check_groups(groups: np.ndarray, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise DataError(f"groups must have shape ({n},) like the masks, got {groups.shape}")
    if len(np.unique(groups)) < 2:
        raise DataError("need at least 2 groups to split into train and validation by group")
    return groups


def _grouped_split(rock: np.ndarray, groups: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
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
