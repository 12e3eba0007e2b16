"""Synthetic Mars-terrain data in exactly the challenge ``.npz`` format (numpy only).

For tests, demos and benchmarks where the real ``mars_for_students.npz`` is not at hand. Each
scene is a rover-like view:

* terrain: soil (1), bedrock (2) and sand (3) regions from the arg-max of three smooth random
  fields (coarser at the bottom, as if near the camera), with per-image biases so some images are
  dominated by one terrain;
* background (0): a sky/far-range band at the top with a wavy horizon (absent in some images),
  sometimes a dark rover-hardware strip or corner blob;
* big rock (4): one or two dark shaded ellipses in a minority of images
  (:data:`ROCK_IMAGE_FRACTION`, at least 2 images when there are 2 or more);
* images that depend on the labels: each class has its own brightness and texture (grain for
  soil, blotches for bedrock, ripples for sand, shading for rocks, smooth bright sky), plus a
  per-image brightness/contrast change and pixel noise, so a small model can learn something.

Class pixel shares land near the real file's (background ~24%, soil ~34%, bedrock ~23%,
sand ~18%, big rock ~0.1-1%).

"Aliens" mimic the artefact of the real file: ``n_aliens`` images share ONE identical, structured
label mask (at least two terrain classes, like a real scene's labels) while their images differ
(and do not match the mask). By default ``n >= 50`` files get
``max(6, round(4.2% of n))`` aliens (the real file has 110 of 2615 = 4.2%; 6 is the smallest count
above ``ALIEN_MIN_REPEATS`` = 5 that :func:`contract.data.load_npz` detects) and smaller files get
none. An explicit ``n_aliens`` of 1..5 is allowed but, by design, is not detected as aliens.

Seeded: the same arguments give identical arrays. ``training_set`` does not depend on
``n_test`` (the test images come from their own random stream).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contract.aliens import ALIEN_MIN_REPEATS, alien_mask_flags, is_structured_mask
from contract.atomic import replacing
from contract.data import class_pixel_shares
from contract.data_format import CLASS_NAMES, DataError
from contract.data_format import IMAGE_HEIGHT as H
from contract.data_format import IMAGE_WIDTH as W
from contract.splitting import has_big_rock

ALIEN_FRACTION = 0.042  # 110 / 2615 in the real file
ALIEN_MIN_N = 50  # files smaller than this get no aliens by default
ROCK_IMAGE_FRACTION = 0.06  # share of (non-alien) images with big rocks

# Scene "kinds": 0 sky/far range, 1 soil, 2 bedrock, 3 sand, 4 big rock, 5 rover hardware.
# Labels are the kinds with rover hardware folded into background (0).
#: Most images (training or test) one call generates: about 8x the real file, ~3 GB of float64
#: while generating; more would exhaust memory rather than fail cleanly.
MAX_IMAGES = 20_000
_ROVER = 5
_KIND_TO_LABEL = np.array([0, 1, 2, 3, 4, 0], dtype=np.uint8)
# Per kind: mean grey level, white-noise std, blotch (medium-scale noise) std, ripple amplitude.
_MEAN = np.array([195.0, 125.0, 92.0, 158.0, 58.0, 40.0], dtype=np.float32)
_GRAIN = np.array([3.0, 14.0, 7.0, 4.0, 9.0, 3.0], dtype=np.float32)
_BLOTCH = np.array([4.0, 6.0, 22.0, 3.0, 6.0, 2.0], dtype=np.float32)
_RIPPLE = np.array([0.0, 0.0, 0.0, 11.0, 0.0, 0.0], dtype=np.float32)
# Bias of the soil / bedrock / sand fields in the terrain arg-max (tuned for the real shares).
_TERRAIN_BIAS = np.array([0.38, 0.0, -0.15], dtype=np.float32)


def default_n_aliens(n: int) -> int:
    """The alien count :func:`generate` uses when ``n_aliens`` is None."""
    if n < ALIEN_MIN_N:
        return 0
    return max(ALIEN_MIN_REPEATS + 1, int(round(ALIEN_FRACTION * n)))


def generate(n: int, seed: int = 0, *, n_aliens: int | None = None, n_test: int = 0) -> dict[str, np.ndarray]:
    """Return ``{"training_set": float64 (n, 2, 64, 128)}`` plus ``"test_set"`` float64
    (n_test, 64, 128) when ``n_test > 0``; pixel values are whole numbers 0..255, labels 0..4.

    ``n`` counts all training images, aliens included (like the real file's 2615).
    """
    n = _count(n, "n", minimum=1)
    n_test = _count(n_test, "n_test", minimum=0)
    for name, value in (("n", n), ("n_test", n_test)):
        if value > MAX_IMAGES:
            raise DataError(f"{name} must be <= {MAX_IMAGES}, got {value}")
    n_aliens = default_n_aliens(n) if n_aliens is None else _count(n_aliens, "n_aliens", minimum=0)
    if n_aliens > n - 1:
        raise DataError(f"n_aliens must leave at least one real image: {n_aliens} of n={n}")

    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(train_seq)
    n_real = n - n_aliens
    masks = np.empty((n, H, W), dtype=np.uint8)
    images = np.empty((n, H, W), dtype=np.float64)

    real_masks, real_images = _scenes(rng, n_real, _rock_count(n_real))
    alien_at = np.sort(rng.choice(n, size=n_aliens, replace=False))
    real_at = np.setdiff1d(np.arange(n), alien_at, assume_unique=True)
    masks[real_at], images[real_at] = real_masks, real_images
    if n_aliens:
        # One shared mask from its own scene; the images come from other scenes, so they vary
        # and do not match the mask (the artefact).
        shared_mask, _ = _scenes(rng, 1, 0)
        while not is_structured_mask(shared_mask[0]):  # the artefact is a real scene's labels
            shared_mask, _ = _scenes(rng, 1, 0)
        _, alien_images = _scenes(rng, n_aliens, 0)
        masks[alien_at] = shared_mask[0]
        images[alien_at] = alien_images

    out = {"training_set": np.stack([images, masks.astype(np.float64)], axis=1)}
    if n_test:
        test_rng = np.random.default_rng(test_seq)
        _, test_images = _scenes(test_rng, n_test, _rock_count(n_test))
        out["test_set"] = test_images
    return out


def write_npz(
    path: str | os.PathLike,
    n: int,
    seed: int = 0,
    *,
    n_aliens: int | None = None,
    n_test: int = 0,
) -> dict:
    """Generate and write a challenge-format file atomically; return a small summary.

    The file is written with ``np.savez_compressed`` to a temporary file in the target's
    directory (created if missing) and moved into place with ``os.replace``, so readers never see
    a half-written file and a failure leaves no temporary behind. The path is used as given (no
    ``.npz`` suffix is added).

    The summary's ``class_shares`` are over the masks training sees (aliens removed).
    """
    path = Path(path)
    arrays = generate(n, seed, n_aliens=n_aliens, n_test=n_test)
    with replacing(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
            handle.flush()
            os.fsync(handle.fileno())

    masks = arrays["training_set"][:, 1].astype(np.uint8)
    clean = masks[~alien_mask_flags(masks)]
    shares = class_pixel_shares(clean)
    return {
        "path": str(path),
        "n": int(n),
        "n_aliens": default_n_aliens(n) if n_aliens is None else int(n_aliens),
        "n_test": int(n_test),
        "seed": int(seed),
        "big_rock_images": int(np.count_nonzero(has_big_rock(clean))),
        "class_shares": {name: round(float(s), 5) for name, s in zip(CLASS_NAMES, shares, strict=False)},
        "bytes": path.stat().st_size,
    }


# --------------------------------------------------------------------------- internals


def _count(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _rock_count(n: int) -> int:
    return min(n, max(2, int(round(ROCK_IMAGE_FRACTION * n))))


def _interp_matrix(size: int, grid: int, positions: np.ndarray, width: float = 0.7) -> np.ndarray:
    """(size, grid) row-normalised Gaussian weights: smooth upsampling of a coarse grid."""
    centres = np.arange(grid, dtype=np.float32)
    weights = np.exp(-0.5 * ((positions[:, None] - centres[None, :]) / width) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_fields(
    rng: np.random.Generator, shape: tuple[int, ...], grid: tuple[int, int], perspective: bool
) -> np.ndarray:
    """Smooth random fields of shape ``shape + (H, W)``, float32, roughly unit variance.

    With ``perspective`` the rows are sampled denser towards the top (far away), so features
    are smaller near the horizon and larger near the camera.
    """
    gh, gw = grid
    rows = np.linspace(0.0, 1.0, H, dtype=np.float32)
    if perspective:
        rows = rows**0.6
    ay = _interp_matrix(H, gh, rows * (gh - 1))
    ax = _interp_matrix(W, gw, np.linspace(0.0, gw - 1, W, dtype=np.float32))
    coarse = rng.standard_normal(shape + (gh, gw), dtype=np.float32)
    fields = ay @ coarse @ ax.T
    return fields / fields.std(axis=(-2, -1), keepdims=True).clip(1e-6)


def _scenes(rng: np.random.Generator, n: int, n_rock: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes -> (labels uint8 (n, H, W), images float64 (n, H, W) whole numbers 0..255).

    Each step draws from ``rng`` in turn (terrain, horizon, rocks, rover, image), so the order of
    the calls below is part of what a seed means.
    """
    if n == 0:
        return np.zeros((0, H, W), np.uint8), np.zeros((0, H, W), np.float64)
    yy = np.arange(H, dtype=np.float32)[None, :, None]
    xx = np.arange(W, dtype=np.float32)[None, None, :]
    kind = _terrain(rng, n)
    h0, horizon = _horizon(rng, n, xx)
    sky = yy < horizon
    rock, shade = _big_rocks(rng, n, n_rock, h0, yy[0], xx[0])
    kind[rock & ~sky] = 4
    kind[sky] = 0
    kind[_rover(rng, n, horizon, yy, xx)] = _ROVER
    return _KIND_TO_LABEL[kind], _image(rng, kind, shade, yy, xx)


def _terrain(rng: np.random.Generator, n: int) -> np.ndarray:
    """Kinds 1-3 per pixel: arg-max of three smooth fields (two octaves) plus global and
    per-image biases."""
    fields = _smooth_fields(rng, (n, 3), (5, 9), True)
    fields += 0.5 * _smooth_fields(rng, (n, 3), (9, 17), True)
    bias = _TERRAIN_BIAS[None, :] + rng.normal(0.0, 0.45, (n, 3)).astype(np.float32)
    return (np.argmax(fields + bias[:, :, None, None], axis=1) + 1).astype(np.uint8)


def _horizon(rng: np.random.Generator, n: int, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sky / far range: a wavy horizon -> (its mean height (n, 1, 1), its height per column);
    a mean height <= 0 means no sky in that image."""
    h0 = rng.uniform(-10.0, 36.0, (n, 1, 1)).astype(np.float32)
    amp = rng.uniform(0.0, 4.0, (n, 1, 1)).astype(np.float32)
    period = rng.uniform(40.0, 160.0, (n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    return h0, h0 + amp * np.sin(2 * np.pi * xx / period + phase)


def _big_rocks(
    rng: np.random.Generator, n: int, n_rock: int, h0: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One or two shaded ellipses below the horizon in ``n_rock`` images -> (rock pixels,
    their shading), lit from the upper left: brighter towards that side."""
    rock = np.zeros((n, H, W), dtype=bool)
    shade = np.zeros((n, H, W), dtype=np.float32)
    for i in rng.choice(n, size=n_rock, replace=False):
        for _ in range(int(rng.integers(1, 3))):
            ry, rx = rng.uniform(4.0, 10.0), rng.uniform(6.0, 16.0)
            cy = rng.uniform(max(float(h0[i, 0, 0]) + ry, 18.0), H - 3.0)
            cx = rng.uniform(8.0, W - 8.0)
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            inside = d <= 1.0
            rock[i] |= inside
            light = -(yy - cy) / ry - (xx - cx) / rx
            shade[i] = np.where(inside, 14.0 * light, shade[i])
    return rock, shade


def _rover(rng: np.random.Generator, n: int, horizon: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Rover hardware pixels: a vertical strip (20% of images) or a bottom-corner blob (20%)."""
    strip = rng.random(n) < 0.2
    sx = rng.uniform(0.0, W, (n, 1, 1)).astype(np.float32)
    sw = rng.uniform(3.0, 12.0, (n, 1, 1)).astype(np.float32)
    rover = strip[:, None, None] & (np.abs(xx - sx) < sw / 2) & (yy > horizon)
    blob = rng.random(n) < 0.2
    bx = np.where(rng.random((n, 1, 1)) < 0.5, 0.0, W - 1.0).astype(np.float32)
    br = rng.uniform(12.0, 28.0, (n, 1, 1)).astype(np.float32)
    in_blob = ((yy - (H - 1)) / (0.8 * br)) ** 2 + ((xx - bx) / br) ** 2 <= 1.0
    return rover | (blob[:, None, None] & in_blob)


def _image(rng: np.random.Generator, kind: np.ndarray, shade: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Per-kind brightness and texture, haze towards the top, per-image exposure, noise."""
    n = len(kind)
    grain = rng.standard_normal((n, H, W), dtype=np.float32)
    blotch = _smooth_fields(rng, (n,), (17, 33), False)
    theta = rng.uniform(0.0, np.pi, (n, 1, 1)).astype(np.float32)
    wavelength = rng.uniform(4.0, 8.0, (n, 1, 1)).astype(np.float32)
    ripple = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / wavelength)
    image = (
        _MEAN[kind]
        + _GRAIN[kind] * grain
        + _BLOTCH[kind] * blotch
        + _RIPPLE[kind] * ripple
        + np.where(kind == 4, shade, 0.0)
        + 12.0 * (1.0 - yy / H)
    )
    gain = rng.uniform(0.8, 1.2, (n, 1, 1)).astype(np.float32)
    offset = rng.normal(0.0, 12.0, (n, 1, 1)).astype(np.float32)
    image = (image - 128.0) * gain + 128.0 + offset
    image += rng.normal(0.0, 4.0, (n, H, W)).astype(np.float32)
    return np.clip(np.rint(image), 0.0, 255.0).astype(np.float64)
