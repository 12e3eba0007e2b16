"""A small PNG of validation images with their true and predicted masks, side by side.

A worker uploads one per new best trial (next to the model artifact), and ``tuner report``
embeds the best trial's, so a reader sees what a mean IoU of 0.7 looks like. numpy composes the
grid; Pillow only encodes it (no TensorFlow, no matplotlib).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from contract.trial_attrs import CLASS_COLOURS

#: Class colours (RGB): 0 background black, 1 soil, 2 bedrock, 3 sand, 4 big rock.
PALETTE = np.array(CLASS_COLOURS, dtype=np.uint8)
N_IMAGES = 6
SCALE = 2  # 64x128 tiles are small: each pixel becomes SCALE x SCALE
GAP = 4  # white pixels between tiles


@dataclasses.dataclass(frozen=True)
class PreviewSample:
    """A few images (grayscale, any range) with predicted and, when known, true labels."""

    images: np.ndarray  # (n, H, W)
    truth: np.ndarray | None  # (n, H, W) ints 0-4; None for unlabelled images (worker predict)
    prediction: np.ndarray  # (n, H, W) ints 0-4


def sample(images: np.ndarray, truth: np.ndarray, prediction: np.ndarray, n: int = N_IMAGES) -> PreviewSample:
    """``n`` images spread evenly over the split (the same ones for every trial of a study,
    since the split is seeded), copied so the caller's arrays can be freed."""
    count = len(images)
    index = np.unique(np.linspace(0, count - 1, num=min(n, count)).round().astype(int)) if count else []
    return PreviewSample(
        images=np.array(images[index]), truth=np.array(truth[index]), prediction=np.array(prediction[index])
    )


def grid(preview: PreviewSample) -> np.ndarray:
    """An RGB uint8 array: one row per image, columns image | truth | prediction (image |
    prediction without truth)."""
    images = np.asarray(preview.images, dtype=np.float64)
    if images.ndim == 4:  # (n, H, W, 1)
        images = images[..., 0]
    n, h, w = images.shape
    span = images.max() - images.min() if n else 0.0
    gray = np.zeros_like(images) if span == 0 else (images - images.min()) / span
    gray_rgb = np.repeat((gray * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    labels = [preview.prediction] if preview.truth is None else [preview.truth, preview.prediction]
    tiles = [gray_rgb, *(PALETTE[np.clip(np.asarray(m), 0, 4)] for m in labels)]
    th, tw = h * SCALE, w * SCALE
    out = np.full((n * th + (n + 1) * GAP, len(tiles) * tw + (len(tiles) + 1) * GAP, 3), 255, dtype=np.uint8)
    for row in range(n):
        for col, tile in enumerate(tiles):
            big = tile[row].repeat(SCALE, axis=0).repeat(SCALE, axis=1)
            y, x = GAP + row * (th + GAP), GAP + col * (tw + GAP)
            out[y : y + th, x : x + tw] = big
    return out


def write_png(preview: PreviewSample, path: str | Path) -> Path:
    """Write :func:`grid` as a PNG file (atomically: a reader never sees half of one)."""
    from PIL import Image

    from contract.atomic import replacing

    path = Path(path)
    with replacing(path, suffix=".png") as tmp:
        Image.fromarray(grid(preview)).save(tmp, format="PNG", optimize=True)
    return path
