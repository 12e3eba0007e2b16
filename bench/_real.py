"""Where the benchmarks find the real AI4Mars stand-in file (never part of the repository), and the
search space they train on it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What the real-data benchmarks search (search_quality, confirm_spread, pruning): Multipath UNet
#: widths small enough for 2 CPU cores. Each script adds its own fixed values.
CPU_PARAMS: dict[str, dict] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "base_filters": {"type": "int", "low": 4, "high": 8, "step": 4},
    "conventional_filters": {"type": "categorical", "choices": [16, 32]},
    "multiscale_filters": {"type": "categorical", "choices": [16, 32]},
    "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
    "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}


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
