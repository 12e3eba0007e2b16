"""The challenge file's format: image shape, classes, pixel range, and :class:`DataError`.

What every data module (:mod:`contract.data`, :mod:`contract.npz_file`, :mod:`contract.splitting`,
:mod:`contract.synth`) and ``worker predict`` share; numpy only.

The challenge file holds ``training_set`` with shape (N, 2, 64, 128): ``[:, 0]`` is a grayscale
image with whole-number values 0..255 and ``[:, 1]`` its label mask with values in {0..4}
(0 background/unlabelled, 1 soil, 2 bedrock, 3 sand, 4 big rock). An optional ``test_set``
(M, 64, 128) holds unlabelled images, and an optional ``groups`` (N,) one source-photo id per
training image.
"""

from __future__ import annotations

import numpy as np

from contract.errors import TunerError

IMAGE_HEIGHT = 64
IMAGE_WIDTH = 128
IMAGE_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH)
NUM_CLASSES = 5
CLASS_NAMES = ("background", "soil", "bedrock", "sand", "big_rock")
BIG_ROCK = 4


class DataError(TunerError, ValueError):
    """A data file or array that cannot be used; the message is one line for the user."""


def normalise(images: np.ndarray) -> np.ndarray:
    """Pixels 0..255 -> float32 in [0, 1]: the one scaling training and ``worker predict`` share."""
    out = images.astype(np.float32)
    out /= np.float32(255.0)
    return out
