"""One training run: ``train(config, data) -> TrainResult``.

The order of operations is the point of this module, because the seed project got it wrong:

1. subsample (``config.max_images``) and split train/validation *before* any augmentation, so no
   flipped copy of a validation image is ever trained on;
2. compute class weights from the *training* split's masks only;
3. flip-augment the training split lazily in the input pipeline;
4. monitor the foreground mean IoU (classes 1-4) on the validation split for learning-rate
   reduction, early stopping (restoring the best weights) and the per-epoch callback that the
   trial loop uses for pruning;
5. re-evaluate the restored best model on the validation split with the numpy metric (flip TTA
   when ``config.tta``). That evaluation is the number reported as ``best_miou``; the per-epoch
   Keras ``val_miou`` values only drive the callbacks and the history.

Runs are seeded and TensorFlow op determinism is enabled, so two runs of the same config on the
same data and machine give bit-identical histories on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import math
from pathlib import Path
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from contract.atomic import replacing
from contract.config import TrainConfig
from worker.training.device import DeviceInfo, describe, plan

if TYPE_CHECKING:
    import keras

    from contract.data import MarsData

EpochCallback = Callable[[int, float], None]
MONITOR = "val_miou"


@dataclasses.dataclass
class TrainResult:
    """What one run produced; :meth:`to_dict` is what the trial loop stores.

    ``best_miou`` and ``per_class_iou`` come from re-evaluating the restored best model on the
    validation split (with flip TTA if the config asked for it). ``best_epoch`` is 0-based and
    is the epoch whose weights were restored. Each ``history`` row holds ``loss``, ``val_loss``,
    ``val_miou`` and ``lr``, the learning rate used *during* that epoch.
    """

    best_miou: float
    per_class_iou: dict[int, float]
    epochs_run: int
    best_epoch: int
    wall_time_s: float
    history: list[dict[str, float]]
    n_train: int
    n_val: int
    class_weights: list[float]
    device: dict[str, Any]
    confusion_matrix: list[list[int]] | None = None  # [true][predicted] pixels, best model, validation
    preview: Any = dataclasses.field(default=None, repr=False)  # worker.training.preview.PreviewSample

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN/inf become ``None`` and the per-class keys become strings.

        String keys make a JSON round trip the identity (JSON would turn int keys into strings
        anyway), so a stored result compares equal to a freshly computed one.
        """
        values = dataclasses.asdict(self)
        values.pop("preview")  # arrays, uploaded as a PNG by the worker, not stored as JSON
        values["per_class_iou"] = {str(k): v for k, v in self.per_class_iou.items()}
        return _json_safe(values)


