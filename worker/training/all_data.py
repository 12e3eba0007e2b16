"""``worker train --all-data``: the final model, trained on training and validation images.

Without a validation split nothing can stop early or lower the learning rate on a plateau, so
the run replays the trial's learning rate per epoch (``config.lr_schedule``, written by
``tuner export``). Keras is imported inside the functions, so importing this module stays free
of TensorFlow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from contract.config import TrainConfig
from worker.training.compiled import CompiledModel
from worker.training.device import DeviceInfo, detect
from worker.training.prepared import subsample
from worker.training.progress import say
from worker.training.saved import ModelInfo, save_model

if TYPE_CHECKING:
    import keras

    from contract.data import MarsData
    from worker.training.callbacks import EpochLog


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

    ``config.lr_schedule`` (from ``tuner export``) holds the learning rate each epoch of the
    trial had, up to its best epoch, and its length is the number of epochs. A config without
    one trains ``config.epochs`` epochs at ``config.learning_rate``. Class weights come from all
    the images' masks (they are all training data now); flips augment them all as in the trial.
    The saved model records ``all_data`` and no validation score
    (:class:`worker.training.saved.ModelInfo`).
    """
    import keras

    from worker.training.callbacks import EpochLog

    started = time.perf_counter()
    out = sys.stdout if verbose else None
    device = device or detect(config.mixed_precision)
    replayed = config.lr_schedule is not None
    schedule = list(config.lr_schedule or [config.learning_rate] * config.epochs)
    images, masks = subsample(
        np.asarray(data.images), np.asarray(data.masks), data.groups, config.max_images, config.seed
    )[:2]
    say(
        out,
        f"data: all {len(images)} images train (no validation split); {len(schedule)} epochs, "
        + (
            "the trial's learning rate per epoch"
            if replayed
            else f"learning rate {config.learning_rate:g} throughout (the config has no lr_schedule)"
        ),
    )
    keras.utils.clear_session()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(device.policy)
    try:
        log = EpochLog(len(schedule), out)
        _build_fit_save(config, images, masks, schedule, log, save_path)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return AllDataResult(
        n_images=len(images),
        epochs=len(schedule),
        learning_rates=log.rates,
        losses=log.losses,
        wall_time_s=time.perf_counter() - started,
        replayed=replayed,
    )


def _build_fit_save(
    config: TrainConfig,
    images: np.ndarray,
    masks: np.ndarray,
    schedule: list[float],
    log: EpochLog,
    save_path: str | Path,
) -> None:
    """Build the model (seeded), fit it on every image, save it with the run's record; class
    weights come from all the images' masks."""
    import keras

    from worker.training.backend import set_determinism
    from worker.training.losses import class_weights_from_masks

    weights = np.asarray(
        class_weights_from_masks(masks, scheme=config.class_weights, background_weight=config.background_weight)
    )
    set_determinism(not config.jit_compile)
    keras.utils.set_random_seed(config.seed)
    compiled = CompiledModel.build(config)
    compiled.reset(config, weights)
    _fit(compiled.model, config, images, masks, min(config.batch_size, len(images)), schedule, log)
    save_model(
        compiled.portable(config, weights),
        save_path,
        ModelInfo(config=config.to_dict(), all_data=True, validation_miou=None),
    )


def _fit(
    model: keras.Model,
    config: TrainConfig,
    images: np.ndarray,
    masks: np.ndarray,
    batch_size: int,
    schedule: list[float],
    log: EpochLog,
) -> None:
    """Fit every image for ``len(schedule)`` epochs at the scheduled learning rates, seeded and
    flip-augmented as a trial's fit."""
    import keras

    from worker.training.backend import is_tensorflow, reseed

    callbacks = [keras.callbacks.LearningRateScheduler(lambda epoch, _lr: schedule[epoch]), log]
    reseed(config.seed)
    if is_tensorflow():
        from worker.training.pipeline import make_train_dataset

        dataset = make_train_dataset(
            images, masks, batch_size, seed=config.seed, augment_flips=config.augment_flips, shuffle=True
        )
        model.fit(dataset, epochs=len(schedule), callbacks=callbacks, verbose=0, shuffle=False)
    else:
        from worker.training.batches import flipped

        x, y = flipped(images, masks, config.augment_flips)
        model.fit(x, y, batch_size=batch_size, epochs=len(schedule), shuffle=True, callbacks=callbacks, verbose=0)
