"""Where a fracture call comes from: the classifier's evidence, put back on the spatial map.

LightGBM sees each channel ``c`` of the backbone's last map ``M`` only through its global
average ``mean(M[c])`` and, in the avg+max layouts, its global maximum ``max(M[c])``. TreeSHAP
(``pred_contrib``) splits one image's score (log-odds) into a contribution ``phi`` per feature.
An average is a sum over positions, so ``phi_avg[c]`` is shared among positions in proportion
to ``M[c, y, x]``; a maximum comes from one position, so ``phi_max[c]`` goes to the argmax of
``M[c]``. The sum over channels is a map whose total is the part of the score the last level
explains: a class-activation map weighted by what the classifier actually uses. Its peak is
the region's point, and the connected area above :data:`HOT_FRACTION` of the peak its box.
Measured against hand-drawn fracture boxes in ``docs/localisation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from osteoflag.errors import BundleError
from osteoflag.inference.pixels import InputSpec, placement
from osteoflag.inference.region import Region

FloatMap = npt.NDArray[np.float32]

#: The box holds the connected area around the peak where the evidence is at least this
#: fraction of the peak's (chosen on fracture-boxes, see docs/localisation.md).
HOT_FRACTION: Final = 0.5


@dataclass(frozen=True)
class PooledLayout:
    """Which features are the average and the maximum of the map's channels (the last
    ``C`` or ``2C`` of the feature vector, as every layout the training code writes)."""

    average: slice
    maximum: slice | None

    @classmethod
    def of(cls, feature_count: int, channels: int) -> PooledLayout:
        """The layout for ``feature_count`` features over a map of ``channels`` channels."""
        if feature_count == channels:
            return cls(slice(0, channels), None)
        if feature_count >= 2 * channels:
            start = feature_count - 2 * channels
            return cls(slice(start, start + channels), slice(start + channels, feature_count))
        raise BundleError(
            f"{feature_count} features cannot be pooled from a map of {channels} channels"
        )


def evidence_map(
    maps: FloatMap, contributions: npt.NDArray[np.float64], layout: PooledLayout
) -> FloatMap:
    """One image's (h, w) evidence map from its (C, h, w) map and per-feature contributions
    (log-odds toward fracture; the bias column excluded)."""
    channels, height, width = maps.shape
    values = maps.reshape(channels, -1).astype(np.float64)
    totals = values.sum(axis=1)
    used = totals > 0
    phi_avg = contributions[layout.average]
    heat: npt.NDArray[np.float64] = (phi_avg[used] / totals[used]) @ values[used]
    if layout.maximum is not None:
        phi_max = contributions[layout.maximum]
        np.add.at(heat, values.argmax(axis=1), phi_max)
    return heat.reshape(height, width).astype(np.float32)


def upsample(heat: FloatMap, size: tuple[int, int]) -> FloatMap:
    """``heat`` resized to ``size`` (height, width), bilinear with aligned pixel centres."""
    height, width = size
    image = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def region_from_map(
    heat: FloatMap, spec: InputSpec, source: tuple[int, int], fraction: float = HOT_FRACTION
) -> Region | None:
    """The region of an evidence map over the model input, in source pixels (``source`` is
    the image's (rows, columns)); None when no position speaks for fracture.

    The map is upsampled to the model input, cropped to where the image lies (letterbox bars
    hold no anatomy), thresholded at ``fraction`` of its peak; the component holding the peak
    is the box. ``Region.heat`` is the cropped map scaled to 1 at the peak, negatives cut.
    """
    where = placement(source, spec)
    left, top = where.offset
    width, height = where.size
    dense = upsample(heat, spec.size)[top : top + height, left : left + width]
    peak_index = np.unravel_index(int(np.argmax(dense)), dense.shape)
    peak_value = float(dense[peak_index])
    if not peak_value > 0:
        return None
    components, _ = ndimage.label(dense >= fraction * peak_value)
    rows, columns = np.nonzero(components == components[peak_index])
    rows_total, columns_total = source
    x0, y0 = where.to_source(left + float(columns.min()), top + float(rows.min()))
    x1, y1 = where.to_source(left + float(columns.max()) + 1, top + float(rows.max()) + 1)
    px, py = where.to_source(left + peak_index[1] + 0.5, top + peak_index[0] + 0.5)
    last_x, last_y = columns_total - 1, rows_total - 1
    return Region(
        peak=(min(int(px), last_x), min(int(py), last_y)),
        box=(
            int(x0),
            int(y0),
            min(int(np.ceil(x1)) - 1, last_x),
            min(int(np.ceil(y1)) - 1, last_y),
        ),
        heat=np.clip(dense / peak_value, 0.0, 1.0).astype(np.float32),
    )
