"""The real AI4Mars stand-in (../shared/data/real_mars.npz): loading, aliens, grouped split, learning.

The file is test data shared beside the checkout, never part of the repository: these tests read
``$MARS_REAL_DATA`` or ``<repo>/../shared/data/real_mars.npz`` and skip, saying so, only when it
is absent. See ../shared/data/SOURCE.md for what it holds.
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from contract import aliens, data, data_format, splitting

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("MARS_REAL_DATA") or ROOT.parent / "shared" / "data" / "real_mars.npz")
pytestmark = pytest.mark.skipif(
    not REAL.is_file(), reason=f"real data file absent: {REAL} (set MARS_REAL_DATA to run these tests)"
)
N_ROWS = 2615
N_PHOTOS = 1714


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    with np.load(REAL) as npz:
        return {"masks": npz["training_set"][:, 1].astype(np.uint8), "groups": npz["groups"]}


@pytest.fixture(scope="module")
def real() -> data.MarsData:
    return data.load_npz(REAL, load_test=False)


def test_loads_with_groups_and_keeps_every_tile(real):
    assert len(real) == N_ROWS and real.aliens_removed == 0
    assert real.groups is not None and real.groups.shape == (N_ROWS,)
    assert len(np.unique(real.groups)) == N_PHOTOS
    assert data.fingerprint_npz(REAL) == real.fingerprint
    shares = data.class_pixel_shares(real.masks)
    np.testing.assert_allclose(shares, [0.2309, 0.2850, 0.3718, 0.1064, 0.0059], atol=5e-4)


def test_genuine_repeated_masks_are_not_taken_for_aliens(raw):
    # Uniform tiles share masks (one class inside the unlabelled border): the old rule (any mask
    # on > 5 images) removed 133 genuine tiles. They must stay, and none of them is structured.
    masks = raw["masks"]
    flat = masks.reshape(len(masks), -1)
    _, first, inverse, counts = np.unique(flat, axis=0, return_index=True, return_inverse=True, return_counts=True)
    repeated = counts[inverse.ravel()] > aliens.ALIEN_MIN_REPEATS
    assert repeated.sum() == 133
    assert not any(aliens.is_structured_mask(masks[i]) for i in first[counts > aliens.ALIEN_MIN_REPEATS])
    assert aliens.alien_mask_flags(masks).sum() == 0
    # The challenge's artefact (one structured mask over ~110 unrelated images) is still caught.
    planted = masks.copy()
    scene = next(i for i in range(len(masks)) if aliens.is_structured_mask(masks[i]))
    victims = np.random.default_rng(0).choice(len(masks), size=110, replace=False)
    planted[victims] = masks[scene]
    flags = aliens.alien_mask_flags(planted)
    assert flags.sum() == 110 + (scene not in victims) and flags[victims].all()


@pytest.mark.slow
def test_inspect_data_cli(real):
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "inspect-data", str(REAL)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"images:       {N_ROWS} (aliens removed: 0)" in proc.stdout
    assert f"fingerprint:  {real.fingerprint}" in proc.stdout


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_split_no_photo_on_both_sides(real, seed):
    train, val = splitting.split(real.masks, 0.2, seed, real.groups)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == N_ROWS
    assert not set(real.groups[train]) & set(real.groups[val])
    assert abs(len(val) - 0.2 * N_ROWS) <= 2
    rock = splitting.has_big_rock(real.masks)
    assert abs(rock[val].sum() / rock.sum() - 0.2) < 0.03  # stratified on big rock
    # Without groups the same split cuts photos in two: the reason groups exist.
    row_train, row_val = splitting.split(real.masks, 0.2, seed)
    assert set(real.groups[row_train]) & set(real.groups[row_val])


def _best_constant_miou(masks: np.ndarray) -> float:
    """The best constant predictor's mIoU (classes 1-4), trying every label with our metric."""
    from worker.training.metrics import mean_iou

    return max(mean_iou(masks, np.full_like(masks, label)) for label in range(data_format.NUM_CLASSES))


@pytest.mark.slow
def test_short_training_beats_the_best_constant_predictor():
    from contract.config import TrainConfig
    from worker.training.train import train

    config = TrainConfig(
        model="multipath",
        base_filters=4,
        conventional_filters=16,
        residual_filters=8,
        multiscale_filters=16,
        context_filters=8,
        batchnorm_momentum=0.9,
        batch_size=16,
        learning_rate=3e-3,
        epochs=6,
        early_stopping_patience=6,
        reduce_lr_patience=6,
        augment_flips=False,
        validation_fraction=0.25,
        max_images=320,
        seed=0,
    )
    loaded = data.load_npz(REAL, load_test=False, max_images=config.max_images, seed=config.seed)
    _, val = splitting.split(loaded.masks, config.validation_fraction, config.seed, loaded.groups)
    baseline = _best_constant_miou(loaded.masks[val])
    assert 0.05 < baseline < 0.15  # bedrock everywhere: ~0.37 IoU on one of four classes
    result = train(config, loaded, verbose=False)
    assert result.n_val == len(val)
    assert result.best_miou > baseline + 0.05, (result.best_miou, baseline, result.per_class_iou)
