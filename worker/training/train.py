"""One training run: ``train(config, data) -> TrainResult``.

The order of operations is the point of this module, because the seed project got it wrong:

1. subsample (``config.max_images``) and split train/validation *before* any augmentation, so no
   flipped copy of a validation image is ever trained on;
2. compute class weights from the *training* split's masks only;
3. flip-augment the training split only (TensorFlow: lazily in ``tf.data``; JAX: a numpy
   copy x4 made once per worker process, no TensorFlow needed);
4. monitor the foreground mean IoU (classes 1-4) on the validation split for learning-rate
   reduction, early stopping (restoring the best weights) and the per-epoch callback that the
   trial loop uses for pruning;
5. re-evaluate the restored best model on the validation split with the numpy metric (flip TTA
   when ``config.tta``). That evaluation is the number reported as ``best_miou``; the per-epoch
   Keras ``val_miou`` values only drive the callbacks and the history.

Runs are seeded and TensorFlow op determinism is enabled, so two runs of the same config on the
same data and machine give bit-identical histories on CPU.

A worker trains many trials in one process, so the steps are separate (data, compile, fit,
evaluate) and a :class:`Trainer` keeps what does not change between trials: the split data and
the compiled models with their traced train/evaluate/predict functions. That cut is the point of
issue 14: tracing and compiling cost a first epoch 10-20x a later one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import dataclasses
import functools
import gc
import math
from pathlib import Path
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from contract.config import TrainConfig
from worker.training.device import DeviceInfo, describe, plan
from worker.training.saved import ModelInfo, save_model

if TYPE_CHECKING:
    import keras

    from contract.data import MarsData

EpochCallback = Callable[[int, float], None]
MONITOR = "val_miou"
#: Latency: validation images per timed forward pass, and timed passes after one warm-up.
LATENCY_IMAGES = 8
LATENCY_RUNS = 5


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
    # seconds per step (prepare_s, build_s, first_batch_s, fit_s, epoch_s, evaluate_s, save_s)
    # and whether the data split and the compiled model were reused from an earlier trial
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None  # [true][predicted] pixels, best model, validation
    n_params: int | None = None  # the model's parameter count, as keras count_params
    inference_ms_per_image: float | None = None  # measured only when asked (see Trainer.train)
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


PhaseCallback = Callable[[str], None]


def train(
    config: TrainConfig,
    data: MarsData,
    *,
    epoch_callback: EpochCallback | None = None,
    verbose: bool = True,
    save_path: str | Path | None = None,
    device: DeviceInfo | None = None,
    trainer: Trainer | None = None,
    phase_callback: PhaseCallback | None = None,
    on_result: Callable[[TrainResult], None] | None = None,
    measure_latency: bool = False,
) -> TrainResult:
    """Train ``config`` on ``data`` and evaluate the best epoch on the validation split.

    ``measure_latency`` times inference after evaluation (:func:`inference_ms_per_image`); only
    a study whose cost is latency pays for it.

    ``on_result(result)`` runs before the model is saved, so the score is out (printed, written)
    even when saving then fails (full disk) after all the work.

    ``epoch_callback(epoch_index, val_miou)`` runs after every epoch; whatever it raises (for
    example ``optuna.TrialPruned``) stops training and propagates unchanged.
    ``phase_callback(phase)`` hears each of ``contract.trial_attrs.PHASES`` as the run enters it.
    ``device`` is what :func:`worker.training.device.configure` returned; without it the device
    is detected and ``config.mixed_precision`` decides the precision. ``save_path`` receives the
    best model as a ``.keras`` file, written atomically.

    A worker passes its one :class:`Trainer`, which keeps the prepared data and the compiled
    models between trials. Without one, the run starts from a clean Keras session and keeps
    nothing (``keras.utils.clear_session``), as a one-off ``worker train`` should.
    """
    return (trainer or Trainer(reuse=False)).train(
        config, data, epoch_callback=epoch_callback, verbose=verbose, save_path=save_path,
        device=device, phase_callback=phase_callback, on_result=on_result, measure_latency=measure_latency,
    )


@dataclasses.dataclass
class AllDataResult:
    """What :func:`train_all_data` did. There is no validation score: every image trained."""

    n_images: int
    epochs: int
    learning_rates: list[float]  # per epoch, as replayed
    losses: list[float]  # training loss per epoch
    wall_time_s: float
    replayed: bool  # True: the trial's recorded schedule; False: ``epochs`` at ``learning_rate``


def train_all_data(
    config: TrainConfig,
    data: MarsData,
    *,
    save_path: str | Path,
    verbose: bool = True,
    device: DeviceInfo | None = None,
) -> AllDataResult:
    """Train on training and validation images together, then save the model.

    Without a validation split nothing can stop early or lower the learning rate on a plateau,
    so the run replays the trial: ``config.lr_schedule`` (from ``tuner export``) holds the
    learning rate each epoch of the trial had, up to its best epoch, and its length is the
    number of epochs. A config without one trains ``config.epochs`` epochs at
    ``config.learning_rate``. Class weights come from all the images' masks (they are all
    training data now); flips augment them all as in the trial. The saved model records
    ``all_data`` and no validation score (:class:`worker.training.saved.ModelInfo`).
    """
    import keras

    from worker.training.backend import is_tensorflow, reseed, set_determinism
    from worker.training.losses import class_weights_from_masks

    started = time.perf_counter()
    out = sys.stdout if verbose else None
    device = device or _detect_device(config.mixed_precision)
    replayed = config.lr_schedule is not None
    schedule = list(config.lr_schedule or [config.learning_rate] * config.epochs)
    images, masks, _ = _subsample(np.asarray(data.images), np.asarray(data.masks), data.groups,
                                  config.max_images, config.seed)
    weights = np.asarray(class_weights_from_masks(masks, scheme=config.class_weights,
                                                  background_weight=config.background_weight))
    batch_size = min(config.batch_size, len(images))
    _say(out, f"data: all {len(images)} images train (no validation split); {len(schedule)} epochs, "
              + ("the trial's learning rate per epoch" if replayed else
                 f"learning rate {config.learning_rate:g} throughout (the config has no lr_schedule)"))
    keras.utils.clear_session()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(device.policy)
    try:
        set_determinism(not config.jit_compile)
        keras.utils.set_random_seed(config.seed)
        compiled = _Compiled.build(config)
        compiled.reset(config, weights)
        log = _epoch_log(len(schedule), out)
        callbacks = [keras.callbacks.LearningRateScheduler(lambda epoch, _lr: schedule[epoch]), log]
        reseed(config.seed)
        if is_tensorflow():
            from worker.training.pipeline import make_train_dataset

            dataset = make_train_dataset(images, masks, batch_size, seed=config.seed,
                                         augment_flips=config.augment_flips, shuffle=True)
            compiled.model.fit(dataset, epochs=len(schedule), callbacks=callbacks, verbose=0, shuffle=False)
        else:
            from worker.training.batches import flipped

            x, y = flipped(images, masks, config.augment_flips)
            compiled.model.fit(x, y, batch_size=batch_size, epochs=len(schedule), shuffle=True,
                               callbacks=callbacks, verbose=0)
        save_model(compiled.portable(config, weights), save_path,
                   ModelInfo(config=config.to_dict(), all_data=True, validation_miou=None))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return AllDataResult(n_images=len(images), epochs=len(schedule), learning_rates=log.rates,
                         losses=log.losses, wall_time_s=time.perf_counter() - started, replayed=replayed)


def _epoch_log(epochs: int, out: IO[str] | None) -> Any:
    """A callback that keeps (and prints) each epoch's learning rate and training loss."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rates: list[float] = []
            self.losses: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.losses.append(float((logs or {}).get("loss", math.nan)))
            _say(out, f"epoch {epoch + 1}/{epochs}  loss {self.losses[-1]:.4f}  lr {self.rates[-1]:.2e}")

    return EpochLog()


