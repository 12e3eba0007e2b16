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

This module runs the steps in that order; each step's parts live in a module of its own:
:mod:`~worker.training.prepared` (1, 2), :mod:`~worker.training.compiled` (the reused model),
:mod:`~worker.training.callbacks` (4), :mod:`~worker.training.evaluation` (5),
:mod:`~worker.training.progress` (phases and printed lines), :mod:`~worker.training.result`
(what a run returns). The final model on all images is :mod:`worker.training.all_data`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import dataclasses
import gc
from pathlib import Path
import sys
import time
from typing import IO, TYPE_CHECKING

import numpy as np

from contract.config import TrainConfig
from contract.trial_attrs import json_safe
from worker.training.compiled import CompiledModel, model_key
from worker.training.device import DeviceInfo, describe, detect
from worker.training.evaluation import evaluate, inference_ms_per_image
from worker.training.prepared import PreparedData
from worker.training.progress import Clock, PhaseCallback, say
from worker.training.result import TrainResult
from worker.training.saved import ModelInfo, save_model

if TYPE_CHECKING:
    import keras

    from contract.data import MarsData
    from worker.training.callbacks import EpochCallback, History


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

    ``measure_latency`` times inference after evaluation
    (:func:`worker.training.evaluation.inference_ms_per_image`); only
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
        config,
        data,
        epoch_callback=epoch_callback,
        verbose=verbose,
        save_path=save_path,
        device=device,
        phase_callback=phase_callback,
        on_result=on_result,
        measure_latency=measure_latency,
    )


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
        self._splits: dict[tuple, PreparedData] = {}
        self._models: collections.OrderedDict[tuple, CompiledModel] = collections.OrderedDict()
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

        out = sys.stdout if verbose else None
        clock = Clock(time.perf_counter(), out, phase_callback)
        if device is None:
            device = detect(config.mixed_precision)
        enable_compile_cache()
        if not self.reuse:  # before the policy is set: clearing the session resets it
            keras.utils.clear_session()
        run = self._data_step(config, data, device, clock, out)
        previous_policy = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(device.policy)
        try:
            compiled, reused_model, recorder, stopper = self._fit_step(run, epoch_callback)
            result = _evaluate_step(run, compiled, recorder, stopper, reused_model, measure_latency)
            say(out, result.summary(tta=config.tta))
            if on_result is not None:
                on_result(result)  # out before saving, which can fail (full disk) after all the work
            if save_path is not None:
                _save_step(run, compiled, result.best_miou, save_path)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        return result

    def _data_step(
        self, config: TrainConfig, data: MarsData, device: DeviceInfo, clock: Clock, out: IO[str] | None
    ) -> _Run:
        """Phase "loading data": the split (kept or made), class weights and the batch size."""
        clock.phase("loading data")
        prepared, reused_data = self.prepare(config, data)
        weights = prepared.class_weights(config)
        batch_size = min(config.batch_size, prepared.n_train)
        say(
            out,
            f"data: {prepared.n_images} images -> {prepared.n_train} train / "
            f"{prepared.n_val} val (split before augmentation); device {device.kind} "
            f"{device.name}, policy {device.policy}",
        )
        if batch_size < config.batch_size:
            say(out, f"batch size {config.batch_size} > {prepared.n_train} training images: using {batch_size}")
        clock.mark("prepare_s")
        return _Run(config, device, clock, out, prepared, weights, batch_size, reused_data)

    def _fit_step(
        self, run: _Run, epoch_callback: EpochCallback | None
    ) -> tuple[CompiledModel, bool, History, keras.callbacks.EarlyStopping]:
        """Phases "building" and "compiling"/"training": a compiled model (kept or built), reset
        to this trial, fitted; EarlyStopping restores the best epoch's weights."""
        run.clock.phase("building")
        compiled, reused_model = self.compiled(run.config, run.device, run.batch_size, run.out)
        compiled.reset(run.config, run.weights)
        run.clock.mark("build_s")
        run.clock.phase("training" if compiled.traced else "compiling")
        recorder, stopper = _fit(compiled, run, epoch_callback)
        compiled.traced = True
        return compiled, reused_model, recorder, stopper

    def prepare(self, config: TrainConfig, data: MarsData) -> tuple[PreparedData, bool]:
        """The data step: subsample and split once per (data, max_images, fraction, seed)."""
        if not self.reuse or self._data_id != id(data):
            self._splits.clear()
            self._data_id = id(data)
        key = (config.max_images, config.validation_fraction, config.seed)
        if key in self._splits:
            return self._splits[key], True
        prepared = PreparedData.make(data, config)
        if self.reuse:
            self._splits[key] = prepared
        return prepared, False

    def compiled(
        self, config: TrainConfig, device: DeviceInfo, batch_size: int, out: IO[str] | None
    ) -> tuple[CompiledModel, bool]:
        """The compile step: a compiled model for this architecture and batch, new or reused."""
        import keras

        from worker.training.backend import set_determinism

        key = model_key(config, device, batch_size)
        if self.reuse and key in self._models:
            self._models.move_to_end(key)
            return self._models[key], True
        set_determinism(not config.jit_compile)
        if config.jit_compile:
            say(out, "jit_compile: XLA on, op determinism off (runs are seeded but not bit-exact)")
        keras.utils.set_random_seed(config.seed)
        compiled = CompiledModel.build(config)
        if self.reuse:
            self._models[key] = compiled
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
                gc.collect()
        return compiled, False


