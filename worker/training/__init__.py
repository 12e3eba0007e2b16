"""The Keras side of a trial: model, focal loss, mean-IoU metric, input pipeline, device setup, ``train``.

``worker.training.load_model(path)`` loads a saved model from any of the three commands that
write one, on either Keras backend (:mod:`worker.training.saved`).
"""

from worker.training.saved import load_model

__all__ = ["load_model"]
