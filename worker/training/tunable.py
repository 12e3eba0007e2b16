"""Trial hyperparameters held in variables, so a traced train step serves many trials.

A compiled train step bakes in every Python number it reads while it is traced. Learning rate
(already a variable in Keras), weight decay, focal gamma and class weights differ from trial to
trial, so they live in variables here and are *assigned* per trial: the same traced (TensorFlow)
or jitted (JAX) functions then train every trial of one architecture and batch size.

Where a variable lives matters on JAX, whose train step is a pure function of the model's and
the optimizer's variables: anything else read inside it is a constant of the trace. So the loss
parameters are non-trainable weights of a layer attached to the model (:func:`attach`), and the
weight decay is a variable of the optimizer (:class:`TunableAdamW`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from worker.training.metrics import NUM_CLASSES


class LossParams(keras.layers.Layer):
    """Focal gamma and class weights as non-trainable weights; never called, only read."""

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gamma = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32", name="gamma")
        self.class_weights = self.add_weight(
            shape=(num_classes,), initializer="ones", trainable=False, dtype="float32", name="class_weights"
        )
        self.built = True

    def set(self, gamma: float, class_weights: Sequence[float]) -> None:
        self.gamma.assign(np.float32(gamma))
        self.class_weights.assign(np.asarray(class_weights, dtype=np.float32))

    def call(self, inputs):  # pragma: no cover - a holder, not part of the graph
        return inputs


def attach(model: keras.Model) -> LossParams:
    """Give ``model`` a :class:`LossParams` as a tracked attribute, so its weights travel with
    the model's state (JAX passes them into the train step instead of freezing them)."""
    params = LossParams(name="loss_params")
    model.loss_params = params
    return params


@keras.saving.register_keras_serializable(package="mars_tuner")
class TunableAdamW(keras.optimizers.AdamW):
    """AdamW whose weight decay is a variable (Keras keeps it as a Python float)."""

    def __init__(self, learning_rate: float = 1e-3, weight_decay: float = 0.004, **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        with keras.name_scope(self.name):
            variable = keras.Variable(
                float(weight_decay),
                name="weight_decay",
                dtype=keras.backend.floatx(),
                trainable=False,
                aggregation="only_first_replica",
            )
        self._track_variable(variable)
        self.weight_decay = variable

    def set(self, learning_rate: float, weight_decay: float) -> None:
        self.learning_rate = float(learning_rate)
        self.weight_decay.assign(float(weight_decay))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["weight_decay"] = float(np.asarray(keras.ops.convert_to_numpy(self.weight_decay)))
        return config