class Trainer:
    """Trains trial after trial in one worker process, paying the fixed costs once.

    The steps of a run: :meth:`prepare` (subsample, split, class weights; cached per split),
    :meth:`compiled` (build and compile, or reuse a compiled model of the same architecture,
    batch size and precision, reset to its initial weights and a fresh optimizer state), fit and
    evaluate. Learning rate, weight decay, focal gamma and class weights are variables
    (:mod:`worker.training.tunable`), so a reused model's traced functions train any of them.
    A reused model trains exactly as a freshly built one with the same seed would.

    ``reuse=False`` keeps nothing and clears the Keras session per run (the one-off path).
    """

    def __init__(self, *, reuse: bool = True, max_models: int = 4) -> None:
        self.reuse = reuse
        self.max_models = max_models
        self._splits: dict[tuple, _Prepared] = {}
        self._models: collections.OrderedDict[tuple, _Compiled] = collections.OrderedDict()
        self._data_id: int | None = None

    def train(
        self,
        config: TrainConfig,
        data: MarsData,
        *,
        epoch_callback: EpochCallback | None = None,
        phase_callback: PhaseCallback | None = None,
        verbose: bool = True,
        save_path: str | Path | None = None,
        device: DeviceInfo | None = None,
        on_result: Callable[[TrainResult], None] | None = None,
        measure_latency: bool = False,
    ) -> TrainResult:
        """One run; see :func:`train`."""
        import keras

        from worker.training.backend import enable_compile_cache
        from worker.training.metrics import confusion_counts
        from worker.training.preview import sample as preview_sample

        started = time.perf_counter()
        out = sys.stdout if verbose else None
        clock = _Clock(started, out, phase_callback)
        if device is None:
            device = _detect_device(config.mixed_precision)
        enable_compile_cache()
        if not self.reuse:  # before the policy is set: clearing the session resets it
            keras.utils.clear_session()

        clock.phase("loading data")
        prepared, reused_data = self.prepare(config, data)
        weights = prepared.class_weights(config)
        batch_size = min(config.batch_size, prepared.n_train)
        _say(out, f"data: {prepared.n_images} images -> {prepared.n_train} train / "
                  f"{prepared.n_val} val (split before augmentation); device {device.kind} "
                  f"{device.name}, policy {device.policy}")
        if batch_size < config.batch_size:
            _say(out, f"batch size {config.batch_size} > {prepared.n_train} training images: "
                      f"using {batch_size}")
        clock.mark("prepare_s")

        previous_policy = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(device.policy)
        try:
            clock.phase("building")
            compiled, reused_model = self.compiled(config, device, batch_size, out)
            compiled.reset(config, weights)
            clock.mark("build_s")
            clock.phase("training" if compiled.traced else "compiling")
            recorder, stopper = _fit(compiled, config, prepared, batch_size, clock, epoch_callback, out)
            compiled.traced = True
            clock.phase("evaluating")
            # EarlyStopping has restored the best epoch's weights by now.
            best_miou, per_class, labels = _evaluate(compiled.model, prepared.x_val, prepared.y_val,
                                                     batch_size, tta=config.tta)
            clock.mark("evaluate_s")
            latency = None
            if measure_latency:
                latency = inference_ms_per_image(compiled.model, prepared.x_val, tta=config.tta)
                clock.mark("latency_s")
            timings = dict(clock.timings, epoch_s=recorder.seconds, reused_model=reused_model,
                           reused_data=reused_data)
            result = TrainResult(
                best_miou=best_miou,
                per_class_iou=per_class,
                epochs_run=len(recorder.rows),
                best_epoch=int(stopper.best_epoch),
                wall_time_s=time.perf_counter() - started,
                history=recorder.rows,
                n_train=prepared.n_train,
                n_val=prepared.n_val,
                class_weights=[float(w) for w in weights],
                device=describe(device),
                timings=timings,
                confusion_matrix=confusion_counts(prepared.y_val, labels).tolist(),
                preview=preview_sample(prepared.x_val, prepared.y_val, labels),
                n_params=compiled.n_params(),
                inference_ms_per_image=latency,
            )
            _say(out, f"best epoch {result.best_epoch + 1}: validation mIoU {_fmt(best_miou)}"
                      f"{' (flip TTA)' if config.tta else ''}; "
                      + " ".join(f"c{c}={_fmt(v)}" for c, v in per_class.items())
                      + f"; {result.n_params:,} params"
                      + (f", {latency:.3g} ms/image" if latency is not None else "")
                      + f"; {result.wall_time_s:.1f}s")
            if on_result is not None:
                on_result(result)  # out before saving, which can fail (full disk) after all the work
            if save_path is not None:
                clock.phase("saving")
                save_model(compiled.portable(config, weights), save_path,
                           ModelInfo(config=config.to_dict(), all_data=False,
                                     validation_miou=_json_safe(best_miou)))
                clock.mark("save_s")
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        return result

    def prepare(self, config: TrainConfig, data: MarsData) -> tuple[_Prepared, bool]:
        """The data step: subsample and split once per (data, max_images, fraction, seed)."""
        if not self.reuse or self._data_id != id(data):
            self._splits.clear()
            self._data_id = id(data)
        key = (config.max_images, config.validation_fraction, config.seed)
        if key in self._splits:
            return self._splits[key], True
        prepared = _Prepared.make(data, config)
        if self.reuse:
            self._splits[key] = prepared
        return prepared, False

    def compiled(self, config: TrainConfig, device: DeviceInfo, batch_size: int,
                 out: IO[str] | None) -> tuple[_Compiled, bool]:
        """The compile step: a compiled model for this architecture and batch, new or reused."""
        import keras

        from worker.training.backend import set_determinism

        key = _model_key(config, device, batch_size)
        if self.reuse and key in self._models:
            self._models.move_to_end(key)
            return self._models[key], True
        set_determinism(not config.jit_compile)
        if config.jit_compile:
            _say(out, "jit_compile: XLA on, op determinism off (runs are seeded but not bit-exact)")
        keras.utils.set_random_seed(config.seed)
        compiled = _Compiled.build(config)
        if self.reuse:
            self._models[key] = compiled
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
                gc.collect()
        return compiled, False


