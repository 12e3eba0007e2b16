"""worker.training.losses: focal loss against numpy and against Keras' cross-entropy; class weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from worker.training.losses import (
    class_weights_from_masks,
    focal_loss,
    focal_loss_numpy,
)

SEED_WEIGHTS = [0.0, 0.0359, 0.0523, 0.0663, 9.2720]


def _random_batch(seed: int, shape=(3, 8, 16), num_classes: int = 5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    logits = rng.normal(scale=2.0, size=(*shape, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probs.astype(np.float32)


def _value(loss, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_matches_the_numpy_reference(gamma: float) -> None:
    labels, probs = _random_batch(int(gamma * 10))
    weights = np.random.default_rng(1).uniform(0.0, 3.0, 5)
    got = _value(focal_loss(gamma, weights), labels, probs)
    np.testing.assert_allclose(got, focal_loss_numpy(labels, probs, gamma, weights), rtol=1e-5)


def test_labels_with_a_trailing_channel_axis_give_the_same_loss() -> None:
    labels, probs = _random_batch(2)
    loss = focal_loss(0.5, SEED_WEIGHTS)
    np.testing.assert_allclose(_value(loss, labels[..., None], probs), _value(loss, labels, probs), rtol=1e-6)
    # Keras hands labels to losses as float32; that must not change anything either.
    np.testing.assert_allclose(_value(loss, labels.astype(np.float32), probs), _value(loss, labels, probs), rtol=1e-6)


def test_gamma_zero_is_weighted_cross_entropy() -> None:
    labels, probs = _random_batch(3)
    weights = np.array([0.0, 0.5, 1.0, 2.0, 4.0], dtype=np.float32)
    pixel_weights = weights[labels]
    # Independent implementations: Keras' own sparse cross-entropy with per-pixel weights
    # (mean over all pixels), and a direct numpy gather.
    keras_ce = keras.losses.SparseCategoricalCrossentropy()(labels, probs, sample_weight=pixel_weights)
    p_true = np.take_along_axis(probs.astype(np.float64), labels[..., None], axis=-1)[..., 0]
    numpy_ce = float(np.mean(pixel_weights * -np.log(p_true)))
    got = _value(focal_loss(0.0, weights), labels, probs)
    np.testing.assert_allclose(got, float(keras.ops.convert_to_numpy(keras_ce)), rtol=1e-5)
    np.testing.assert_allclose(got, numpy_ce, rtol=1e-5)


def test_higher_gamma_lowers_the_loss_of_confident_correct_pixels() -> None:
    labels = np.array([[[1, 2], [3, 4]]], dtype=np.int32)
    probs = np.full((1, 2, 2, 5), 0.025, dtype=np.float32)
    np.put_along_axis(probs, labels[..., None], 0.9, axis=-1)
    weights = [0.0, 1.0, 1.0, 1.0, 1.0]
    losses = [_value(focal_loss(g, weights), labels, probs) for g in (0.0, 0.5, 2.0, 5.0)]
    assert losses[0] > losses[1] > losses[2] > losses[3] > 0
    # Each confident pixel is scaled by exactly (1 - 0.9)**gamma.
    np.testing.assert_allclose(losses[2], losses[0] * 0.1**2, rtol=1e-4)


def test_zero_background_weight_means_background_pixels_contribute_nothing() -> None:
    labels, probs = _random_batch(4, shape=(2, 8, 8))
    labels[:, :4] = 0  # the top half is background
    weights = [0.0, 1.0, 2.0, 3.0, 4.0]
    loss = focal_loss(0.5, weights)
    base = _value(loss, labels, probs)

    # Background pixels' predictions do not matter ...
    other = probs.copy()
    other[:, :4] = np.random.default_rng(9).dirichlet(np.ones(5), size=(2, 4, 8))
    np.testing.assert_allclose(_value(loss, labels, other), base, rtol=1e-6)

    # ... but they still count in the denominator: mean over ALL pixels, as in the seed.
    foreground = labels != 0
    p_true = np.take_along_axis(probs.astype(np.float64), labels[..., None], axis=-1)[..., 0]
    per_pixel = np.asarray(weights)[labels] * (1 - p_true) ** 0.5 * -np.log(p_true)
    np.testing.assert_allclose(base, per_pixel[foreground].sum() / labels.size, rtol=1e-5)
    assert base < per_pixel[foreground].mean()


def test_float16_predictions_are_cast_and_clipped() -> None:
    labels, probs = _random_batch(5)
    probs[0, 0, 0] = 0.0  # log(0) without clipping
    probs[0, 0, 0, labels[0, 0, 0]] = 1.0
    probs[0, 0, 1] = 0.0
    probs[0, 0, 1, (labels[0, 0, 1] + 1) % 5] = 1.0  # the true class has probability 0
    half = probs.astype(np.float16)
    got = _value(focal_loss(0.5, SEED_WEIGHTS), labels, half)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, focal_loss_numpy(labels, half, 0.5, SEED_WEIGHTS), rtol=1e-5)


def test_focal_loss_gradient_is_finite_at_saturated_probabilities() -> None:
    import tensorflow as tf

    labels = np.array([[[1, 2]]], dtype=np.int32)
    logits = tf.Variable([[[[0.0, 40.0, 0.0, 0.0, 0.0], [0.0, -40.0, 0.0, 0.0, 0.0]]]])
    with tf.GradientTape() as tape:
        value = focal_loss(0.5, [0, 1, 1, 1, 1])(labels, tf.nn.softmax(logits))
    grad = tape.gradient(value, logits)
    assert np.all(np.isfinite(grad.numpy()))


def test_focal_loss_serialises_with_its_parameters() -> None:
    labels, probs = _random_batch(6)
    loss = focal_loss(2.0, SEED_WEIGHTS)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.gamma == 2.0 and clone.class_weights == pytest.approx(SEED_WEIGHTS)
    assert _value(clone, labels, probs) == _value(loss, labels, probs)


def test_invalid_loss_arguments_raise() -> None:
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(-1.0, SEED_WEIGHTS)
    with pytest.raises(ValueError, match="class_weights"):
        focal_loss(0.5, [0.0, 1.0, float("inf"), 1.0, 1.0])


# --- class weights ---------------------------------------------------------------------------

# 100 pixels: 40 background, 30 soil, 20 bedrock, 10 sand, no big rock.
COUNTS = {0: 40, 1: 30, 2: 20, 3: 10, 4: 0}


@pytest.fixture
def masks() -> np.ndarray:
    flat = np.concatenate([np.full(n, c, dtype=np.uint8) for c, n in COUNTS.items()])
    return np.random.default_rng(0).permutation(flat).reshape(4, 5, 5)


def _shares(masks: np.ndarray) -> np.ndarray:
    return np.bincount(masks.reshape(-1), minlength=5) / masks.size


def test_inverse_frequency_weights_on_a_hand_made_mask(masks) -> None:
    w = class_weights_from_masks(masks)
    assert w.shape == (5,) and w.dtype == np.float64
    assert w[0] == 0.0  # background forced to 0
    assert w[4] == 0.0  # absent class: nothing to learn, and 1e6/0 would be inf
    assert w[3] > w[2] > w[1] > 0  # rarer class -> larger weight
    # Normalised so the mean weight per pixel (over all pixels) is 1 ...
    np.testing.assert_allclose(np.sum(w * _shares(masks)), 1.0, rtol=1e-12)
    # ... which for inverse frequency over 3 present classes is 1 / (3 * share_c).
    np.testing.assert_allclose(w[1:4], [1 / (3 * 0.3), 1 / (3 * 0.2), 1 / (3 * 0.1)], rtol=1e-12)
    # The ratios are the seed's 1e6 / count ratios.
    np.testing.assert_allclose(w[3] / w[1], (1e6 / 10) / (1e6 / 30), rtol=1e-12)


def test_seed_weight_ratios_are_kept(masks) -> None:
    # The seed's absolute weights are 1e6 / count; ours differ only by one common factor.
    counts = np.array([n for n in COUNTS.values()], dtype=float)
    seed = np.where(counts > 0, 1e6 / np.maximum(counts, 1), 0.0)
    seed[0] = 0.0
    w = class_weights_from_masks(masks)
    np.testing.assert_allclose(w[1:4] / seed[1:4], w[1] / seed[1], rtol=1e-12)


def test_background_weight_true_keeps_background(masks) -> None:
    w = class_weights_from_masks(masks, background_weight=True)
    assert w[0] > 0
    assert w[0] < w[1]  # background is the most frequent class here
    assert w[4] == 0.0
    np.testing.assert_allclose(np.sum(w * _shares(masks)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(w[:4], [1 / (4 * s) for s in (0.4, 0.3, 0.2, 0.1)], rtol=1e-12)


def test_sqrt_inverse_frequency_is_milder(masks) -> None:
    w = class_weights_from_masks(masks, scheme="sqrt_inverse_frequency")
    assert w[0] == 0.0 and w[4] == 0.0
    np.testing.assert_allclose(w[3] / w[1], np.sqrt(30 / 10), rtol=1e-12)
    np.testing.assert_allclose(np.sum(w * _shares(masks)), 1.0, rtol=1e-12)


def test_uniform_weights(masks) -> None:
    w = class_weights_from_masks(masks, scheme="uniform")
    np.testing.assert_allclose(w, [0.0, 1 / 0.6, 1 / 0.6, 1 / 0.6, 0.0], rtol=1e-12)
    w_bg = class_weights_from_masks(masks, scheme="uniform", background_weight=True)
    np.testing.assert_allclose(w_bg, [1.0, 1.0, 1.0, 1.0, 0.0], rtol=1e-12)


def test_weights_do_not_depend_on_the_data_size(masks) -> None:
    # The seed's 1e6/count weights halve when the data doubles; normalised ones do not.
    doubled = np.concatenate([masks, masks])
    np.testing.assert_allclose(class_weights_from_masks(doubled), class_weights_from_masks(masks))


def test_class_weight_errors(masks) -> None:
    with pytest.raises(ValueError, match="scheme"):
        class_weights_from_masks(masks, scheme="balanced")
    with pytest.raises(ValueError, match=r"0\.\.4"):
        class_weights_from_masks(masks + 2)  # labels up to 5
    with pytest.raises(ValueError, match="only background"):
        class_weights_from_masks(np.zeros((2, 4, 4), dtype=np.uint8))


def test_uniform_prediction_loss_is_log_num_classes_with_normalised_weights(masks) -> None:
    w = class_weights_from_masks(masks)
    probs = np.full((*masks.shape, 5), 0.2, dtype=np.float32)
    np.testing.assert_allclose(_value(focal_loss(0.0, w), masks, probs), np.log(5), rtol=1e-5)