@dataclasses.dataclass
class _Run:
    """One run's settings and its data step's output, handed from step to step."""

    config: TrainConfig
    device: DeviceInfo
    clock: Clock
    out: IO[str] | None
    prepared: PreparedData
    weights: np.ndarray  # class weights, from the training split
    batch_size: int
    reused_data: bool


def _fit(
    compiled: CompiledModel, run: _Run, epoch_callback: EpochCallback | None
) -> tuple[History, keras.callbacks.EarlyStopping]:
    """The fit step: seeded, with early stopping on validation mIoU; returns the callbacks
    that hold the history and the best epoch."""
    from worker.training.backend import is_tensorflow, reseed
    from worker.training.callbacks import fit_callbacks

    config, prepared, batch_size = run.config, run.prepared, run.batch_size
    callbacks, recorder, stopper = fit_callbacks(config, run.clock, run.out, epoch_callback)
    reseed(config.seed)
    if is_tensorflow():
        from worker.training.pipeline import make_eval_dataset, make_train_dataset

        train_ds = make_train_dataset(
            prepared.x_train,
            prepared.y_train,
            batch_size,
            seed=config.seed,
            augment_flips=config.augment_flips,
            shuffle=True,
        )
        val_ds = make_eval_dataset(prepared.x_val, prepared.y_val, batch_size)
        compiled.model.fit(
            train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks, verbose=0, shuffle=False
        )  # the dataset shuffles
    else:
        x, y = prepared.flipped(config.augment_flips)
        compiled.model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=config.epochs,
            shuffle=True,
            validation_data=(prepared.x_val[..., None], prepared.y_val),
            validation_batch_size=batch_size,
            callbacks=callbacks,
            verbose=0,
        )
    run.clock.mark("fit_s")
    return recorder, stopper


def _evaluate_step(
    run: _Run,
    compiled: CompiledModel,
    recorder: History,
    stopper: keras.callbacks.EarlyStopping,
    reused_model: bool,
    measure_latency: bool,
) -> TrainResult:
    """Phase "evaluating": the restored best model scored on the validation split (and timed
    when asked), and the run's result."""
    from worker.training.metrics import confusion_counts
    from worker.training.preview import sample as preview_sample

    config, prepared, clock = run.config, run.prepared, run.clock
    clock.phase("evaluating")
    best_miou, per_class, labels = evaluate(
        compiled.model, prepared.x_val, prepared.y_val, run.batch_size, tta=config.tta
    )
    clock.mark("evaluate_s")
    latency = None
    if measure_latency:
        latency = inference_ms_per_image(compiled.model, prepared.x_val, tta=config.tta)
        clock.mark("latency_s")
    timings = dict(clock.timings, epoch_s=recorder.seconds, reused_model=reused_model, reused_data=run.reused_data)
    return TrainResult(
        best_miou=best_miou,
        per_class_iou=per_class,
        epochs_run=len(recorder.rows),
        best_epoch=int(stopper.best_epoch),
        wall_time_s=time.perf_counter() - clock.started,
        history=recorder.rows,
        n_train=prepared.n_train,
        n_val=prepared.n_val,
        class_weights=[float(w) for w in run.weights],
        device=describe(run.device),
        timings=timings,
        confusion_matrix=confusion_counts(prepared.y_val, labels).tolist(),
        preview=preview_sample(prepared.x_val, prepared.y_val, labels),
        n_params=compiled.n_params(),
        inference_ms_per_image=latency,
    )


def _save_step(run: _Run, compiled: CompiledModel, best_miou: float, save_path: str | Path) -> None:
    """Phase "saving": the best model as a ``.keras`` file with its training record."""
    run.clock.phase("saving")
    save_model(
        compiled.portable(run.config, run.weights),
        save_path,
        ModelInfo(config=run.config.to_dict(), all_data=False, validation_miou=json_safe(best_miou)),
    )
    run.clock.mark("save_s")


def set_op_determinism(enabled: bool) -> None:
    """TensorFlow's deterministic ops on or off (see :func:`worker.training.backend.set_determinism`)."""
    from worker.training.backend import set_determinism

    set_determinism(enabled)