def _jit(config: TrainConfig) -> bool:
    """XLA as the config asks on TensorFlow; always on JAX, whose steps without ``jax.jit`` run
    op by op (about 100x slower on a GPU) and which is deterministic on CPU with it anyway."""
    from worker.training.backend import is_tensorflow

    return config.jit_compile or not is_tensorflow()


def _model_key(config: TrainConfig, device: DeviceInfo, batch_size: int) -> tuple:
    """What a traced train step depends on: everything that is not a variable."""
    return (config.model, config.base_filters, config.depth, config.conventional_filters,
            config.residual_filters, config.multiscale_filters, config.context_filters,
            config.batchnorm_momentum, config.seed, config.jit_compile, device.policy,
            batch_size)


@dataclasses.dataclass
class _Prepared:
    """The split arrays of one (data, max_images, validation fraction, seed)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_images: int
    _weights: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict)
    _flipped: dict[bool, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

    @classmethod
    def make(cls, data: MarsData, config: TrainConfig) -> _Prepared:
        from contract.data import split

        images, masks, groups = _subsample(np.asarray(data.images), np.asarray(data.masks),
                                           data.groups, config.max_images, config.seed)
        train_idx, val_idx = split(masks, config.validation_fraction, config.seed, groups)
        return cls(images[train_idx], masks[train_idx], images[val_idx], masks[val_idx],
                   len(images))

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_val(self) -> int:
        return len(self.x_val)

    def class_weights(self, config: TrainConfig) -> np.ndarray:
        """From the training split's masks only (never validation)."""
        from worker.training.losses import class_weights_from_masks

        key = (config.class_weights, config.background_weight)
        if key not in self._weights:
            self._weights[key] = np.asarray(
                class_weights_from_masks(self.y_train, scheme=config.class_weights,
                                         background_weight=config.background_weight),
                dtype=np.float64)
        return self._weights[key]

    def flipped(self, augment_flips: bool) -> tuple[np.ndarray, np.ndarray]:
        """The numpy training set (x4 with flips), made once: the JAX backend's data path."""
        from worker.training.batches import flipped

        if augment_flips not in self._flipped:
            self._flipped[augment_flips] = flipped(self.x_train, self.y_train, augment_flips)
        return self._flipped[augment_flips]


