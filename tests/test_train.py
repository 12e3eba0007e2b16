"""``train()`` end to end on tiny synthetic data (four trainings in this file, ~10 s each).

The expensive run is a module fixture shared by the tests that only inspect its result.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
import warnings

import numpy as np
import pytest

from contract.config import TrainConfig
from contract.data import load_npz
from contract.splitting import split
from worker.training.result import TrainResult
from worker.training.train import train

pytestmark = pytest.mark.slow

N_IMAGES = 40

TINY = TrainConfig(
    model="multipath",
    base_filters=4,
    depth=2,
    conventional_filters=8,
    residual_filters=8,
    multiscale_filters=8,
    context_filters=8,
    batch_size=8,
    epochs=2,
    early_stopping_patience=10,
    reduce_lr_patience=10,
    validation_fraction=0.25,
    augment_flips=False,  # keeps each epoch to a few steps; the pipeline tests cover flips
    mixed_precision="off",
    seed=3,
)


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from contract.synth import write_npz

    path = tmp_path_factory.mktemp("data") / "mars.npz"
    write_npz(path, N_IMAGES, seed=1, n_aliens=0)
    return path


@pytest.fixture(scope="module")
def data(npz_path: Path):
    return load_npz(npz_path)


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory: pytest.TempPathFactory):
    """One verbose run with a recording epoch callback and a save path."""
    calls: list[tuple[object, object]] = []
    save_dir = tmp_path_factory.mktemp("model")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(
            TINY,
            data,
            epoch_callback=lambda e, m: calls.append((e, m)),
            verbose=True,
            save_path=save_dir / "best.keras",
        )
    return result, calls, save_dir, out.getvalue()


def _val_split(data, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    return split(data.masks, config.validation_fraction, config.seed)


def test_result_is_complete_and_in_range(first_run, data) -> None:
    result, _, _, _ = first_run
    assert isinstance(result, TrainResult)
    assert math.isfinite(result.best_miou) and 0.0 <= result.best_miou <= 1.0
    assert set(result.per_class_iou) == {1, 2, 3, 4}
    assert result.epochs_run == TINY.epochs
    assert len(result.history) == TINY.epochs
    assert 0 <= result.best_epoch < TINY.epochs
    for row in result.history:
        assert set(row) == {"loss", "val_loss", "val_miou", "lr"}
        assert math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])
    assert result.history[0]["lr"] == pytest.approx(TINY.learning_rate)
    train_idx, val_idx = _val_split(data, TINY)
    assert (result.n_train, result.n_val) == (len(train_idx), len(val_idx))
    assert result.device["device"] == "CPU"
    assert result.wall_time_s > 0


def test_reported_miou_is_the_numpy_evaluation_of_the_restored_best_epoch(first_run) -> None:
    # Without TTA the numpy re-evaluation of the restored weights must agree with the Keras
    # metric logged for the best epoch: same weights, same images, same definition.
    result, _, _, _ = first_run
    finite = [v for v in result.per_class_iou.values() if not math.isnan(v)]
    assert result.best_miou == pytest.approx(float(np.mean(finite)), abs=1e-12)
    best = result.history[result.best_epoch]["val_miou"]
    assert result.best_miou == pytest.approx(best, abs=1e-4)
    assert best == max(row["val_miou"] for row in result.history)


def test_epoch_callback_gets_each_epoch_index_and_val_miou(first_run) -> None:
    result, calls, _, _ = first_run
    assert [e for e, _ in calls] == list(range(TINY.epochs))
    assert all(type(e) is int and type(m) is float for e, m in calls)
    assert [m for _, m in calls] == [row["val_miou"] for row in result.history]


def test_verbose_prints_one_line_per_epoch(first_run) -> None:
    _, _, _, printed = first_run
    for i in range(1, TINY.epochs + 1):
        lines = [line for line in printed.splitlines() if line.startswith(f"epoch {i}/{TINY.epochs}")]
        assert len(lines) == 1
        assert "val_miou" in lines[0] and "lr" in lines[0]


def test_saved_model_loads_and_reproduces_the_reported_evaluation(first_run, data) -> None:
    import keras

    from worker.training.metrics import iou_per_class, mean_iou

    result, _, save_dir, _ = first_run
    assert sorted(p.name for p in save_dir.iterdir()) == ["best.keras"]  # no temp file left
    model = keras.models.load_model(save_dir / "best.keras", compile=False)
    _, val_idx = _val_split(data, TINY)
    probs = model.predict(data.images[val_idx][..., None], batch_size=8, verbose=0)
    labels = np.argmax(probs, axis=-1)
    assert mean_iou(data.masks[val_idx], labels) == pytest.approx(result.best_miou, abs=1e-12)
    reloaded = iou_per_class(data.masks[val_idx], labels)
    for c, value in result.per_class_iou.items():
        assert reloaded[c] == pytest.approx(value, abs=1e-12, nan_ok=True)


def test_class_weights_come_from_the_training_split_only(first_run, data) -> None:
    from worker.training.losses import class_weights_from_masks

    result, _, _, _ = first_run
    train_idx, _ = _val_split(data, TINY)
    expected = class_weights_from_masks(
        data.masks[train_idx], scheme=TINY.class_weights, background_weight=TINY.background_weight
    )
    np.testing.assert_allclose(result.class_weights, expected, rtol=0, atol=0)
    everything = class_weights_from_masks(
        data.masks, scheme=TINY.class_weights, background_weight=TINY.background_weight
    )
    assert not np.allclose(result.class_weights, everything)


def test_to_dict_is_strict_json(first_run) -> None:
    result, _, _, _ = first_run
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back == result.to_dict()
    assert back["per_class_iou"] == {str(c): result.per_class_iou[c] for c in (1, 2, 3, 4)}


def test_to_dict_turns_nan_into_null() -> None:
    result = TrainResult(
        best_miou=math.nan,
        per_class_iou={1: 0.5, 4: math.nan},
        epochs_run=1,
        best_epoch=0,
        wall_time_s=1.0,
        history=[{"loss": 1.0, "val_loss": math.inf, "val_miou": math.nan, "lr": 1e-3}],
        n_train=3,
        n_val=1,
        class_weights=[0.0, np.float32(1.5)],
        device={},
    )
    values = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert values["best_miou"] is None
    assert values["per_class_iou"] == {"1": 0.5, "4": None}
    assert values["history"][0] == {"loss": 1.0, "val_loss": None, "val_miou": None, "lr": 1e-3}
    assert values["class_weights"] == [0.0, 1.5]


def test_seeded_runs_repeat_exactly(first_run, data) -> None:
    result, _, _, _ = first_run
    again = train(TINY, data, verbose=False)
    assert again.best_miou == result.best_miou
    assert [row["loss"] for row in again.history] == [row["loss"] for row in result.history]
    assert [row["val_miou"] for row in again.history] == [row["val_miou"] for row in result.history]


class _Stop(Exception):
    pass


def test_exception_in_epoch_callback_propagates_and_stops_training(data) -> None:
    # Also runs under the mixed-precision policy a GPU DeviceInfo asks for, and checks the
    # global policy is set while training and restored even when training is interrupted.
    import keras

    from worker.training.device import DeviceInfo

    seen: list[tuple[int, str]] = []

    def stop(epoch: int, value: float) -> None:
        seen.append((epoch, keras.mixed_precision.global_policy().name))
        raise _Stop(f"pruned at {epoch}")

    mixed = DeviceInfo(kind="CPU", name="test", index=None, mixed_precision=True)
    with pytest.raises(_Stop, match="pruned at 0"):
        train(TINY.replace(epochs=3), data, epoch_callback=stop, verbose=False, device=mixed)
    assert seen == [(0, "mixed_float16")]
    assert keras.mixed_precision.global_policy().name == "float32"


def test_max_images_subset_batch_clamp_and_tta(npz_path: Path, data) -> None:
    from worker.training.losses import class_weights_from_masks

    config = TINY.replace(max_images=12, batch_size=64, epochs=1, tta=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(config, data, verbose=True)
    assert result.n_train + result.n_val == 12
    assert f"using {result.n_train}" in out.getvalue()  # the clamp is announced
    assert "flip TTA" in out.getvalue()
    assert math.isfinite(result.best_miou) and 0.0 <= result.best_miou <= 1.0
    # The subset equals what load_npz(max_images=..., seed=...) picks at load time.
    subset = load_npz(npz_path, max_images=12, seed=config.seed)
    train_idx, _ = split(subset.masks, config.validation_fraction, config.seed)
    expected = class_weights_from_masks(
        subset.masks[train_idx], scheme=config.class_weights, background_weight=config.background_weight
    )
    np.testing.assert_allclose(result.class_weights, expected, rtol=0, atol=0)


def test_importing_the_training_modules_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = "import sys, worker.training.train, worker.training.device; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_jit_compile_needs_op_determinism_off() -> None:
    """Keras 3 drops XLA while op determinism is on; set_op_determinism(False) lets it through."""
    import keras

    from worker.training.model import build_unet
    from worker.training.train import set_op_determinism

    def compiled_with_xla() -> bool:
        model = build_unet(base_filters=4, depth=2)
        with warnings.catch_warnings():  # Keras warns when it drops XLA: that is the point here
            warnings.simplefilter("ignore", UserWarning)
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
        return bool(model.jit_compile)

    try:
        set_op_determinism(True)
        assert not compiled_with_xla()  # what train() would silently get without the switch
        set_op_determinism(False)
        assert compiled_with_xla()
    finally:
        set_op_determinism(True)
        keras.utils.clear_session()
