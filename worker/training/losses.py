"""Focal loss and class weights computed from the training split.

Focal loss, per pixel with integer label ``y`` and softmax probabilities ``p``::

    loss_pixel = sum_c  w_c * [y == c] * (1 - p_c)**gamma * (-log p_c)
               = w_y * (1 - p_y)**gamma * (-log p_y)

averaged over **all** pixels of the batch, including background pixels whose weight is 0 (they
add 0 to the sum but still count in the denominator, as in the seed). ``gamma = 0`` is the
class-weighted cross-entropy.

Class weights (:func:`class_weights_from_masks`) are normalised so that the mean weight per
pixel of the training masks is 1, i.e. ``sum_c w_c * share_c = 1``. The seed used raw
``1e6 / pixel_count`` values, whose scale shrinks as the data set grows (doubling the images
halves every weight), which ties the loss scale, and through it the effective learning rate of
plain SGD and the meaning of Adam's epsilon, to the data size. After normalisation only the
*ratios* between classes are kept (they equal the seed's), and with ``gamma = 0`` a model that
predicts uniform probabilities has loss ``log(num_classes)`` whatever the data size or scheme.
On the seed's data these weights are about 20x the seed's (its mean weight per pixel was about
0.05); Adam(W)'s step size is nearly invariant to such a constant factor, so training behaves
as in the seed while loss values become comparable across data sizes and weighting schemes.

``focal_loss`` uses ``keras.ops`` only, so it runs inside ``model.fit`` (graph mode, XLA).
``focal_loss_numpy`` is the independent float64 reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops
import numpy as np

EPSILON = 1e-7
SCHEMES = ("inverse_frequency", "sqrt_inverse_frequency", "uniform")


def focal_loss(gamma: float, class_weights: Sequence[float]) -> FocalLoss:
    """The focal loss as a Keras-3 loss: ``loss(y_true, y_pred) -> scalar``.

    ``y_true``: integer class labels, shape (B, H, W) or (B, H, W, 1) (any numeric dtype; Keras
    hands labels to losses as float32). ``y_pred``: softmax probabilities (B, H, W, C) with
    ``C == len(class_weights)``; they are cast to float32 first (mixed precision) and clipped to
    ``[1e-7, 1 - 1e-7]`` so ``log`` and the gradient of ``(1 - p)**gamma`` stay finite.

    The result is the mean over **all** B*H*W pixels, background included: pixels of a class
    with weight 0 (background, by default) contribute 0 but still count in the denominator,
    matching the seed. Labels outside ``0..C-1`` one-hot to zeros and contribute 0 too.

    The returned object is a registered :class:`FocalLoss`, so a model compiled with it can be
    saved and loaded back with ``keras.saving.load_model`` (once this module is imported).
    """
    return FocalLoss(gamma=gamma, class_weights=class_weights)


@keras.saving.register_keras_serializable(package="mars_tuner")
class FocalLoss(keras.losses.Loss):
    """Class-weighted focal loss on integer labels; see :func:`focal_loss`.

    ``call`` returns the per-pixel loss (B, H, W); Keras' default ``sum_over_batch_size``
    reduction then divides the sum by the number of pixels, i.e. takes the mean over all of
    them. Pure ``keras.ops``: works eagerly, in ``model.fit`` and with ``jit_compile=True``.
    """

    def __init__(
        self,
        gamma: float = 0.5,
        class_weights: Sequence[float] = (1.0,) * 5,
        name: str = "focal_loss",
        *,
        params: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        gamma = float(gamma)
        if not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
        weights = np.asarray(class_weights, dtype=np.float64).reshape(-1)
        if weights.size == 0 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"class_weights must be finite and >= 0, got {list(class_weights)}")
        self.gamma = gamma
        self.class_weights = [float(w) for w in weights]
        # A worker.training.tunable.LossParams: gamma and weights read from variables, so one
        # traced train step serves every trial of an architecture (see worker.training.train).
        self.params = params

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if len(y_true.shape) == len(y_pred.shape):  # (B, H, W, 1) -> (B, H, W)
            y_true = ops.squeeze(y_true, axis=-1)
        labels = ops.cast(y_true, "int32")
        one_hot = ops.one_hot(labels, len(self.class_weights), dtype="float32")
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        if self.params is None:
            w = ops.convert_to_tensor(self.class_weights, dtype="float32")
            gamma = self.gamma
        else:
            w = ops.cast(self.params.class_weights, "float32")
            gamma = ops.cast(self.params.gamma, "float32")
        per_class = w * one_hot * ops.power(1.0 - p, gamma) * (-ops.log(p))
        return ops.sum(per_class, axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(gamma=self.gamma, class_weights=list(self.class_weights))
        return config


def focal_loss_numpy(y_true: np.ndarray, y_pred: np.ndarray, gamma: float, class_weights: Sequence[float]) -> float:
    """Reference implementation of :func:`focal_loss` in float64 numpy (same clipping)."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    y_true = np.asarray(y_true)
    if y_true.ndim == y_pred.ndim:
        y_true = y_true[..., 0]
    labels = y_true.astype(np.int64)
    weights = np.asarray(class_weights, dtype=np.float64)
    p = np.clip(y_pred, EPSILON, 1.0 - EPSILON)
    total = np.zeros(labels.shape, dtype=np.float64)
    for c, w_c in enumerate(weights):
        p_c = p[..., c]
        total += np.where(labels == c, w_c * (1.0 - p_c) ** gamma * -np.log(p_c), 0.0)
    return float(total.mean())