@dataclasses.dataclass
class _Compiled:
    """A compiled model with its initial state; :meth:`reset` starts a trial from it."""

    model: keras.Model
    optimizer: Any  # worker.training.tunable.TunableAdamW
    params: Any  # worker.training.tunable.LossParams
    initial_weights: list[np.ndarray]
    initial_optimizer: list[np.ndarray]
    traced: bool = False  # train/evaluate functions traced by an earlier fit

    @classmethod
    def build(cls, config: TrainConfig) -> _Compiled:
        import keras

        from worker.training.losses import FocalLoss
        from worker.training.metrics import MeanIoUForeground
        from worker.training.model import build_model
        from worker.training.tunable import TunableAdamW, attach

        model = build_model(config)
        params = attach(model)
        optimizer = TunableAdamW(learning_rate=config.learning_rate,
                                 weight_decay=config.weight_decay)
        model.compile(optimizer=optimizer, loss=FocalLoss(params=params),
                      metrics=[MeanIoUForeground()], jit_compile=_jit(config))
        model.optimizer.build(model.trainable_variables)
        return cls(model, optimizer, params, model.get_weights(),
                   [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])

    def reset(self, config: TrainConfig, class_weights: np.ndarray) -> None:
        """Initial weights, a fresh optimizer state, and this trial's hyperparameters."""
        self.model.set_weights(self.initial_weights)
        for variable, value in zip(self.model.optimizer.variables, self.initial_optimizer, strict=False):
            variable.assign(value)
        self.optimizer.set(config.learning_rate, config.weight_decay)
        self.params.set(config.focal_gamma, class_weights)

    def n_params(self) -> int:
        """The model's parameter count as ``count_params`` of a plain built model gives it: the
        tunable loss values attached to this one (focal gamma, class weights) are not the model's."""
        own = {id(v) for v in self.params.weights}
        return int(sum(math.prod(v.shape) for v in self.model.weights if id(v) not in own))

    def portable(self, config: TrainConfig, class_weights: np.ndarray) -> keras.Model:
        """A copy without the variable holders, compiled with plain values: what a ``.keras``
        file should hold (it loads anywhere this package's losses are importable)."""
        import keras

        from worker.training.losses import focal_loss
        from worker.training.metrics import MeanIoUForeground

        copy = keras.models.clone_model(self.model)
        own = {id(v) for v in self.params.weights}
        copy.set_weights([keras.ops.convert_to_numpy(v) for v in self.model.weights
                          if id(v) not in own])
        copy.compile(optimizer=keras.optimizers.AdamW(learning_rate=config.learning_rate,
                                                      weight_decay=config.weight_decay),
                     loss=focal_loss(config.focal_gamma, class_weights),
                     metrics=[MeanIoUForeground()])
        return copy


