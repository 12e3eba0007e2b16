"""Mean IoU over classes 1-4 (the competition's score), in numpy and as a Keras metric.

Definition: for each class ``c`` in 1..4, over **all** pixels of the evaluated set at once
(counts are accumulated over the whole set, not averaged per image or per batch)::

    IoU_c = |y == c  and  pred == c| / |y == c  or  pred == c|

and the mean IoU is the mean of these per-class values. Background (class 0) has no IoU of its
own, but a pixel whose true label is 0 and that is predicted as ``c`` **does** count in class
``c``'s union (it is a false positive for ``c``). ``keras.metrics.MeanIoU(ignore_class=0)``
drops such pixels entirely (and it averages in class 0's IoU whenever a foreground pixel is
predicted as 0), so it is a different number; it is not used.

Absent classes: a class that appears neither in the truth nor in the predictions of the
evaluated set has IoU 0/0, which is undefined. It is reported as NaN by :func:`iou_per_class`
and :meth:`MeanIoUForeground.per_class`, and it is **excluded** from the mean: the mean is taken
over the classes present in the truth or the predictions (it neither counts as 1.0 nor as 0.0).
A class predicted but absent from the truth is present (its IoU is 0). If none of the classes is
present anywhere, :func:`mean_iou` returns NaN, while :class:`MeanIoUForeground` returns 0.0
because Keras callbacks (EarlyStopping, ReduceLROnPlateau, checkpoints) cannot compare NaN; that
is the one difference between the two. On the real data the case needs a split with no soil,
bedrock, sand or big rock at all; the class most likely to be absent from a small split is big
rock (class 4, in ~62 of 2505 images), which is then simply left out of the mean.

Importing this module imports Keras (and TensorFlow) for :class:`MeanIoUForeground`; the class
is defined at module level and registered, so a saved model's compile config can find it.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import keras
from keras import ops
import numpy as np

NUM_CLASSES = 5
FOREGROUND = (1, 2, 3, 4)


# ---------------------------------------------------------------------------------------------
# numpy reference
# ---------------------------------------------------------------------------------------------


def confusion_counts(y_true: np.ndarray, y_pred_labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true label, column = predicted label."""
    y_true = np.asarray(y_true)
    y_pred_labels = np.asarray(y_pred_labels)
    if y_true.shape != y_pred_labels.shape:
        raise ValueError(
            f"y_true and y_pred_labels must have the same shape, got {y_true.shape} and "
            f"{y_pred_labels.shape} (pass predicted labels, e.g. argmax of the probabilities)"
        )
    t = y_true.reshape(-1).astype(np.int64)
    p = y_pred_labels.reshape(-1).astype(np.int64)
    for name, values in (("y_true", t), ("y_pred_labels", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} labels must be in 0..{num_classes - 1}, got {values.min()}..{values.max()}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(confusion: np.ndarray, classes: Sequence[int] = FOREGROUND) -> dict[int, float]:
    """Per-class IoU from a confusion matrix; NaN for a class absent from truth and prediction."""
    cm = np.asarray(confusion, dtype=np.float64)
    result: dict[int, float] = {}
    for c in classes:
        intersection = cm[c, c]
        union = cm[c, :].sum() + cm[:, c].sum() - intersection
        result[int(c)] = float(intersection / union) if union > 0 else float("nan")
    return result


def iou_per_class(
    y_true: np.ndarray, y_pred_labels: np.ndarray, classes: Sequence[int] = FOREGROUND
) -> dict[int, float]:
    """``{class: IoU}`` over the whole given set; NaN for an absent class (module docstring)."""
    num_classes = max(NUM_CLASSES, max(classes) + 1)
    return iou_from_confusion(confusion_counts(y_true, y_pred_labels, num_classes), classes)


def mean_iou(y_true: np.ndarray, y_pred_labels: np.ndarray, classes: Sequence[int] = FOREGROUND) -> float:
    """Mean of :func:`iou_per_class` over the present classes; NaN if none is present."""
    return mean_of(iou_per_class(y_true, y_pred_labels, classes))


def mean_of(per_class: dict[int, float]) -> float:
    """The mean over the present classes (absent ones are NaN and left out); NaN if none."""
    values = [v for v in per_class.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


@dataclasses.dataclass(frozen=True)
class Score:
    """A set's score as trials are scored: mean IoU (classes 1-4), per class, confusion matrix."""

    miou: float
    per_class: dict[int, float]  # NaN for a class absent from truth and prediction
    confusion: np.ndarray  # (5, 5) int64 pixel counts, row true, column predicted


def score(y_true: np.ndarray, y_pred_labels: np.ndarray) -> Score:
    """Score predicted labels against the truth over the whole set: what a trial reports for
    its validation split and ``worker predict`` prints for a labelled set."""
    confusion = confusion_counts(y_true, y_pred_labels)
    per_class = iou_from_confusion(confusion)
    return Score(mean_of(per_class), per_class, confusion)


# ---------------------------------------------------------------------------------------------
# Keras metric
# ---------------------------------------------------------------------------------------------


def _count_dtype() -> str:
    """float64 where the backend has it. JAX has it only in x64 mode (``JAX_ENABLE_X64``); its
    default float32 counts stay exact up to 2**24 pixels per cell (2,048 images of 64x128),
    enough for a validation split. The reported mIoU is the numpy one, exact either way."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "float32"
    return "float64"


@keras.saving.register_keras_serializable(package="mars_tuner")
class MeanIoUForeground(keras.metrics.Metric):
    """Mean IoU over classes 1-4, accumulated over every batch since the last reset.

    ``update_state(y_true, y_pred)``: ``y_true`` integer labels (B, H, W) or (B, H, W, 1),
    ``y_pred`` probabilities (B, H, W, C); the prediction is ``argmax(y_pred)``. A 5x5
    confusion matrix is accumulated in a non-trainable float64 variable (exact integer
    counts up to 2**53 pixels), so ``result()`` is the whole-set value, not a mean of
    per-batch values. Absent classes are excluded from the mean as in :func:`mean_iou`;
    with no class present at all ``result()`` is 0.0, not NaN (module docstring).

    Optional ``sample_weight`` (broadcastable to (B, H, W)) weights each pixel's count.
    Pure ``keras.ops``: works eagerly, inside ``model.fit`` and with ``jit_compile=True``.
    """

    def __init__(
        self,
        name: str = "miou",
        num_classes: int = NUM_CLASSES,
        classes: Sequence[int] = FOREGROUND,
        dtype=None,
        **kwargs,
    ) -> None:
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_classes = int(num_classes)
        self.classes = tuple(int(c) for c in classes)
        if not self.classes or min(self.classes) < 0 or max(self.classes) >= self.num_classes:
            raise ValueError(f"classes must be in 0..{self.num_classes - 1}, got {classes}")
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype=_count_dtype(),
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_true.shape) == len(y_pred.shape):  # (B, H, W, 1) -> (B, H, W)
            y_true = ops.squeeze(y_true, axis=-1)
        k = self.num_classes
        true_hot = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), (-1,)), k, dtype="float32")
        pred_labels = ops.argmax(y_pred, axis=-1)
        pred_hot = ops.one_hot(ops.reshape(ops.cast(pred_labels, "int32"), (-1,)), k, dtype="float32")
        if sample_weight is not None:
            w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            while len(w.shape) < len(y_true.shape):
                w = ops.expand_dims(w, -1)
            w = ops.reshape(ops.broadcast_to(w, ops.shape(y_true)), (-1, 1))
            true_hot = true_hot * w
        # (k, N) @ (N, k): per-batch counts, exact in float32 up to 2**24 pixels per batch.
        batch = ops.matmul(ops.transpose(true_hot), pred_hot)
        self.confusion.assign_add(ops.cast(batch, self.confusion.dtype))

    def result(self):
        cm = ops.convert_to_tensor(self.confusion)
        diag = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - diag
        idx = list(self.classes)
        inter = ops.take(diag, idx)
        union = ops.take(union, idx)
        present = ops.greater(union, 0.0)
        # Guard the division without clamping: weighted unions may lie in (0, 1).
        iou = ops.where(present, inter / ops.where(present, union, 1.0), 0.0)
        n_present = ops.sum(ops.cast(present, cm.dtype))
        mean = ops.sum(iou) / ops.maximum(n_present, 1.0)  # 0.0 when nothing is present
        return ops.cast(mean, "float32")

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), self.confusion.dtype))

    def per_class(self) -> dict[int, float]:
        """``{class: IoU}`` as numpy floats, NaN for absent classes (same as numpy)."""
        cm = np.asarray(self.confusion.numpy())
        return {c: np.float64(v) for c, v in iou_from_confusion(cm, self.classes).items()}

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated counts as an int64 numpy array (row true, column predicted)."""
        return np.rint(np.asarray(self.confusion.numpy())).astype(np.int64)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, classes=list(self.classes))
        return config
