"""From an evidence map over the model input to a region in source pixels.

Synthetic maps with a known peak, through both resize modes: the region must land where
that peak lies in the source image, whatever its aspect.
"""

from __future__ import annotations

import numpy as np
import pytest

from osteoflag.errors import BundleError
from osteoflag.inference.localise import PooledLayout, evidence_map, region_from_map
from osteoflag.inference.pixels import DisplayImage, InputSpec, ResizeMode, fit, placement

STRETCH = InputSpec(size=(224, 224), resize_mode=ResizeMode.STRETCH)
LETTERBOX = InputSpec(size=(224, 224), resize_mode=ResizeMode.LETTERBOX)


def _spot(spec: InputSpec, source: tuple[int, int], x: float, y: float) -> np.ndarray:
    """A 224x224 map with a blob at the model-input position of source point (x, y)."""
    where = placement(source, spec)
    u = x * where.scale[0] + where.offset[0]
    v = y * where.scale[1] + where.offset[1]
    rows, columns = np.mgrid[0:224, 0:224] + 0.5
    return np.exp(-((columns - u) ** 2 + (rows - v) ** 2) / (2 * 6.0**2)).astype(np.float32)


@pytest.mark.parametrize("spec", [STRETCH, LETTERBOX], ids=["stretch", "letterbox"])
@pytest.mark.parametrize("source", [(1000, 600), (400, 1200), (224, 224)])
def test_peak_and_box_land_on_the_source_point(spec: InputSpec, source: tuple[int, int]) -> None:
    rows, columns = source
    x, y = 0.7 * columns, 0.25 * rows
    region = region_from_map(_spot(spec, source, x, y), spec, source)
    assert region is not None
    scale = max(columns, rows) / 224 if spec is LETTERBOX else max(columns / 224, rows / 224)
    assert abs(region.peak[0] - x) <= 1.5 * scale and abs(region.peak[1] - y) <= 1.5 * scale
    x0, y0, x1, y1 = region.box
    assert x0 < x < x1 and y0 < y < y1
    assert x0 >= 0 and y0 >= 0 and x1 <= columns - 1 and y1 <= rows - 1
    # a Gaussian of sigma 6 model pixels is above half its peak within 7 pixels of it
    where = placement(source, spec)
    assert 12 <= (x1 - x0) * where.scale[0] <= 17 and 12 <= (y1 - y0) * where.scale[1] <= 17
    assert region.heat is not None and region.heat.max() == pytest.approx(1.0)
    assert region.heat.shape == placement(source, spec).size[::-1]


def test_letterbox_bars_never_hold_the_region() -> None:
    source = (200, 800)  # wide: bars above and below
    heat = np.zeros((224, 224), np.float32)
    heat[:20, :] = 5.0  # evidence only in the top bar
    heat[112, 40] = 1.0
    region = region_from_map(heat, LETTERBOX, source)
    assert region is not None
    assert region.peak[1] == pytest.approx(100, abs=4)
    assert abs(region.peak[0] - (40.5 - 0) * 800 / 224) <= 4


def test_inverse_mapping_matches_the_resize_the_model_saw() -> None:
    source = (300, 900)
    pixels = np.zeros(source, np.float32)
    pixels[150, 450] = 1.0
    for spec in (STRETCH, LETTERBOX):
        fitted = fit(DisplayImage(pixels), spec)
        v, u = np.unravel_index(int(np.argmax(fitted)), fitted.shape)
        x, y = placement(source, spec).to_source(u + 0.5, v + 0.5)
        assert abs(x - 450.5) <= 900 / 224 and abs(y - 150.5) <= 300 / 75


def test_no_region_without_evidence_for_fracture() -> None:
    assert region_from_map(-np.ones((7, 7), np.float32), STRETCH, (100, 100)) is None


def test_evidence_is_shared_by_activation_for_averages_and_given_to_the_argmax_for_maxima() -> None:
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0, 0, 0], maps[0, 2, 2] = 1.0, 3.0
    maps[1, 1, 1] = 2.0
    layout = PooledLayout.of(4, 2)
    assert layout == PooledLayout(slice(0, 2), slice(2, 4))
    heat = evidence_map(maps, np.array([4.0, 0.0, 0.0, 1.5]), layout)
    assert heat[0, 0] == pytest.approx(1.0) and heat[2, 2] == pytest.approx(3.0)
    assert heat[1, 1] == pytest.approx(1.5)
    assert heat.sum() == pytest.approx(5.5)  # the contributions, all placed


def test_pooled_layouts() -> None:
    assert PooledLayout.of(1280, 1280) == PooledLayout(slice(0, 1280), None)
    assert PooledLayout.of(3264, 1280).average == slice(704, 1984)
    with pytest.raises(BundleError, match="cannot be pooled"):
        PooledLayout.of(1500, 1280)