def _fit(compiled: _Compiled, config: TrainConfig, prepared: _Prepared, batch_size: int,
         clock: _Clock, epoch_callback: EpochCallback | None, out: IO[str] | None):
    """The fit step: seeded, with early stopping on validation mIoU; returns the callbacks
    that hold the history and the best epoch."""
    import keras

    from worker.training.backend import is_tensorflow, reseed

    history_class, report_class, first_batch_class = _callbacks()
    recorder = history_class(config.epochs, out)
    stopper = keras.callbacks.EarlyStopping(
        monitor=MONITOR, mode="max", patience=config.early_stopping_patience,
        restore_best_weights=True,
    )
    callbacks: list[keras.callbacks.Callback] = [
        first_batch_class(clock),
        recorder,
        keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR, mode="max", factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience, min_lr=config.min_learning_rate,
        ),
        stopper,
    ]
    if epoch_callback is not None:
        callbacks.append(report_class(epoch_callback))
    reseed(config.seed)
    if is_tensorflow():
        from worker.training.pipeline import make_eval_dataset, make_train_dataset

        train_ds = make_train_dataset(prepared.x_train, prepared.y_train, batch_size,
                                      seed=config.seed, augment_flips=config.augment_flips,
                                      shuffle=True)
        val_ds = make_eval_dataset(prepared.x_val, prepared.y_val, batch_size)
        compiled.model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                           callbacks=callbacks, verbose=0, shuffle=False)  # the dataset shuffles
    else:
        x, y = prepared.flipped(config.augment_flips)
        compiled.model.fit(x, y, batch_size=batch_size, epochs=config.epochs, shuffle=True,
                           validation_data=(prepared.x_val[..., None], prepared.y_val),
                           validation_batch_size=batch_size, callbacks=callbacks, verbose=0)
    clock.mark("fit_s")
    return recorder, stopper


#: What a phase line adds where a new user would otherwise wonder why nothing happens.
_PHASE_HINTS = {
    "compiling": ": the first epoch of each new model shape is traced and compiled first, "
                 "tens of seconds without output on a CPU",
}


class _Clock:
    """Phase changes (told to the caller and printed) and the seconds since the run started."""

    def __init__(self, started: float, out: IO[str] | None, callback: PhaseCallback | None):
        self.started, self.out, self.callback = started, out, callback
        self.timings: dict[str, float] = {}
        self._last = started
        self.current = ""

    def phase(self, name: str) -> None:
        """Announce phase ``name``; the time is when it starts (seconds into the run), not its length."""
        self.current = name
        hint = _PHASE_HINTS.get(name, "")
        _say(self.out, f"phase: {name} (from {time.perf_counter() - self.started:.1f}s into the trial){hint}")
        if self.callback is not None:
            self.callback(name)

    def mark(self, key: str) -> None:
        """Record the seconds spent since the previous mark under ``key``."""
        now = time.perf_counter()
        self.timings[key] = now - self._last
        self._last = now

    def first_batch(self) -> None:
        self.timings["first_batch_s"] = time.perf_counter() - self.started


