"""A compiled model with its initial state: what a worker reuses from trial to trial.

Tracing and compiling cost a first epoch 10-20x a later one (issue 14), so a
:class:`worker.training.train.Trainer` keeps one :class:`CompiledModel` per :func:`model_key`
and starts each trial from its initial weights and optimizer state. The hyperparameters that
vary between such trials are variables (:mod:`worker.training.tunable`). Keras is imported
inside the methods, so importing this module stays free of TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.config import TrainConfig
from worker.training.device import DeviceInfo

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass
class CompiledModel:
    """A compiled model with its initial state; :meth:`reset` starts a trial from it."""

    model: keras.Model
    optimizer: Any  # worker.training.tunable.TunableAdamW
    params: Any  # worker.training.tunable.LossParams
    initial_weights: list[np.ndarray]
    initial_optimizer: list[np.ndarray]
    traced: bool = False  # train/evaluate functions traced by an earlier fit

    @classmethod
    def build(cls, config: TrainConfig) -> CompiledModel:
        import keras

        from worker.training.losses import FocalLoss
        from worker.training.metrics import MeanIoUForeground
        from worker.training.model import build_model
        from worker.training.tunable import TunableAdamW, attach

        model = build_model(config)
        params = attach(model)
        optimizer = TunableAdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
        model.compile(
            optimizer=optimizer, loss=FocalLoss(params=params), metrics=[MeanIoUForeground()], jit_compile=jit(config)
        )
        model.optimizer.build(model.trainable_variables)
        return cls(
            model,
            optimizer,
            params,
            model.get_weights(),
            [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables],
        )

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
        copy.set_weights([keras.ops.convert_to_numpy(v) for v in self.model.weights if id(v) not in own])
        copy.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay),
            loss=focal_loss(config.focal_gamma, class_weights),
            metrics=[MeanIoUForeground()],
        )
        return copy


def jit(config: TrainConfig) -> bool:
    """XLA as the config asks on TensorFlow; always on JAX, whose steps without ``jax.jit`` run
    op by op (about 100x slower on a GPU) and which is deterministic on CPU with it anyway."""
    from worker.training.backend import is_tensorflow

    return config.jit_compile or not is_tensorflow()


def model_key(config: TrainConfig, device: DeviceInfo, batch_size: int) -> tuple:
    """What a traced train step depends on: everything that is not a variable."""
    return (
        config.model,
        config.base_filters,
        config.depth,
        config.conventional_filters,
        config.residual_filters,
        config.multiscale_filters,
        config.context_filters,
        config.batchnorm_momentum,
        config.seed,
        config.jit_compile,
        device.policy,
        batch_size,
    )
