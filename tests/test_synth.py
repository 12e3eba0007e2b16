"""contract.synth: challenge format, seeding, realistic class shares, aliens, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from contract import aliens, data, data_format, splitting, synth


def test_challenge_format_exactly():
    out = synth.generate(20, seed=0, n_test=3)
    assert set(out) == {"training_set", "test_set"}
    ts, test = out["training_set"], out["test_set"]
    assert ts.shape == (20, 2, 64, 128) and ts.dtype == np.float64
    assert test.shape == (3, 64, 128) and test.dtype == np.float64
    for images in (ts[:, 0], test):
        assert images.min() >= 0 and images.max() <= 255
        np.testing.assert_array_equal(images, np.rint(images))
    assert set(np.unique(ts[:, 1])) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert set(synth.generate(5, seed=0)) == {"training_set"}


def test_seeded_repeatable_and_seed_sensitive():
    a = synth.generate(30, seed=7, n_test=2)
    b = synth.generate(30, seed=7, n_test=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = synth.generate(30, seed=8, n_test=2)
    assert not np.array_equal(a["training_set"], c["training_set"])
    assert not np.array_equal(a["test_set"], c["test_set"])
    # The training set does not depend on how many test images were asked for.
    np.testing.assert_array_equal(synth.generate(30, seed=7)["training_set"], a["training_set"])


def test_class_shares_near_the_real_ones():
    masks = synth.generate(300, seed=0)["training_set"][:, 1].astype(np.uint8)
    shares = data.class_pixel_shares(masks)
    for c in range(4):
        assert 0.10 < shares[c] < 0.45, (c, shares)
    assert 0.0 < shares[4] < 0.03, shares
    # Big rock in a minority of images only.
    rock_images = splitting.has_big_rock(masks).mean()
    assert 0.0 < rock_images < 0.2


def test_images_correlate_with_labels():
    ts = synth.generate(60, seed=1, n_aliens=0)["training_set"]
    images, masks = ts[:, 0], ts[:, 1]
    means = [images[masks == c].mean() for c in range(5)]
    # Distinct mean brightness per class, far apart compared with the noise.
    gaps = np.diff(np.sort(means))
    assert gaps.min() > 15, means


def test_aliens_present_and_detected_by_load(tmp_path):
    out = synth.generate(120, seed=2)
    n_aliens = synth.default_n_aliens(120)
    assert n_aliens > aliens.ALIEN_MIN_REPEATS
    ts = out["training_set"]
    flags = aliens.alien_mask_flags(ts[:, 1].astype(np.uint8))
    assert flags.sum() == n_aliens
    alien_images = ts[flags, 0].reshape(n_aliens, -1)
    assert len(np.unique(alien_images, axis=0)) == n_aliens  # the images all differ

    path = tmp_path / "synth.npz"
    np.savez_compressed(path, **out)
    loaded = data.load_npz(path)
    assert loaded.aliens_removed == n_aliens
    assert len(loaded) == 120 - n_aliens


def test_alien_counts():
    assert synth.default_n_aliens(10) == 0
    assert synth.default_n_aliens(50) == aliens.ALIEN_MIN_REPEATS + 1
    assert synth.default_n_aliens(2615) == 110
    ts = synth.generate(20, seed=0, n_aliens=8)["training_set"]
    assert aliens.alien_mask_flags(ts[:, 1].astype(np.uint8)).sum() == 8
    with pytest.raises(ValueError, match="n_aliens"):
        synth.generate(5, n_aliens=5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        synth.generate(0)


def test_write_npz_atomic_and_summary(tmp_path):
    path = tmp_path / "sub" / "mars.npz"
    summary = synth.write_npz(path, 60, seed=3, n_test=2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mars.npz"]  # no temp files
    assert summary["n"] == 60 and summary["n_aliens"] == synth.default_n_aliens(60)
    assert summary["n_test"] == 2 and summary["path"] == str(path)
    assert sum(summary["class_shares"].values()) == pytest.approx(1.0, abs=1e-4)
    assert set(summary["class_shares"]) == set(data_format.CLASS_NAMES)
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["training_set"], synth.generate(60, 3)["training_set"])
        assert npz["test_set"].shape == (2, 64, 128)
    loaded = data.load_npz(path)
    assert loaded.aliens_removed == summary["n_aliens"]


def test_write_npz_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth.np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        synth.write_npz(tmp_path / "x.npz", 10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", range(8))
def test_alien_mask_is_structured_like_the_artefact(seed):
    # The challenge's artefact is one real scene's labels (several classes) on unrelated images;
    # a uniform repeated mask would be genuine data and is kept by load_npz.
    ts = synth.generate(60, seed=seed)["training_set"]
    masks = ts[:, 1].astype(np.uint8)
    flags = aliens.alien_mask_flags(masks)
    assert flags.sum() == synth.default_n_aliens(60)
    assert aliens.is_structured_mask(masks[flags][0])
