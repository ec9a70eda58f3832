"""Fixed augmented copies: copy 0 is the image, FLIP its mirror, other copies are fixed (same
pixels every run, so their trunk outputs can be cached), differ from the image and stay
display images; and how their trunk outputs join a fit's training rows."""

from __future__ import annotations

import numpy as np

from osteoflag.inference.pixels import DisplayImage
from osteoflag.training.augment import FLIP, augment
from osteoflag.training.model import TrunkOutputs, with_copies


def _image() -> DisplayImage:
    rng = np.random.default_rng(0)
    return DisplayImage(rng.uniform(0.0, 1.0, (60, 48)).astype(np.float32))


def test_copies_are_fixed_and_different() -> None:
    image = _image()
    assert augment(image, "a.jpg", 0) is image
    assert np.array_equal(augment(image, "a.jpg", FLIP).pixels, image.pixels[:, ::-1])
    first = [augment(image, "a.jpg", k).pixels for k in (1, 2, 3)]
    again = [augment(image, "a.jpg", k).pixels for k in (1, 2, 3)]
    other = augment(image, "b.jpg", 1).pixels
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
        assert a.dtype == np.float32 and a.ndim == 2
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.array_equal(first[0], first[1])
    assert first[0].shape != image.pixels.shape or not np.allclose(first[0], image.pixels)
    assert not (other.shape == first[0].shape and np.array_equal(other, first[0]))


def test_copies_of_the_fit_images_follow_every_image() -> None:
    def outputs(offset: float) -> TrunkOutputs:
        base = np.arange(5, dtype=np.float32)[:, None] + offset
        return TrunkOutputs(base, base, base[:, :, None, None])

    joined, rows, source = with_copies(outputs(0), [outputs(100), outputs(200)], np.array([1, 3]))
    assert joined.b3[:, 0].tolist() == [0, 1, 2, 3, 4, 101, 103, 201, 203]
    assert rows.tolist() == [1, 3, 5, 6, 7, 8]
    assert source.tolist() == [0, 1, 2, 3, 4, 1, 3, 1, 3]
