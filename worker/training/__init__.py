"""The Keras side of a trial: model, focal loss, mean-IoU metric, input pipeline, device setup, ``train``."""