def class_weights_from_masks(
    masks: np.ndarray,
    *,
    scheme: str = "inverse_frequency",
    background_weight: bool = False,
    num_classes: int = 5,
) -> np.ndarray:
    """Per-class loss weights from label masks; call it on the **training split only**.

    Computing weights from validation (or all) masks leaks validation statistics into training;
    ``worker.training.train.train`` passes the training split's masks, before flip augmentation (flips do
    not change pixel counts, so the 4x flipped set gives the same normalised weights).

    Schemes, before normalisation, with ``n_c`` the pixel count of class ``c``:

    - ``"inverse_frequency"``: ``1e6 / n_c`` (the seed's formula);
    - ``"sqrt_inverse_frequency"``: ``1 / sqrt(n_c)`` (milder for the rare big-rock class);
    - ``"uniform"``: 1 for every class.

    Then:

    - background (class 0) gets weight 0 unless ``background_weight=True`` (class 0 is
      "unlabelled", and the competition's score ignores it);
    - a class with no pixels gets weight 0: there is nothing to learn from it, and ``1 / 0``
      would be inf;
    - the weights are scaled so that the mean weight per pixel is 1:
      ``sum_c w_c * n_c / N = 1`` with ``N`` all pixels, background included (see the module
      docstring for why the seed's absolute values are not kept).

    Returns a float64 array of ``num_classes`` weights. Raises ``ValueError`` for labels outside
    ``0..num_classes-1`` or if no pixel belongs to a class with non-zero weight.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    counts = _class_counts(masks, num_classes)
    present = counts > 0

    weights = np.zeros(num_classes, dtype=np.float64)
    if scheme == "inverse_frequency":
        weights[present] = 1e6 / counts[present]
    elif scheme == "sqrt_inverse_frequency":
        weights[present] = 1.0 / np.sqrt(counts[present])
    else:
        weights[present] = 1.0
    if not background_weight:
        weights[0] = 0.0

    mean_per_pixel = float(np.sum(weights * counts) / counts.sum())
    if mean_per_pixel <= 0:
        raise ValueError(
            "the masks contain no pixel of any weighted class (only background?): "
            "cannot train with all-zero loss weights"
        )
    return weights / mean_per_pixel


def _class_counts(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class, float64 (``num_classes``,); ``ValueError`` for no masks, labels that are
    not whole numbers or lie outside ``0..num_classes-1``."""
    masks = np.asarray(masks)
    if masks.size == 0:
        raise ValueError("cannot compute class weights from an empty set of masks")
    flat = masks.reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer):
        if not np.all(flat == np.round(flat)):
            raise ValueError("masks must hold integer class labels")
    labels = flat.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"mask labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes).astype(np.float64)
