"""worker.training.pipeline: lazy flip augmentation, eval pipeline, flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from worker.training import pipeline  # noqa: E402

N = 6


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    images = rng.random((N, 64, 128), dtype=np.float32)
    masks = rng.integers(0, 5, (N, 64, 128)).astype(np.uint8)
    return images, masks


def _collect(ds):
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds), strict=False)
    return np.concatenate(xs), np.concatenate(ys)


def _numpy_flips(a):
    """Original, horizontal (width), vertical (height), both: the pipeline's unshuffled order."""
    return np.concatenate([a, a[:, :, ::-1], a[:, ::-1, :], a[:, ::-1, ::-1]])


def test_augmented_epoch_is_four_times_the_images(arrays):
    images, masks = arrays
    ds = pipeline.make_train_dataset(images, masks, 5, seed=0)
    x, y = _collect(ds)
    assert x.shape == (4 * N, 64, 128, 1) and x.dtype == np.float32
    assert y.shape == (4 * N, 64, 128) and y.dtype == np.int32
    assert sum(1 for _ in ds) == pipeline.steps_per_epoch(N, 5, True) == 5
    # Shuffled, yet the same multiset: each image appears in each of its four orientations.
    expected = _numpy_flips(images)
    order = np.lexsort(x.reshape(4 * N, -1)[:, :4].T)
    order_expected = np.lexsort(expected.reshape(4 * N, -1)[:, :4].T)
    np.testing.assert_array_equal(x[order, ..., 0], expected[order_expected])


def test_unshuffled_batches_are_the_numpy_flips(arrays):
    images, masks = arrays
    x, y = _collect(pipeline.make_train_dataset(images, masks, 4, seed=0, shuffle=False))
    np.testing.assert_array_equal(x[..., 0], _numpy_flips(images))
    np.testing.assert_array_equal(y, _numpy_flips(masks).astype(np.int32))


def test_labels_flip_with_images_when_shuffled(arrays):
    images, masks = arrays
    # Masks that are a function of the image pixels: any misaligned flip breaks the relation.
    derived = (images * 5).astype(np.uint8).clip(0, 4)
    x, y = _collect(pipeline.make_train_dataset(images, derived, 7, seed=3))
    np.testing.assert_array_equal(y, (x[..., 0] * 5).astype(np.int32).clip(0, 4))


def test_shuffle_is_seeded(arrays):
    images, masks = arrays
    first = _collect(pipeline.make_train_dataset(images, masks, 4, seed=1))[1]
    again = _collect(pipeline.make_train_dataset(images, masks, 4, seed=1))[1]
    other = _collect(pipeline.make_train_dataset(images, masks, 4, seed=2))[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_without_augmentation_one_copy(arrays):
    images, masks = arrays
    ds = pipeline.make_train_dataset(images, masks, 4, seed=0, augment_flips=False, shuffle=False)
    x, y = _collect(ds)
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, masks)
    assert pipeline.steps_per_epoch(N, 4, False) == 2 == sum(1 for _ in ds)


def test_eval_dataset_not_augmented_nor_shuffled(arrays):
    images, masks = arrays
    x, y = _collect(pipeline.make_eval_dataset(images, masks, 4))
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, masks.astype(np.int32))
    assert y.dtype == np.int32
    only_x = np.concatenate([b.numpy() for b in pipeline.make_eval_dataset(images, None, 4)])
    np.testing.assert_array_equal(only_x[..., 0], images)


def test_steps_per_epoch():
    assert pipeline.steps_per_epoch(10, 4, True) == 10
    assert pipeline.steps_per_epoch(10, 4, False) == 3
    with pytest.raises(ValueError):
        pipeline.steps_per_epoch(10, 0, True)


def _pixelwise_model():
    """1x1 conv + softmax: flip-equivariant, so TTA must equal the plain prediction."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 128, 1))
    outputs = keras.layers.Conv2D(5, 1, activation="softmax")(inputs)
    return keras.Model(inputs, outputs)


def test_flip_tta_equals_plain_prediction_for_equivariant_model(arrays):
    images, _ = arrays
    model = _pixelwise_model()
    plain = model.predict(images[..., None], batch_size=4, verbose=0)
    tta = pipeline.flip_tta_predict(model, images, batch_size=4)
    assert tta.shape == (N, 64, 128, 5) and tta.dtype == np.float32
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    np.testing.assert_allclose(tta.sum(axis=-1), 1.0, atol=1e-5)


def test_flip_tta_unflips_predictions():
    """A model that is not flip-equivariant (it sees the row index): TTA averages the four
    un-flipped predictions, checked against a numpy re-implementation."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 128, 1))
    # Scores depend on the pixel's value and on its position (a fixed ramp across the image).
    ramp = np.linspace(-2, 2, 64 * 128, dtype=np.float32).reshape(1, 64, 128, 1)
    shifted = keras.layers.Lambda(lambda t: t + ramp)(inputs)
    outputs = keras.layers.Conv2D(5, 1, activation="softmax")(shifted)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(1).random((3, 64, 128), dtype=np.float32)

    def predict(x):
        return model.predict(x[..., None], verbose=0)

    expected = (
        predict(images)
        + predict(images[:, :, ::-1])[:, :, ::-1]
        + predict(images[:, ::-1])[:, ::-1]
        + predict(images[:, ::-1, ::-1])[:, ::-1, ::-1]
    ) / 4
    tta = pipeline.flip_tta_predict(model, images[..., None], batch_size=2)
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    assert not np.allclose(tta, predict(images), atol=1e-3)
