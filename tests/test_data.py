"""contract.data: loading, validation, alien removal, fingerprint, split (numpy only)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from contract import aliens, data, data_format, splitting, synth
from contract.data_format import DataError


def _write(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def _training_set(n=12, seed=1, n_aliens=0):
    return synth.generate(n, seed, n_aliens=n_aliens)["training_set"]


@pytest.fixture
def valid_file(tmp_path):
    return _write(tmp_path / "ok.npz", training_set=_training_set())


def test_valid_file_loads_normalised(valid_file):
    d = data.load_npz(valid_file)
    assert len(d) == 12
    assert d.images.shape == (12, 64, 128) and d.images.dtype == np.float32
    assert d.masks.shape == (12, 64, 128) and d.masks.dtype == np.uint8
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert d.images.max() > 0.5  # really rescaled from 0..255, not squashed
    assert set(np.unique(d.masks)) <= {0, 1, 2, 3, 4}
    assert d.test_images is None
    assert d.aliens_removed == 0
    raw = _training_set()
    np.testing.assert_allclose(d.images, raw[:, 0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.masks, raw[:, 1])


def test_test_set_loaded_and_normalised(tmp_path):
    arrays = synth.generate(8, 0, n_test=3)
    path = _write(tmp_path / "t.npz", **arrays)
    d = data.load_npz(path)
    assert d.test_images.shape == (3, 64, 128) and d.test_images.dtype == np.float32
    np.testing.assert_allclose(d.test_images, arrays["test_set"] / 255.0, rtol=1e-6)
    assert data.load_npz(path, load_test=False).test_images is None


def test_aliens_removed_and_counted(tmp_path):
    ts = _training_set(n=30, n_aliens=7)
    path = _write(tmp_path / "aliens.npz", training_set=ts)
    d = data.load_npz(path)
    assert d.aliens_removed == 7
    assert len(d) == 23
    # No remaining mask is repeated.
    flat = d.masks.reshape(len(d), -1)
    assert len(np.unique(flat, axis=0)) == len(d)

    kept = data.load_npz(path, remove_aliens=False)
    assert kept.aliens_removed == 0 and len(kept) == 30
    assert kept.fingerprint != d.fingerprint


def test_alien_threshold_is_more_than_five_repeats(tmp_path):
    ts = _training_set(n=20)
    ts[3:8, 1] = ts[0, 1]  # mask 0 now on 6 images: > ALIEN_MIN_REPEATS
    assert data.load_npz(_write(tmp_path / "six.npz", training_set=ts)).aliens_removed == 6
    ts = _training_set(n=20)
    ts[3:7, 1] = ts[0, 1]  # 5 images: not an artefact
    assert data.load_npz(_write(tmp_path / "five.npz", training_set=ts)).aliens_removed == 0


def _with_test_set(test_set):
    return {"training_set": _training_set(), "test_set": test_set}


def _with_value(index, value):
    """A valid training set with ``training_set[index] = value``."""
    ts = _training_set()
    ts[index] = value
    return {"training_set": ts}


def _scaled_first_image():
    ts = _training_set()
    ts[0, 0] /= 255.0
    return {"training_set": ts}


# name -> (arrays in the file, substring(s) the error message must contain)
BAD_FILES = {
    "missing_key": ({"images": np.zeros((2, 64, 128))}, "missing key 'training_set'"),
    "wrong_ndim": (
        {"training_set": np.zeros((3, 64, 128))},
        "shape (3, 64, 128), expected (N, 2, 64, 128)",
    ),
    "wrong_shape": ({"training_set": np.zeros((3, 2, 128, 64))}, "shape (3, 2, 128, 64)"),
    "empty": ({"training_set": np.zeros((0, 2, 64, 128))}, "empty"),
    "strings": ({"training_set": np.full((1, 2, 64, 128), "a")}, "real numbers"),
    "nan": (_with_value((2, 0, 5, 5), np.nan), "NaN or infinite values (first in image 2)"),
    "inf": (_with_value((1, 1, 0, 0), np.inf), "NaN or infinite"),
    "label_5": (_with_value((4, 1, 0, 0), 5), "label values must be in 0..4, found 0..5"),
    "label_negative": (_with_value((4, 1, 0, 0), -1), "label values must be in 0..4"),
    "label_1.5": (
        _with_value((3, 1, 9, 9), 1.5),
        "label values must be whole numbers 0..4 (first non-integer in mask 3)",
    ),
    "pixel_300": (
        _with_value((6, 0, 0, 0), 300),
        ("pixel values must be in 0..255", "..300 (first bad image 6)"),
    ),
    "pixel_negative": (_with_value((6, 0, 0, 0), -2), "pixel values must be in 0..255"),
    "pixel_fraction": (_scaled_first_image(), "pixel values must be whole numbers 0..255"),
    "test_set_shape": (
        _with_test_set(np.zeros((2, 128, 64))),
        "'test_set' has shape (2, 128, 64), expected (M, 64, 128)",
    ),
    "test_set_nan": (_with_test_set(np.full((2, 64, 128), np.nan)), "'test_set' contains NaN"),
    "test_set_pixels": (
        _with_test_set(np.full((2, 64, 128), 256.0)),
        "'test_set' pixel values must be in 0..255",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_npz_raises_one_clear_error(tmp_path, name):
    arrays, expected = BAD_FILES[name]
    path = _write(tmp_path / f"{name}.npz", **arrays)
    with pytest.raises(DataError) as info:
        data.load_npz(path)
    message = str(info.value)
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in message
    assert "\n" not in message
    assert str(path) in message


def test_object_array_is_rejected(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, training_set=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        data.load_npz(path)


def test_not_a_zip_file(tmp_path):
    path = tmp_path / "plain.npz"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match=r"is not an \.npz \(zip\) file"):
        data.load_npz(path)
    npy = tmp_path / "array.npy"
    np.save(npy, _training_set())
    with pytest.raises(DataError, match=r"is not an \.npz \(zip\) file"):
        data.load_npz(npy)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.npz"):
        data.load_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="not a file"):
        data.load_npz(tmp_path)


def test_truncated_zip_is_a_data_error(tmp_path, valid_file):
    blob = valid_file.read_bytes()
    # Keep the central directory (so it still looks like a zip) but damage the compressed data.
    damaged = bytearray(blob)
    damaged[200:600] = b"\x00" * 400
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="cannot read 'training_set'"):
        data.load_npz(path)


def test_integer_dtype_file_is_accepted(tmp_path):
    ts = _training_set().astype(np.uint8)
    d = data.load_npz(_write(tmp_path / "u8.npz", training_set=ts))
    assert d.fingerprint == data.load_npz(_write(tmp_path / "f64.npz", training_set=_training_set())).fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path, valid_file):
    first = data.load_npz(valid_file).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0
    assert data.load_npz(valid_file).fingerprint == first
    assert data.fingerprint_npz(valid_file) == first

    ts = _training_set()
    ts[5, 0, 10, 20] = (ts[5, 0, 10, 20] + 1) % 256  # one pixel
    assert data.load_npz(_write(tmp_path / "pixel.npz", training_set=ts)).fingerprint != first
    ts = _training_set()
    ts[5, 1, 10, 20] = (ts[5, 1, 10, 20] + 1) % 5  # one label
    assert data.load_npz(_write(tmp_path / "label.npz", training_set=ts)).fingerprint != first


def test_fingerprint_ignores_max_images_seed_and_test_set(tmp_path, valid_file):
    full = data.load_npz(valid_file)
    sub = data.load_npz(valid_file, max_images=5, seed=3)
    assert len(sub) == 5
    assert sub.fingerprint == full.fingerprint
    other = data.load_npz(valid_file, max_images=5, seed=4)
    assert other.fingerprint == full.fingerprint
    with_test = _write(tmp_path / "t.npz", **_with_test_set(np.zeros((2, 64, 128))))
    assert data.load_npz(with_test).fingerprint == full.fingerprint


def test_max_images_subset_is_seeded_and_from_the_data(valid_file):
    full = data.load_npz(valid_file)
    a = data.load_npz(valid_file, max_images=5, seed=3)
    b = data.load_npz(valid_file, max_images=5, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    flat_full = full.masks.reshape(len(full), -1)
    for mask in a.masks.reshape(5, -1):
        assert (flat_full == mask).all(axis=1).any()
    assert len(data.load_npz(valid_file, max_images=100)) == 12
    # The same subset is available for data loaded in full.
    keep = splitting.subset_indices(full.masks, 5, seed=3)
    np.testing.assert_array_equal(full.images[keep], a.images)
    with pytest.raises(DataError, match="max_images"):
        data.load_npz(valid_file, max_images=0)


def test_max_images_keeps_a_big_rock_image(tmp_path):
    ts = _training_set(n=40)
    path = _write(tmp_path / "r.npz", training_set=ts)
    for seed in range(5):
        d = data.load_npz(path, max_images=4, seed=seed)
        assert splitting.has_big_rock(d.masks).any()


def _masks_with_rocks(n=40, n_rock=5):
    masks = np.ones((n, 64, 128), dtype=np.uint8)
    masks[:n_rock, 10:14, 10:14] = 4
    return masks


def test_split_disjoint_complete_seeded():
    masks = _masks_with_rocks()
    train, val = splitting.split(masks, 0.2, seed=0)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert len(val) == 8 and len(train) == 32
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(40))
    again = splitting.split(masks, 0.2, seed=0)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    others = [splitting.split(masks, 0.2, seed=s)[1] for s in range(1, 4)]
    assert any(not np.array_equal(o, val) for o in others)


@pytest.mark.parametrize("n_rock", [2, 3, 5, 38])
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.95])
def test_split_puts_big_rock_on_both_sides(n_rock, fraction):
    masks = _masks_with_rocks(n=40, n_rock=n_rock)
    rocks = splitting.has_big_rock(masks)
    for seed in range(5):
        train, val = splitting.split(masks, fraction, seed)
        assert rocks[train].any() and rocks[val].any()
        assert len(train) + len(val) == 40 and len(val) == max(1, round(fraction * 40))


def test_split_edge_cases():
    train, val = splitting.split(_masks_with_rocks(n=2, n_rock=1), 0.2, 0)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(DataError, match="at least 2"):
        splitting.split(np.zeros((1, 64, 128), np.uint8), 0.2, 0)
    with pytest.raises(DataError, match="validation_fraction"):
        splitting.split(_masks_with_rocks(), 1.0, 0)


def test_class_pixel_shares():
    masks = np.zeros((2, 64, 128), dtype=np.uint8)
    masks[0] = 1
    masks[1, :32] = 2
    masks[1, 32:, :32] = 3
    masks[1, 32:, 32:64] = 4  # the rest of image 1 stays background
    shares = data.class_pixel_shares(masks)
    np.testing.assert_allclose(shares, [0.125, 0.5, 0.25, 0.0625, 0.0625])
    assert shares.sum() == pytest.approx(1.0)
    with pytest.raises(DataError, match="0..4"):
        data.class_pixel_shares(np.full((1, 2, 2), 5))


def test_data_and_synth_do_not_import_tensorflow():
    code = "import sys, contract.data, contract.synth; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- artefact-specific aliens, groups


def _uniform_mask(label: int, border: int = 1) -> np.ndarray:
    """A genuine-looking uniform tile mask: one terrain class inside an unlabelled border."""
    mask = np.zeros((64, 128), dtype=np.float64)
    mask[border:, border:-border] = label
    return mask


def test_uniform_repeated_masks_are_kept_structured_ones_removed(tmp_path):
    # Real AI4Mars tiles: many all-soil tiles share one mask. They are data, not the artefact.
    ts = _training_set(n=40, n_aliens=0)
    ts[0:12, 1] = _uniform_mask(1)
    ts[12:20, 1] = _uniform_mask(2, border=3)
    ts[20:27, 1] = 3.0  # one class, no border at all
    assert not aliens.is_structured_mask(ts[0, 1].astype(np.uint8))
    path = _write(tmp_path / "uniform.npz", training_set=ts)
    assert data.load_npz(path).aliens_removed == 0
    # The same repetition with a structured mask (two terrain classes) is the artefact.
    structured = _uniform_mask(1)
    structured[40:, 60:] = 2
    ts[0:12, 1] = structured
    assert aliens.is_structured_mask(structured.astype(np.uint8))
    assert data.load_npz(_write(tmp_path / "alien.npz", training_set=ts)).aliens_removed == 12


def test_groups_loaded_and_follow_alien_removal_and_subset(tmp_path):
    ts = _training_set(n=30, n_aliens=7)
    groups = np.arange(30, dtype=np.int64) // 2
    path = _write(tmp_path / "g.npz", training_set=ts, groups=groups)
    d = data.load_npz(path)
    keep = ~aliens.alien_mask_flags(ts[:, 1].astype(np.uint8))
    np.testing.assert_array_equal(d.groups, groups[keep])
    sub = data.load_npz(path, max_images=10, seed=3)
    chosen = splitting.subset_indices(ts[keep, 1].astype(np.uint8), 10, 3)
    np.testing.assert_array_equal(sub.groups, groups[keep][chosen])
    np.testing.assert_array_equal(sub.masks, ts[keep, 1][chosen])
    # Groups steer the split, so they are part of the fingerprint; a file without them is not.
    no_groups = data.load_npz(_write(tmp_path / "n.npz", training_set=ts))
    assert no_groups.groups is None and no_groups.fingerprint != d.fingerprint
    other = _write(tmp_path / "o.npz", training_set=ts, groups=groups[::-1].copy())
    assert data.load_npz(other).fingerprint != d.fingerprint


@pytest.mark.parametrize(
    "groups, message",
    [
        (np.arange(11), r"'groups' has shape \(11,\), expected \(12,\)"),
        (np.zeros((12, 2), dtype=np.int64), r"'groups' has shape \(12, 2\)"),
        (np.linspace(0, 1, 12), "'groups' must hold integer ids"),
    ],
)
def test_bad_groups_one_line(tmp_path, groups, message):
    path = _write(tmp_path / "bad.npz", training_set=_training_set(), groups=groups)
    with pytest.raises(DataError, match=message) as info:
        data.load_npz(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_keeps_groups_whole_and_stratified(seed):
    rng = np.random.default_rng(seed)
    n = 200
    groups = np.repeat(np.arange(120), 2)[:n]  # pairs of tiles, like two tiles of one photo
    masks = np.ones((n, 64, 128), dtype=np.uint8)
    rock = rng.choice(n, size=20, replace=False)
    masks[rock, 30, 30] = data_format.BIG_ROCK
    train, val = splitting.split(masks, 0.25, seed, groups)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == n
    assert not set(groups[train]) & set(groups[val])
    assert abs(len(val) - 50) <= 2
    rock_val = np.isin(val, rock).sum()
    assert 1 <= rock_val <= 19 and abs(rock_val - 5) <= 3
    again = splitting.split(masks, 0.25, seed, groups)
    np.testing.assert_array_equal(again[1], val)
    # A row split of the same masks would cut pairs apart; the grouped one never does.
    row_train, row_val = splitting.split(masks, 0.25, seed)
    assert set(groups[row_train]) & set(groups[row_val])


def test_grouped_split_edge_cases():
    masks = np.ones((4, 64, 128), dtype=np.uint8)
    train, val = splitting.split(masks, 0.5, 0, np.array([7, 7, 7, 9]))
    assert len(train) and len(val)
    assert {tuple(train), tuple(val)} == {(0, 1, 2), (3,)}
    with pytest.raises(DataError, match="at least 2 groups"):
        splitting.split(masks, 0.5, 0, np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match="groups must have shape"):
        splitting.split(masks, 0.5, 0, np.zeros(3, dtype=np.int64))
