"""The evaluate step: score the restored best model on the validation split, and time it.

The score is the numpy metric over the whole split (flip TTA when ``config.tta``), the number a
trial reports as ``best_miou``; the per-epoch Keras ``val_miou`` only drives the callbacks.
Keras is imported inside the functions, so importing this module stays free of TensorFlow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

#: Latency: validation images per timed forward pass, and timed passes after one warm-up.
LATENCY_IMAGES = 8
LATENCY_RUNS = 5


def evaluate(
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
