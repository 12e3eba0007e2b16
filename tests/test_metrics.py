"""worker.training.metrics: mean IoU over classes 1-4 on hand-made masks, numpy vs the Keras metric."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from worker.training.losses import focal_loss
from worker.training.metrics import (
    MeanIoUForeground,
    confusion_counts,
    iou_per_class,
    mean_iou,
)


def _probs(labels: np.ndarray, num_classes: int = 5) -> np.ndarray:
    """Probabilities whose argmax is ``labels``."""
    probs = np.full((*labels.shape, num_classes), 0.1 / (num_classes - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[..., None].astype(np.int64), 0.9, axis=-1)
    return probs


def _keras_miou(batches) -> tuple[float, MeanIoUForeground]:
    metric = MeanIoUForeground()
    for y_true, y_pred_labels in batches:
        metric.update_state(y_true, _probs(y_pred_labels))
    return float(keras.ops.convert_to_numpy(metric.result())), metric


def _hand_made() -> np.ndarray:
    return np.array([[[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 4, 1]]], dtype=np.int32)


def test_perfect_prediction_is_one() -> None:
    y = _hand_made()
    assert mean_iou(y, y) == 1.0
    assert iou_per_class(y, y) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    value, metric = _keras_miou([(y, y)])
    assert value == pytest.approx(1.0)
    assert metric.per_class() == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}


def test_disjoint_prediction_is_zero() -> None:
    y = np.array([[[1, 1, 2, 2]]])
    pred = np.array([[[3, 4, 1, 1]]])
    assert iou_per_class(y, pred) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    assert mean_iou(y, pred) == 0.0
    assert _keras_miou([(y, pred)])[0] == 0.0


def test_background_predicted_as_a_class_lowers_that_class_iou_by_hand() -> None:
    # 10 soil pixels, all found; 10 background pixels of which 5 are predicted soil.
    y = np.array([[1] * 10 + [0] * 10])
    pred = np.array([[1] * 10 + [1] * 5 + [0] * 5])
    # Soil: intersection 10, union 10 true soil + 5 background-called-soil = 15.
    per_class = iou_per_class(y, pred)
    assert per_class[1] == pytest.approx(10 / 15)
    assert all(math.isnan(per_class[c]) for c in (2, 3, 4))
    assert mean_iou(y, pred) == pytest.approx(10 / 15)
    assert _keras_miou([(y[None], pred[None])])[0] == pytest.approx(10 / 15, rel=1e-6)

    # Same with a second class present: only soil's IoU drops, by exactly 10/10 -> 10/15.
    y2 = np.array([[1] * 10 + [0] * 10 + [2] * 4])
    pred2 = np.array([[1] * 10 + [1] * 5 + [0] * 5 + [2] * 4])
    perfect = iou_per_class(y2, np.where(y2 == 0, 0, y2))
    assert perfect[1] == 1.0 and perfect[2] == 1.0
    per_class = iou_per_class(y2, pred2)
    assert per_class[1] == pytest.approx(1.0 - 5 / 15)
    assert per_class[2] == 1.0
    assert mean_iou(y2, pred2) == pytest.approx((10 / 15 + 1.0) / 2)


def test_keras_meaniou_with_ignore_class_is_a_different_number() -> None:
    y = np.array([[1] * 10 + [0] * 10 + [2] * 4])
    pred = np.array([[1] * 10 + [1] * 5 + [0] * 5 + [2] * 4])
    keras_metric = keras.metrics.MeanIoU(num_classes=5, ignore_class=0)
    keras_metric.update_state(y, pred)
    keras_value = float(keras.ops.convert_to_numpy(keras_metric.result()))
    # Keras drops true-background pixels, so the 5 false soil pixels vanish: soil looks perfect.
    assert keras_value == pytest.approx(1.0)
    ours = mean_iou(y, pred)
    assert ours == pytest.approx((10 / 15 + 1.0) / 2)
    assert _keras_miou([(y[None], pred[None])])[0] == pytest.approx(ours, rel=1e-6)
    assert abs(keras_value - ours) > 0.1


def test_absent_class_is_nan_and_excluded_from_the_mean() -> None:
    y = np.array([[1, 1, 2, 2, 0, 0]])
    pred = np.array([[1, 2, 2, 2, 0, 0]])
    per_class = iou_per_class(y, pred)
    assert per_class[1] == pytest.approx(1 / 2)
    assert per_class[2] == pytest.approx(2 / 3)
    assert math.isnan(per_class[3]) and math.isnan(per_class[4])
    assert mean_iou(y, pred) == pytest.approx((1 / 2 + 2 / 3) / 2)  # not / 4, not with 1.0s

    value, metric = _keras_miou([(y[None], pred[None])])
    assert value == pytest.approx((1 / 2 + 2 / 3) / 2, rel=1e-6)
    keras_per_class = metric.per_class()
    assert keras_per_class[1] == pytest.approx(1 / 2)
    assert math.isnan(keras_per_class[3]) and math.isnan(keras_per_class[4])
    assert all(isinstance(v, np.floating) for v in keras_per_class.values())


def test_class_predicted_but_not_in_truth_counts_as_zero() -> None:
    y = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 1, 4, 0]])
    per_class = iou_per_class(y, pred)
    assert per_class[4] == 0.0  # present (predicted), so it is in the mean
    assert mean_iou(y, pred) == pytest.approx(0.5)


def test_all_classes_absent_is_nan_in_numpy_and_zero_in_keras() -> None:
    y = np.zeros((2, 4, 4), dtype=np.int32)
    assert math.isnan(mean_iou(y, y))
    assert all(math.isnan(v) for v in iou_per_class(y, y).values())
    value, metric = _keras_miou([(y, y)])
    assert value == 0.0
    assert all(math.isnan(v) for v in metric.per_class().values())


def test_accumulation_is_over_the_whole_set_not_a_mean_of_batches() -> None:
    # Batch A: 2 soil pixels, both found (IoU 1). Batch B: 8 soil pixels, 2 found (IoU 0.25).
    y_a = np.array([[[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]])
    p_a = np.array([[[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]])
    y_b = np.array([[[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]])
    p_b = np.array([[[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]])
    per_batch_mean = (mean_iou(y_a, p_a) + mean_iou(y_b, p_b)) / 2
    assert per_batch_mean == pytest.approx(0.625)
    whole = mean_iou(np.concatenate([y_a, y_b]), np.concatenate([p_a, p_b]))
    assert whole == pytest.approx(4 / 10)  # intersection 2 + 2, union 2 + 8

    value, metric = _keras_miou([(y_a, p_a), (y_b, p_b)])
    assert value == pytest.approx(whole, rel=1e-6)
    np.testing.assert_array_equal(
        metric.confusion_matrix(),
        confusion_counts(np.concatenate([y_a, y_b]), np.concatenate([p_a, p_b])),
    )


def test_keras_metric_equals_numpy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=(12, 16, 32), p=[0.25, 0.35, 0.2, 0.19, 0.01]).astype(np.int32)
    logits = rng.normal(size=(12, 16, 32, 5)).astype(np.float32)
    logits[..., :] += 1.5 * np.eye(5, dtype=np.float32)[y]  # better than chance
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    pred = probs.argmax(-1)

    metric = MeanIoUForeground()
    for start in range(0, 12, 5):  # uneven batches: 5, 5, 2
        metric.update_state(y[start : start + 5], probs[start : start + 5])
    expected = mean_iou(y, pred)
    assert 0.1 < expected < 0.9
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    per_class = metric.per_class()
    for c, v in iou_per_class(y, pred).items():
        np.testing.assert_allclose(per_class[c], v, rtol=1e-12)

    # (B, H, W, 1) labels and float labels are accepted too.
    other = MeanIoUForeground()
    other.update_state(y[..., None].astype(np.float32), probs)
    np.testing.assert_allclose(float(other.result()), expected, rtol=1e-6)

    metric.reset_state()
    assert float(metric.result()) == 0.0
    assert not metric.confusion_matrix().any()


def test_sample_weight_zero_drops_pixels() -> None:
    y = np.array([[[1, 1, 0, 0]]])
    pred = np.array([[[1, 1, 1, 0]]])
    metric = MeanIoUForeground()
    metric.update_state(y, _probs(pred), sample_weight=np.array([[[1.0, 1.0, 0.0, 1.0]]]))
    assert float(metric.result()) == pytest.approx(1.0)


def test_small_sample_weights_scale_counts_not_the_iou() -> None:
    """IoU is a ratio: weighting every pixel by 0.1 must not change it (unions below 1 included)."""
    y = np.array([[[1, 2], [2, 0]]])
    pred = np.array([[[1, 1], [2, 0]]])
    metric = MeanIoUForeground()
    metric.update_state(y, _probs(pred), sample_weight=np.full(y.shape, 0.1))
    assert float(metric.result()) == pytest.approx(0.5)
    assert float(metric.result()) == pytest.approx(np.nanmean(list(metric.per_class().values())))


def test_metric_is_serialisable() -> None:
    metric = MeanIoUForeground(name="val_thing")
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, MeanIoUForeground)
    assert clone.name == "val_thing" and clone.classes == (1, 2, 3, 4)


@pytest.mark.slow
def test_metric_inside_model_fit_with_jit_compile() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 32, 1), dtype=np.float32)
    y = np.clip((x[..., 0] * 5).astype(np.int32), 0, 4)  # learnable from the pixel value
    inputs = keras.Input((16, 32, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(5, 1, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=focal_loss(0.5, [0.0, 1.0, 1.0, 1.0, 1.0]),
        metrics=[MeanIoUForeground()],
        jit_compile=True,
    )
    history = model.fit(x[:12], y[:12], validation_data=(x[12:], y[12:]), batch_size=4, epochs=2, verbose=0)
    for key in ("miou", "val_miou", "loss"):
        assert key in history.history
        assert all(np.isfinite(v) for v in history.history[key]), key
    assert 0.0 <= history.history["val_miou"][-1] <= 1.0

    # evaluate() accumulates over its 2 batches of 2 exactly like numpy on the whole split.
    logs = model.evaluate(x[12:], y[12:], batch_size=2, verbose=0, return_dict=True)
    pred = model.predict(x[12:], batch_size=2, verbose=0).argmax(-1)
    np.testing.assert_allclose(logs["miou"], mean_iou(y[12:], pred), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' save
def test_compiled_model_with_loss_and_metric_saves_and_loads(tmp_path) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((4, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 5, (4, 8, 8)).astype(np.int32)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1, activation="softmax")(inputs))
    model.compile(optimizer="adam", loss=focal_loss(0.5, [0.0, 1.0, 2.0, 3.0, 4.0]), metrics=[MeanIoUForeground()])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # finds both registered classes
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-6)
    assert after["miou"] == pytest.approx(before["miou"], rel=1e-6)


def test_numpy_input_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(np.zeros((2, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        confusion_counts(np.array([0, 5]), np.array([0, 1]))
