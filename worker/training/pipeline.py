"""``tf.data`` input pipelines and flip test-time augmentation (imports TensorFlow).

Datasets yield ``(x, y)`` batches with ``x`` float32 (B, 64, 128, 1) in [0, 1] and ``y`` **int32**
(B, 64, 128) class indices 0..4 (integer labels; the loss and metric helpers one-hot as needed).

Flip augmentation applies to the training split only. With ``augment_flips`` one epoch is every
training image four times: original, horizontal flip (width axis), vertical flip (height axis)
and both, as the seed did; the flips are made lazily per element from the one in-memory copy of
the images (no 4x copy). Element ``k`` of an epoch (before shuffling) is image ``k % N`` with flip
``k // N``: 0 none, 1 horizontal, 2 vertical, 3 both. Datasets are finite: one iteration is one
epoch (no ``repeat``); a training dataset reshuffles on every iteration, deterministically from
``seed``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from worker.training.batches import N_FLIPS, flip_tta_predict

__all__ = ["N_FLIPS", "flip_tta_predict", "make_eval_dataset", "make_train_dataset", "steps_per_epoch"]


def steps_per_epoch(n: int, batch_size: int, augment_flips: bool) -> int:
    """Batches in one epoch of :func:`make_train_dataset` (the last batch may be smaller)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    return math.ceil(n * (N_FLIPS if augment_flips else 1) / batch_size)


def make_train_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    augment_flips: bool = True,
    shuffle: bool = True,
) -> tf.data.Dataset:
    """Training batches: (optionally) the four flips of every image, shuffled, batched.

    ``images`` (N, 64, 128) float32 in [0, 1], ``masks`` (N, 64, 128) integer 0..4. The shuffle
    is a full one over all ``N`` (or ``4N``) elements, seeded with ``seed``; ``shuffle=False``
    keeps the order described in the module docstring (for tests and debugging).
    """
    x, y = _as_tensors(images, masks)
    n = int(x.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = n * (N_FLIPS if augment_flips else 1)

    ds = tf.data.Dataset.range(total)
    if shuffle:
        ds = ds.shuffle(total, seed=seed, reshuffle_each_iteration=True)

    def element(k):
        index = k % n
        flip = k // n  # always 0 without augmentation
        image, mask = tf.gather(x, index), tf.gather(y, index)
        horizontal = tf.equal(flip % 2, 1)
        vertical = tf.greater_equal(flip, 2)
        image = tf.cond(horizontal, lambda: tf.reverse(image, axis=[1]), lambda: image)
        mask = tf.cond(horizontal, lambda: tf.reverse(mask, axis=[1]), lambda: mask)
        image = tf.cond(vertical, lambda: tf.reverse(image, axis=[0]), lambda: image)
        mask = tf.cond(vertical, lambda: tf.reverse(mask, axis=[0]), lambda: mask)
        return image, mask

    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, batch_size)


def make_eval_dataset(images: np.ndarray, masks: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
    """Validation/evaluation batches in the given order: no augmentation, no shuffle.

    With ``masks=None`` (e.g. the unlabelled test set) it yields ``x`` alone.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = _as_tensors(images, masks)
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    return _finish(ds, batch_size)


# --------------------------------------------------------------------------- internals


def _as_tensors(images: np.ndarray, masks: np.ndarray | None):
    """(N, 64, 128) arrays -> x float32 (N, 64, 128, 1), y uint8 (N, 64, 128) or None.

    Labels stay uint8 in memory (4x smaller) and become int32 per batch.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, 64, 128), got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    x = tf.constant(images[..., None].astype(np.float32, copy=False))
    if masks is None:
        return x, None
    masks = np.asarray(masks)
    if masks.shape != images.shape:
        raise ValueError(f"masks shape {masks.shape} does not match images shape {images.shape}")
    return x, tf.constant(masks.astype(np.uint8, copy=False))


def _to_int32_labels(x, y):
    return x, tf.cast(y, tf.int32)


def _finish(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    ds = ds.batch(batch_size)
    if isinstance(ds.element_spec, tuple):
        ds = ds.map(_to_int32_labels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
