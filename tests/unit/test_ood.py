"""The out-of-distribution reference: threshold at the held-out quantile, file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteoflag.errors import BundleError
from osteoflag.inference.ood import OodReference


def _cloud(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    direction = np.abs(rng.normal(size=64)) + 1.0
    return np.abs(direction + 0.3 * rng.normal(size=(n, 64)))


def test_threshold_skips_about_two_percent_of_held_out_and_far_images() -> None:
    reference = OodReference.fit(_cloud(400, 0), _cloud(500, 1))
    held = reference.distances(_cloud(500, 1))
    assert 0.015 <= (held > reference.threshold).mean() <= 0.02
    fresh = reference.distances(_cloud(2000, 2))
    assert (fresh > reference.threshold).mean() < 0.05
    far = np.abs(np.random.default_rng(3).normal(size=(50, 64)))  # another direction
    assert (reference.distances(far) > reference.threshold).all()


def test_round_trip_and_feature_count_check(tmp_path: Path) -> None:
    reference = OodReference.fit(_cloud(100, 0), _cloud(60, 1), max_anchors=32)
    assert reference.anchors.shape == (32, 64)
    path = tmp_path / "ood.npz"
    path.write_bytes(reference.to_bytes())
    again = OodReference.read(path, 64)
    probe = _cloud(10, 5)
    assert np.allclose(again.distances(probe), reference.distances(probe))
    assert again.threshold == reference.threshold
    with pytest.raises(BundleError, match="the bundle has 128 features"):
        OodReference.read(path, 128)


def test_too_few_held_out_images_refused() -> None:
    with pytest.raises(BundleError, match="50 held-out images, got 100 and 20"):
        OodReference.fit(_cloud(100, 0), _cloud(20, 1))


def test_shifted_keeps_the_anchors_and_moves_the_threshold_by_the_median_change() -> None:
    reference = OodReference.fit(_cloud(400, 0), _cloud(500, 1))
    before = _cloud(200, 4)
    after = before + 0.05 * np.abs(np.random.default_rng(5).normal(size=before.shape))
    moved = reference.shifted(before, after)
    change = np.median(reference.distances(after) - reference.distances(before))
    assert change != 0.0
    assert moved.threshold == pytest.approx(reference.threshold + change)
    assert moved.anchors is reference.anchors and moved.quantile == reference.quantile
    with pytest.raises(BundleError, match="got 200 and 199"):
        reference.shifted(before, after[:-1])
