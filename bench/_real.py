"""Where the benchmarks find the real AI4Mars stand-in file (never part of the repository)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def real_data_path() -> Path:
    """``$MARS_REAL_DATA``, else ``<repo>/../shared/data/real_mars.npz`` (where CI keeps it)."""
    env = os.environ.get("MARS_REAL_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "real_mars.npz"


def constant_baseline(masks) -> dict:
    """The best constant predictor's mean IoU (classes 1-4) on ``masks``, computed honestly.

    Tries every constant label 0..4 with the project's metric and keeps the best; the per-class
    IoU of that predictor comes along.
    """
    import numpy as np

    from worker.training.metrics import iou_per_class, mean_iou

    best = None
    for label in range(5):
        pred = np.full_like(masks, label)
        value = mean_iou(masks, pred)
        if best is None or value > best["miou"]:
            per_class = {str(k): v for k, v in iou_per_class(masks, pred).items()}
            best = {"label": label, "miou": value, "per_class_iou": per_class}
    return best
