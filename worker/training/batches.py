"""Numpy data path (no TensorFlow): the flipped training set and flip test-time augmentation.

On the JAX backend the worker feeds ``model.fit`` numpy arrays, as a plain ``fit(numpy)`` does:
the training split is flipped once per worker process (original, horizontal, vertical, both;
element ``k`` is image ``k % N`` with flip ``k // N``, the order of
:func:`worker.training.pipeline.make_train_dataset`) and Keras shuffles it every epoch. The
seed's full set x 4 is about 270 MB as float32, which a GPU host holds easily.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

N_FLIPS = 4  # none, horizontal, vertical, both
FLIP_AXES = ((), (2,), (1,), (1, 2))  # on (N, H, W[, C]) arrays


def flipped(images: np.ndarray, masks: np.ndarray, augment_flips: bool) -> tuple[np.ndarray, np.ndarray]:
    """``x`` float32 (kN, 64, 128, 1) and ``y`` uint8 (kN, 64, 128); k = 4 with flips, else 1."""
    x = np.asarray(images, dtype=np.float32)[..., None]
    y = np.asarray(masks, dtype=np.uint8)
    if not augment_flips:
        return x, y
    xs = [np.flip(x, axis=a) if a else x for a in FLIP_AXES]
    ys = [np.flip(y, axis=a) if a else y for a in FLIP_AXES]
    return np.ascontiguousarray(np.concatenate(xs)), np.ascontiguousarray(np.concatenate(ys))


def flip_tta_predict(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax probabilities averaged over the four flips -> float32 (N, 64, 128, C).

    For each flip: flip the input, predict, flip the prediction back, then average. ``model``
    must output per-pixel probabilities (softmax), e.g. the seed model; ``images`` are
    (N, 64, 128) or (N, 64, 128, 1) float32 in [0, 1].
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"images must have shape (N, 64, 128[, 1]), got {np.shape(images)}")
    return flip_tta(lambda batch: model.predict(batch, batch_size=batch_size, verbose=0), x)


def flip_tta(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``predict`` averaged over the four flips of ``x`` (N, H, W, 1) -> float32 (N, H, W, C).

    For each flip (in :data:`FLIP_AXES` order): flip the input, predict, flip the prediction
    back; then the float32 sum over the flips divided by 4. Trials are scored through this
    (:func:`flip_tta_predict`) and ``worker predict`` calls it per batch, so a model predicts
    with TTA exactly as its trial was scored.
    """
    total = None
    for axes in FLIP_AXES:  # none, horizontal, vertical, both (NHWC axes)
        flipped_x = np.ascontiguousarray(np.flip(x, axis=axes)) if axes else x
        probs = np.asarray(predict(flipped_x), np.float32)
        probs = np.flip(probs, axis=axes) if axes else probs
        total = probs if total is None else total + probs
    return total / np.float32(N_FLIPS)
