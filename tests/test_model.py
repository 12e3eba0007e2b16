"""worker.training.model: the seed's Multipath UNet, the plain UNet, and build_model's dispatch."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from contract.config import TrainConfig
from worker.training.model import build_model, build_multipath_unet, build_unet

TINY = dict(base_filters=4, conventional_filters=8, residual_filters=8, multiscale_filters=8, context_filters=8)
SEED_PARAMS = 6_067_049  # reported in worker/training/model.py's docstring


@pytest.fixture(scope="module")
def seed_model() -> keras.Model:
    return build_multipath_unet()  # building is cheap; the tests never train it


def _inputs(batch: int = 2, shape=(64, 128, 1)) -> np.ndarray:
    return np.random.default_rng(0).random((batch, *shape), dtype=np.float32)


def test_seed_configuration_has_about_6_1m_parameters(seed_model) -> None:
    count = seed_model.count_params()
    assert 5_500_000 <= count <= 6_700_000, count
    assert count == SEED_PARAMS


def test_seed_model_shapes_follow_the_reference(seed_model) -> None:
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in seed_model.layers}
    assert shape["enc1_2_relu"] == (64, 128, 32)
    assert shape["enc2_2_relu"] == (32, 64, 64)
    assert shape["enc3_2_relu"] == (16, 32, 128)
    assert shape["enc3_pool"] == (8, 16, 128)
    assert shape["bottleneck_conventional_2_relu"] == (8, 16, 256)
    assert shape["bottleneck_residual_relu"] == (8, 16, 32)
    assert shape["bottleneck_multiscale_sum"] == (8, 16, 256)
    assert shape["bottleneck_context_broadcast"] == (8, 16, 32)
    assert shape["bottleneck_concat"] == (8, 16, 576)
    assert shape["fusion_conv_conv"] == (8, 16, 576)
    assert shape["fusion_se_reduce"] == (1, 1, 576 // 16)
    assert shape["fusion_add"] == (8, 16, 576)
    assert shape["dec3_conv_2_relu"] == (16, 32, 128)
    assert shape["dec2_conv_2_relu"] == (32, 64, 64)
    assert shape["dec1_conv_2_relu"] == (64, 128, 32)
    assert shape["probabilities"] == (64, 128, 5)


def test_the_four_bottleneck_paths_exist_and_are_concatenated(seed_model) -> None:
    names = {layer.name for layer in seed_model.layers}
    for path in ("conventional", "residual", "multiscale", "context"):
        assert any(n.startswith(f"bottleneck_{path}_") for n in names), path
    assert {"bottleneck_residual_shortcut", "bottleneck_residual_add"} <= names
    assert {f"bottleneck_multiscale_d{d}_conv" for d in (1, 2, 4)} <= names
    rates = {seed_model.get_layer(f"bottleneck_multiscale_d{d}_conv").dilation_rate for d in (1, 2, 4)}
    assert rates == {(1, 1), (2, 2), (4, 4)}
    assert {"bottleneck_context_gap", "bottleneck_context_dense"} <= names
    concat = seed_model.get_layer("bottleneck_concat")
    inbound = {t._keras_history.operation.name for t in concat.input}
    assert inbound == {
        "bottleneck_conventional_2_relu",
        "bottleneck_residual_relu",
        "bottleneck_multiscale_sum",
        "bottleneck_context_broadcast",
    }


def test_tiny_multipath_outputs_probabilities_in_float32() -> None:
    model = build_multipath_unet(**TINY)
    out = np.asarray(model(_inputs(3), training=False))
    assert out.shape == (3, 64, 128, 5)
    assert model.output.dtype == "float32"
    assert out.dtype == np.float32
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


def test_se_bottleneck_width_is_at_least_one() -> None:
    model = build_multipath_unet(
        base_filters=2, conventional_filters=2, residual_filters=2, multiscale_filters=2, context_filters=2
    )  # concat = 8 < 16
    assert model.get_layer("fusion_se_reduce").units == 1


def test_unet_builds_with_a_double_conv_bottleneck() -> None:
    model = build_unet(base_filters=4)
    assert model.name == "unet"
    assert tuple(model.get_layer("bottleneck_2_relu").output.shape[1:]) == (8, 16, 32)
    assert not any(layer.name.startswith("bottleneck_residual") for layer in model.layers)
    out = np.asarray(model(_inputs(2), training=False))
    assert out.shape == (2, 64, 128, 5)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


def test_seed_width_unet_is_the_1_9m_baseline() -> None:
    assert build_unet().count_params() == 1_929_381


@pytest.mark.parametrize("depth", [2, 4])
def test_other_depths_work(depth: int) -> None:
    models = (build_multipath_unet(depth=depth, **TINY), build_unet(base_filters=4, depth=depth))
    for model in models:
        bottleneck = (64 // 2**depth, 128 // 2**depth)
        assert tuple(model.get_layer(f"enc{depth}_pool").output.shape[1:3]) == bottleneck
        assert f"dec{depth}_up" in {layer.name for layer in model.layers}
        assert tuple(model.output.shape) == (None, 64, 128, 5)


@pytest.mark.parametrize("builder", [build_multipath_unet, build_unet])
def test_input_not_divisible_by_2_to_the_depth_raises(builder) -> None:
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 8.*60x128"):
        builder(input_shape=(60, 128, 1), depth=3)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 16"):
        builder(input_shape=(64, 120, 1), depth=4)
    builder(input_shape=(32, 32, 1), depth=5, base_filters=2)  # 32 = 2**5 is fine


def test_build_model_dispatches_on_config_model() -> None:
    multipath = build_model(TrainConfig(model="multipath", **TINY))
    assert multipath.name == "multipath_unet"
    assert multipath.count_params() == build_multipath_unet(**TINY).count_params()
    assert multipath.get_layer("bottleneck_residual_shortcut").filters == 8

    unet = build_model(TrainConfig(model="unet", base_filters=4, depth=2))
    assert unet.name == "unet"
    assert unet.count_params() == build_unet(base_filters=4, depth=2).count_params()


def test_build_model_default_config_is_the_seed() -> None:
    assert build_model(TrainConfig()).count_params() == SEED_PARAMS


def test_output_stays_float32_under_mixed_precision() -> None:
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_multipath_unet(**TINY)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("fusion_conv_conv").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    out = np.asarray(model(_inputs(1), training=False))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' save
def test_saved_model_loads_and_predicts_the_same(tmp_path) -> None:
    model = build_multipath_unet(**TINY)
    x = _inputs(1)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), rtol=1e-6, atol=1e-7
    )


def test_batchnorm_momentum_comes_from_the_config() -> None:
    default = build_model(TrainConfig(model="unet", base_filters=4, depth=2))
    fast = build_model(TrainConfig(model="unet", base_filters=4, depth=2, batchnorm_momentum=0.9))
    bn = [layer for layer in fast.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(layer.momentum == 0.9 for layer in bn)
    assert all(layer.momentum == 0.99 for layer in default.layers if isinstance(layer, keras.layers.BatchNormalization))
    # The momentum is really used: one training step moves the moving mean 10% toward the batch.
    layer = bn[0]
    x = np.full((2, 64, 128, layer.moving_mean.shape[0]), 5.0, dtype="float32")
    layer(x, training=True)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.5, rtol=1e-5)