def set_op_determinism(enabled: bool) -> None:
    """TensorFlow's deterministic ops on or off (see :func:`worker.training.backend.set_determinism`)."""
    from worker.training.backend import set_determinism

    set_determinism(enabled)


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
    from worker.training.batches import flip_tta_predict
    from worker.training.metrics import score

    if tta:
        probs = flip_tta_predict(model, images, batch_size)
    else:
        probs = model.predict(images[..., None], batch_size=batch_size, verbose=0)
    labels = np.argmax(np.asarray(probs), axis=-1).astype(masks.dtype)
    scored = score(masks, labels)
    per_class = {int(c): float(v) for c, v in scored.per_class.items()}
    return scored.miou, per_class, labels


def inference_ms_per_image(model: keras.Model, images: np.ndarray, *, tta: bool) -> float:
    """Milliseconds per image of inference on this process's device: the median of
    :data:`LATENCY_RUNS` timed passes over the first :data:`LATENCY_IMAGES` validation images,
    after one untimed warm-up pass (tracing, allocation).

    One pass is one forward call on the batch, or four (the flips) with flip TTA, as the
    prediction that scored the trial. ``predict_on_batch`` returns numpy, so asynchronous
    backends (JAX, GPUs) have finished when the clock stops.
    """
    from worker.training.batches import FLIP_AXES

    x = np.asarray(images[:LATENCY_IMAGES], dtype=np.float32)[..., None]
    inputs = [np.ascontiguousarray(np.flip(x, axis=a)) if a else x for a in FLIP_AXES] if tta else [x]

    def one_pass() -> None:
        for batch in inputs:
            np.asarray(model.predict_on_batch(batch))

    one_pass()  # warm-up: not timed
    seconds = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        one_pass()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)) * 1000.0 / len(x)


def _detect_device(mixed_precision: str) -> DeviceInfo:
    """The device the backend will use as configured now, without changing any setting."""
    from worker.training.backend import gpu_names

    return plan(gpu_names(), None, mixed_precision).device


@functools.cache
def _callbacks() -> tuple[type, type, type]:
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
            self.seconds: list[float] = []  # wall time per epoch, validation included
            self._lr = math.nan
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            row = {key: float(logs.get(key, math.nan)) for key in ("loss", "val_loss", MONITOR)}
            row["lr"] = self._lr
            self.rows.append(row)
            self.seconds.append(time.perf_counter() - self._t0)
            _say(self.out, f"epoch {epoch + 1}/{self.epochs}  loss {row['loss']:.4f}  "
                           f"val_loss {row['val_loss']:.4f}  val_miou {_fmt(row[MONITOR])}  "
                           f"lr {row['lr']:.2e}  {self.seconds[-1]:.1f}s")

    class Report(keras.callbacks.Callback):
        """Hands ``(epoch_index, val_miou)`` to the caller; its exceptions end ``fit``."""

        def __init__(self, callback: EpochCallback) -> None:
            super().__init__()
            self.callback = callback

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.callback(int(epoch), float((logs or {}).get(MONITOR, math.nan)))

    class FirstBatch(keras.callbacks.Callback):
        """Marks the end of compiling (the first batch dispatched) and moves the phase from
        "compiling" to "training".

        It listens at the *start* of the second batch, not at the end of the first: a
        ``on_train_batch_end`` hook makes Keras turn every step's logs into Python floats,
        which on JAX waits for the device after each batch (measured on an H100: the worker
        trained 24% slower than a plain ``fit``). A jitted step is compiled when it is first
        called, so by the second batch's start the compile is done. Epochs of one batch
        fall back to the end of the epoch.
        """

        def __init__(self, clock: _Clock) -> None:
            super().__init__()
            self.clock = clock
            self.done = False

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if batch >= 1:
                self._mark()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._mark()

        def _mark(self) -> None:
            if self.done:
                return
            self.done = True
            self.clock.first_batch()
            if self.clock.current != "training":
                self.clock.phase("training")

    return History, Report, FirstBatch


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
