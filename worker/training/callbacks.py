"""The Keras callbacks of a run: its history, the per-epoch report, the end of compiling, the
set a trial's fit uses (:func:`fit_callbacks`), and the all-data run's epoch log.

This module imports Keras: :mod:`worker.training.train` and :mod:`worker.training.all_data`
import it inside the functions that fit, so importing those stays free of TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import time
from typing import IO, Any

import keras

from contract.config import TrainConfig
from worker.training.progress import Clock, fmt, say

EpochCallback = Callable[[int, float], None]
#: What learning-rate reduction, early stopping and the per-epoch report watch.
MONITOR = "val_miou"


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
        say(
            self.out,
            f"epoch {epoch + 1}/{self.epochs}  loss {row['loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_miou {fmt(row[MONITOR])}  "
            f"lr {row['lr']:.2e}  {self.seconds[-1]:.1f}s",
        )


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

    def __init__(self, clock: Clock) -> None:
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


def fit_callbacks(
    config: TrainConfig, clock: Clock, out: IO[str] | None, epoch_callback: EpochCallback | None
) -> tuple[list[keras.callbacks.Callback], History, keras.callbacks.EarlyStopping]:
    """A trial's fit callbacks, and of them the history and early stopping (on validation mIoU,
    restoring the best epoch's weights)."""
    recorder = History(config.epochs, out)
    stopper = keras.callbacks.EarlyStopping(
        monitor=MONITOR,
        mode="max",
        patience=config.early_stopping_patience,
        restore_best_weights=True,
    )
    callbacks: list[keras.callbacks.Callback] = [
        FirstBatch(clock),
        recorder,
        keras.callbacks.ReduceLROnPlateau(
            monitor=MONITOR,
            mode="max",
            factor=config.reduce_lr_factor,
            patience=config.reduce_lr_patience,
            min_lr=config.min_learning_rate,
        ),
        stopper,
    ]
    if epoch_callback is not None:
        callbacks.append(Report(epoch_callback))
    return callbacks, recorder, stopper


class EpochLog(keras.callbacks.Callback):
    """Keeps (and prints) each epoch's learning rate and training loss: the all-data run's
    history, which has no validation split."""

    def __init__(self, epochs: int, out: IO[str] | None) -> None:
        super().__init__()
        self.epochs = epochs
        self.out = out
        self.rates: list[float] = []
        self.losses: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.losses.append(float((logs or {}).get("loss", math.nan)))
        say(self.out, f"epoch {epoch + 1}/{self.epochs}  loss {self.losses[-1]:.4f}  lr {self.rates[-1]:.2e}")