def train(
    config: TrainConfig,
    data: MarsData,
    *,
    epoch_callback: EpochCallback | None = None,
    verbose: bool = True,
    save_path: str | Path | None = None,
    device: DeviceInfo | None = None,
    on_result: Callable[[TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``config`` on ``data`` and evaluate the best epoch on the validation split.

    ``epoch_callback(epoch_index, val_miou)`` runs after every epoch; whatever it raises (for
    example ``optuna.TrialPruned``) stops training and propagates unchanged. ``device`` is what
    :func:`worker.training.device.configure` returned; without it the device is detected and
    ``config.mixed_precision`` decides the precision. ``save_path`` receives the best model as a
    ``.keras`` file, written atomically.

    This resets Keras' global state (``keras.utils.clear_session``) so that a long-lived worker
    training many trials neither leaks memory nor depends on what ran before.
    """
    import keras
    import tensorflow as tf

    from contract.data import split
    from worker.training.losses import class_weights_from_masks, focal_loss
    from worker.training.metrics import MeanIoUForeground, confusion_counts
    from worker.training.model import build_model
    from worker.training.pipeline import make_eval_dataset, make_train_dataset
    from worker.training.preview import sample as preview_sample

    started = time.perf_counter()
    out = sys.stdout if verbose else None
    if device is None:
        device = _detect_device(tf, config.mixed_precision)

    keras.utils.clear_session()
    keras.utils.set_random_seed(config.seed)
    set_op_determinism(not config.jit_compile)
    if config.jit_compile:
        _say(out, "jit_compile: XLA on, op determinism off (runs are seeded but not bit-exact)")

    images, masks, groups = _subsample(np.asarray(data.images), np.asarray(data.masks),
                                       data.groups, config.max_images, config.seed)
    train_idx, val_idx = split(masks, config.validation_fraction, config.seed, groups)
    x_train, y_train = images[train_idx], masks[train_idx]
    x_val, y_val = images[val_idx], masks[val_idx]
    weights = np.asarray(
        class_weights_from_masks(y_train, scheme=config.class_weights,
                                 background_weight=config.background_weight),
        dtype=np.float64,
    )
    batch_size = min(config.batch_size, len(train_idx))
    _say(out, f"data: {len(images)} images -> {len(train_idx)} train / {len(val_idx)} val "
              f"(split before augmentation); device {device.kind} {device.name}, "
              f"policy {device.policy}")
    if batch_size < config.batch_size:
        _say(out, f"batch size {config.batch_size} > {len(train_idx)} training images: "
                  f"using {batch_size}")

    train_ds = make_train_dataset(x_train, y_train, batch_size, seed=config.seed,
                                  augment_flips=config.augment_flips, shuffle=True)
    val_ds = make_eval_dataset(x_val, y_val, batch_size)

    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(device.policy)
    try:
        model = build_model(config)
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=config.learning_rate,
                                             weight_decay=config.weight_decay),
            loss=focal_loss(config.focal_gamma, weights),
            metrics=[MeanIoUForeground()],
            jit_compile=config.jit_compile,
        )
        history_class, report_class = _callbacks()
        recorder = history_class(config.epochs, out)
        stopper = keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=config.early_stopping_patience,
            restore_best_weights=True,
        )
        callbacks: list[keras.callbacks.Callback] = [
            recorder,
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR, mode="max", factor=config.reduce_lr_factor,
                patience=config.reduce_lr_patience, min_lr=config.min_learning_rate,
            ),
            stopper,
        ]
        if epoch_callback is not None:
            callbacks.append(report_class(epoch_callback))
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                  callbacks=callbacks, verbose=0, shuffle=False)  # the dataset shuffles
        # EarlyStopping has restored the best epoch's weights by now.
        best_miou, per_class, labels = _evaluate(model, x_val, y_val, batch_size, tta=config.tta)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    result = TrainResult(
        best_miou=best_miou,
        per_class_iou=per_class,
        epochs_run=len(recorder.rows),
        best_epoch=int(stopper.best_epoch),
        wall_time_s=time.perf_counter() - started,
        history=recorder.rows,
        n_train=len(train_idx),
        n_val=len(val_idx),
        class_weights=[float(w) for w in weights],
        device=describe(device),
        confusion_matrix=confusion_counts(y_val, labels).tolist(),
        preview=preview_sample(x_val, y_val, labels),
    )
    _say(out, f"best epoch {result.best_epoch + 1}: validation mIoU {_fmt(best_miou)}"
              f"{' (flip TTA)' if config.tta else ''}; "
              + " ".join(f"c{c}={_fmt(v)}" for c, v in per_class.items())
              + f"; {result.wall_time_s:.1f}s")
    if on_result is not None:
        on_result(result)  # out before saving, which can fail (full disk) after all the work
    if save_path is not None:
        save_model(model, save_path)
    return result


def set_op_determinism(enabled: bool) -> None:
    """Switch TensorFlow's deterministic ops on or off for the runs that follow.

    Keras 3 silently compiles without XLA while op determinism is on, so ``jit_compile=True``
    would do nothing. A config therefore chooses: bit-exact repeatability (the default) or XLA.
    TensorFlow's switch is global and only "enable" is public; a worker that trains an XLA trial
    after a deterministic one needs the internal "disable", hence the import below.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    if enabled:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save as ``.keras`` through a temporary file in the same directory, then rename.

    ``os.replace`` is atomic on one filesystem, so a crash mid-save leaves either the old file
    or none, never half a zip that fails later on load.
    """
    path = Path(path)
    if path.suffix != ".keras":
        path = path.with_name(path.name + ".keras")
    with replacing(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def _subsample(
    images: np.ndarray, masks: np.ndarray, groups: np.ndarray | None,
    max_images: int | None, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A seeded subset of ``max_images`` images (kept in file order), or everything.

    ``load_npz(max_images=..., seed=...)`` subsamples at load time; this covers data loaded in
    full and picks the same subset (stratified on big rock, same generator), so both routes
    train on the same images. The group ids (if any) follow their images.
    """
    from contract.data import subset_indices

    if max_images is None or len(images) <= max_images:
        return images, masks, groups
    keep = subset_indices(masks, max_images, seed)
    return images[keep], masks[keep], None if groups is None else groups[keep]


def _evaluate(
    model: keras.Model, images: np.ndarray, masks: np.ndarray, batch_size: int, *, tta: bool
) -> tuple[float, dict[int, float], np.ndarray]:
    """Numpy mean IoU over classes 1-4 of the model's predictions on the whole split, per-class
    IoU, and the predicted labels."""
    from worker.training.metrics import iou_per_class, mean_iou
    from worker.training.pipeline import flip_tta_predict

    if tta:
        probs = flip_tta_predict(model, images, batch_size)
    else:
        probs = model.predict(images[..., None], batch_size=batch_size, verbose=0)
    labels = np.argmax(np.asarray(probs), axis=-1).astype(masks.dtype)
    per_class = {int(c): float(v) for c, v in iou_per_class(masks, labels).items()}
    return float(mean_iou(masks, labels)), per_class, labels


def _detect_device(tf: Any, mixed_precision: str) -> DeviceInfo:
    """The device TensorFlow will use as configured now, without changing any setting."""
    gpus = [d.name for d in tf.config.get_visible_devices("GPU")]
    return plan(gpus, None, mixed_precision).device


@functools.cache
def _callbacks() -> tuple[type, type]:
    """The two Keras callback classes, defined on first use so importing this module stays
    free of TensorFlow."""
    import keras

    class History(keras.callbacks.Callback):
        """Collects one row per epoch and prints it when verbose.

        The learning rate is read at the start of the epoch, i.e. the rate the epoch trained
        with, before ReduceLROnPlateau possibly lowers it for the next one.
        """

        def __init__(self, epochs: int, out: IO[str] | None) -> None:
            super().__init__()
            self.epochs = epochs
            self.out = out
            self.rows: list[dict[str, float]] = []
            self._lr = math.nan
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._lr = float(self.model.optimizer.learning_rate.numpy())
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            row = {key: float(logs.get(key, math.nan)) for key in ("loss", "val_loss", MONITOR)}
            row["lr"] = self._lr
            self.rows.append(row)
            _say(self.out, f"epoch {epoch + 1}/{self.epochs}  loss {row['loss']:.4f}  "
                           f"val_loss {row['val_loss']:.4f}  val_miou {_fmt(row[MONITOR])}  "
                           f"lr {row['lr']:.2e}  {time.perf_counter() - self._t0:.1f}s")

    class Report(keras.callbacks.Callback):
        """Hands ``(epoch_index, val_miou)`` to the caller; its exceptions end ``fit``."""

        def __init__(self, callback: EpochCallback) -> None:
            super().__init__()
            self.callback = callback

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.callback(int(epoch), float((logs or {}).get(MONITOR, math.nan)))

    return History, Report


def _say(out: IO[str] | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
