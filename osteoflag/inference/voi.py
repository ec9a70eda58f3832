"""The grayscale transforms of PS3.4 N.2.1.1 after decoding: padding, windows, VOI LUTs.

Each takes the decoded (or rescaled) values of one frame and the data set that describes
them, and raises :class:`~osteoflag.errors.PixelDataError` naming the offending tag when a
transform cannot be used, so :mod:`osteoflag.inference.pixels` only chains them. Without a
VOI transform the values are stretched from their minimum to their maximum (:func:`stretch`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_voi

from osteoflag.errors import PixelDataError


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS/IS element (the first window, PS3.3 C.11.2.1.2)."""
    if isinstance(value, list | tuple | MultiValue):
        return float(value[0])
    return float(value)


def number(ds: Dataset, keyword: str) -> float | None:
    """First value of a DS/IS attribute, or None when it is not a finite number (a sender's
    ``abc`` in Window Center): the transform it belongs to is then left out, not the image."""
    try:
        value = _first(ds[keyword].value)
    except (ValueError, TypeError, IndexError, OverflowError, KeyError):
        return None
    return value if math.isfinite(value) else None


def usable(ds: Dataset, *keywords: str) -> bool:
    """True when every one of ``keywords`` present in ``ds`` is a finite number."""
    return all(number(ds, keyword) is not None for keyword in keywords if keyword in ds)


def padding_mask(ds: Dataset, stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
    """Pixels equal to Pixel Padding Value, or within the padding range (PS3.3 C.7.5.1.1.2).

    The comparison is on stored values, before the Modality LUT, as the standard requires.
    """
    try:
        value = ds.get("PixelPaddingValue")
        if value is None:
            return None
        low = high = int(value)
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is not None:
            low, high = sorted((low, int(limit)))
    except Exception as exc:  # multi-valued, or raw bytes of an odd length
        raise PixelDataError(
            f"(0028,0120) Pixel Padding Value / (0028,0121) Pixel Padding Range Limit unusable: "
            f"{exc}"
        ) from exc
    mask: npt.NDArray[np.bool_] = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def apply_window(
    values: npt.NDArray[np.float64], ds: Dataset, center: float, width: float
) -> npt.NDArray[np.float64]:
    """Window Center/Width to [0, 1], first window only (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function == "SIGMOID":
        if width <= 0:
            raise PixelDataError(f"(0028,1051) Window Width {width} must be > 0 for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise PixelDataError(f"(0028,1051) Window Width {width} must be > 0 for LINEAR_EXACT")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        raise PixelDataError(f"(0028,1056) VOI LUT Function {function!r} is not supported")
    if width < 1:
        raise PixelDataError(f"(0028,1051) Window Width {width} must be >= 1 for LINEAR")
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    out = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0)


def voi_lut(values: npt.NDArray[np.float64], ds: Dataset) -> npt.NDArray[np.float64]:
    """First item of the VOI LUT Sequence, output scaled by its entry depth (PS3.3 C.11.2.1.1)."""
    item = ds.VOILUTSequence[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or len(descriptor) != 3 or "LUTData" not in item:
        raise PixelDataError("(0028,3010) VOI LUT Sequence item lacks a valid LUT Descriptor/Data")
    try:
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    except Exception as exc:  # a short LUT Data raises struct.error or IndexError, not ValueError
        raise PixelDataError(f"(0028,3010) VOI LUT Sequence cannot be applied: {exc}") from exc
    return np.asarray(mapped, dtype=np.float64) / float(2 ** int(descriptor[2]) - 1)


def stretch(
    values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.float64]:
    """Map min..max of the (non-padding) values to 0..1; a flat image becomes all 0."""
    sample = values if valid is None else values[valid]
    if sample.size == 0:
        return np.zeros_like(values)
    low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)
