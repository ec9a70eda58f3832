"""From stored pixels to the model's input array: the one path shared by serving and training.

Serving (worker, ``infer``) and training both call :func:`load_display` or
:func:`display_from_dataset`, then :func:`model_input`, so the two can never drift apart.

The DICOM path follows the grayscale pipeline of PS3.4 N.2.1.1: stored values, then the
Modality LUT (PS3.3 C.11.1), then the VOI LUT or window (PS3.3 C.11.2), then the polarity
of MONOCHROME1 (PS3.3 C.7.6.3.1.2). Colour images (RGB, YBR_*, PALETTE COLOR) are turned
into luminance. When there is no VOI transform (PNG/JPEG, or DICOM without window or VOI LUT)
the values are stretched from their minimum to their maximum, so that a PNG and a DICOM made
from it give the same array. Presentation LUT Shape is not applied separately: in the DX and
CR IODs it only restates the polarity of the Photometric Interpretation (PS3.3 C.8.11.6.1.2).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array

from osteoflag.errors import PixelDataError
from osteoflag.inference.budget import (
    DEFAULT_BUDGET,
    PIXEL_DATA,
    DecodeBudget,
    check_codestream,
    check_geometry,
)
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.voi import (
    apply_window,
    number,
    padding_mask,
    stretch,
    usable,
    voi_lut,
)

FloatArray = npt.NDArray[np.float32]
GreyArray = npt.NDArray[np.uint8]

#: ITU-R BT.601 luma weights, the ones DICOM uses for YBR_FULL (PS3.3 C.7.6.3.1.2).
LUMA_WEIGHTS: Final = (0.299, 0.587, 0.114)

_MONOCHROME: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR: Final = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
)


class ResizeMode(StrEnum):
    """How an image of any aspect goes to the model's fixed input size."""

    LETTERBOX = "letterbox"  # keep aspect, pad with black, centred
    STRETCH = "stretch"  # scale each axis independently


class ColourOrder(StrEnum):
    """Channel order the backbone was trained with; ``mean``/``std`` are given in this order."""

    BGR = "BGR"
    RGB = "RGB"


@dataclass(frozen=True)
class DisplayImage:
    """A grey image as it would be displayed: ``pixels`` float32 HxW in [0, 1], 1 is white.

    ``frames`` is the number of frames in the source (only the first is used) and ``notes``
    records the choices made on the way (window used, inversion, padding...).
    """

    pixels: FloatArray
    frames: int = 1
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2 or self.pixels.dtype != np.float32:
            raise PixelDataError(
                f"display pixels must be float32 HxW, got {self.pixels.dtype} {self.pixels.shape}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(rows, columns) of the image."""
        rows, columns = self.pixels.shape
        return rows, columns

    def grey8(self) -> GreyArray:
        """The image as 8-bit grey, 255 white: the form the summary burns in, and a quarter
        of the float copy's size for a worker to keep until the summary is built."""
        return np.asarray(np.round(self.pixels * 255.0), dtype=np.uint8)


@dataclass(frozen=True)
class InputSpec:
    """The backbone's input contract, as declared in the bundle manifest.

    A display value ``v`` in [0, 1] becomes ``(v * scale - mean[c]) / std[c]`` for channel ``c``.
    """

    size: tuple[int, int]  # (height, width)
    resize_mode: ResizeMode = ResizeMode.LETTERBOX
    colour_order: ColourOrder = ColourOrder.RGB
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 255.0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"input size must be two positive integers, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("input mean and std must have three values each")
        if min(self.std) <= 0 or self.scale <= 0:
            raise ValueError("input std and scale must be positive")


def _deferred_pixels(ds: Dataset) -> str | None:
    """The Part 10 file to decode from when Pixel Data was left on disk by a deferred read
    (:data:`osteoflag.inference.dicomfile.DEFER_SIZE`), so that only frame 1 is ever read."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    filename = getattr(ds, "filename", None)
    deferred = element is not None and element.value is None
    if deferred and isinstance(filename, str) and getattr(ds, "preamble", None) is not None:
        return filename
    return None


def _decode_first_frame(ds: Dataset) -> npt.NDArray[Any]:
    """Decode only frame 1 (index 0), once its codestream header agrees with the data set
    (:func:`check_codestream`); pydicom's decoders skip the other frames' bytes.

    Also for single-frame data: without an index, pydicom decodes any excess Pixel Data
    bytes as extra frames, so a hostile file could make it allocate them all.
    """
    filename = _deferred_pixels(ds)
    check_codestream(ds, filename)
    try:
        return pixel_array(filename or ds, index=0)
    except Exception as exc:  # pydicom and its plugins raise many unrelated types
        syntax = ds.file_meta.get("TransferSyntaxUID", "?")
        raise PixelDataError(
            f"(7FE0,0010) Pixel Data could not be decoded (transfer syntax {syntax}): {exc}"
        ) from exc


def grey_from_rgb(rgb: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Luminance of an HxWx3 RGB array, in the input's units (BT.601 weights)."""
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.float64)
    return np.asarray(rgb[..., :3], dtype=np.float64) @ weights


def display_from_dataset(ds: Dataset, budget: DecodeBudget = DEFAULT_BUDGET) -> DisplayImage:
    """Turn a DICOM dataset's first frame into a display image (PS3.4 N.2.1.1 grayscale pipeline).

    Raises :class:`PixelDataError` naming the offending tag when the pixels cannot be used,
    and nothing else: callers (the worker's undetermined result, the summary image) rely on
    it, so an error of pydicom's lazy parsing found nowhere else is wrapped too.
    """
    try:
        return _display(ds, budget)
    except PixelDataError:
        raise
    except Exception as exc:  # pydicom parses lazily: a malformed element fails on first access
        raise PixelDataError(f"unexpected {type(exc).__name__}: {exc}") from exc


def _display(ds: Dataset, budget: DecodeBudget) -> DisplayImage:
    frames = check_geometry(ds, budget)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _MONOCHROME | _COLOUR | {"PALETTE COLOR"}:
        raise PixelDataError(f"(0028,0004) Photometric Interpretation {photometric!r} unsupported")
    stored = _decode_first_frame(ds)
    notes: list[str] = [f"photometric={photometric}"]
    if frames > 1:
        notes.append(f"multi-frame: used frame 1 of {frames}")
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(stored, ds)
        except Exception as exc:  # a malformed descriptor raises TypeError from numpy
            raise PixelDataError(f"(0028,1201) palette colour LUT unusable: {exc}") from exc
        return _finish(stretch(grey_from_rgb(rgb), None), frames, notes)
    if photometric in _COLOUR:
        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise PixelDataError(f"(0028,0002) Samples per Pixel must be 3 for {photometric}")
        return _finish(stretch(grey_from_rgb(stored), None), frames, notes)
    if stored.ndim != 2:
        raise PixelDataError(f"(0028,0002) Samples per Pixel must be 1 for {photometric}")
    padding = padding_mask(ds, stored)
    valid = None if padding is None else ~padding
    rescaled = usable(ds, "RescaleSlope", "RescaleIntercept")
    if not rescaled:
        values = stored.astype(np.float64)
        notes.append("(0028,1053) Rescale Slope / (0028,1052) Rescale Intercept unusable")
    else:
        try:
            values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        except Exception as exc:  # a short LUT Data raises struct.error or IndexError
            raise PixelDataError(f"(0028,3000) Modality LUT / rescale unusable: {exc}") from exc
    center, width = number(ds, "WindowCenter"), number(ds, "WindowWidth")
    if ds.get("VOILUTSequence") and rescaled:
        display = voi_lut(values, ds)
        notes.append("voi=lut")
    elif center is not None and width is not None and rescaled:
        display = apply_window(values, ds, center, width)
        notes.append(f"voi=window {center}/{width}")
    else:
        display = stretch(values, valid)
        window = "WindowCenter" in ds or "WindowWidth" in ds
        notes.append("voi=min-max" + (" (window unusable)" if window and rescaled else ""))
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    if padding is not None:
        display[padding] = 0.0
        notes.append("padding=black")
    return _finish(display, frames, notes)


def _finish(display: npt.NDArray[np.float64], frames: int, notes: list[str]) -> DisplayImage:
    return DisplayImage(display.astype(np.float32), frames=frames, notes=tuple(notes))


def _display_from_picture(image: Image.Image) -> DisplayImage:
    """A PNG/JPEG as a display image: grey (BT.601) and stretched min..max, like DICOM w/o VOI."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        if image.mode in ("1", "LA"):
            image = image.convert("L")
        values = np.asarray(image, dtype=np.float64)
    else:
        values = grey_from_rgb(np.asarray(image.convert("RGB")))
    return _finish(stretch(values, None), 1, [f"picture mode={image.mode}"])


def is_part10(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM Part 10 file (the ``DICM`` prefix, PS3.10 7.1)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise PixelDataError(f"{path}: cannot be read: {exc}") from exc
    return head[128:132] == b"DICM"


def open_picture(path: Path) -> Image.Image | None:
    """``path`` opened by Pillow (its header read, no pixel decoded) when it is a picture
    Pillow knows, else None (maybe DICOM without the Part 10 preamble). A picture Pillow
    recognises but cannot open raises OSError, ValueError or DecompressionBombError."""
    try:
        with warnings.catch_warnings():
            # the decode budget, checked next, is the limit: not Pillow's warning on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        return None


def load_display(path: Path, budget: DecodeBudget = DEFAULT_BUDGET) -> DisplayImage:
    """Read a DICOM file (sniffed by its ``DICM`` prefix, PS3.10 7.1), PNG or JPEG; its size
    is checked against ``budget`` from the header, before any pixel is decoded."""
    forced = not is_part10(path)
    if forced:
        try:
            opened = open_picture(path)
            if opened is not None:
                with opened as image:
                    budget.check_picture(*image.size)
                    image.load()
                    return _display_from_picture(image)
        except PixelDataError as exc:
            raise PixelDataError(f"{path}: {exc}") from exc
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise PixelDataError(f"{path}: picture cannot be decoded: {exc}") from exc
    ds = read_instance(path, force=forced, limit=budget.max_dataset_bytes)
    if forced and "PixelData" not in ds:
        raise PixelDataError(f"{path}: not a DICOM, PNG or JPEG image")
    try:
        return display_from_dataset(ds, budget)
    except PixelDataError as exc:
        raise PixelDataError(f"{path}: {exc}") from exc


def _resize(pixels: FloatArray, height: int, width: int) -> FloatArray:
    image = Image.fromarray(pixels)
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


@dataclass(frozen=True)
class Placement:
    """Where a source image of ``source`` (rows, columns) lands in the model input: scaled by
    ``scale`` (x, y) and shifted to ``offset`` (x, y), as ``size`` (width, height) pixels.

    One object for both directions, so that the inverse mapping (model input back to source
    pixels, for the region) always matches the resize the backbone saw.
    """

    source: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[int, int]
    size: tuple[int, int]

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """A point in model-input pixel coordinates (continuous, 0 at the top-left edge) as a
        point of the source image, clamped to its extent."""
        rows, columns = self.source
        sx = (x - self.offset[0]) / self.scale[0]
        sy = (y - self.offset[1]) / self.scale[1]
        return min(max(sx, 0.0), float(columns)), min(max(sy, 0.0), float(rows))


def placement(source: tuple[int, int], spec: InputSpec) -> Placement:
    """How :func:`fit` places an image of ``source`` (rows, columns) in the model input."""
    height, width = spec.size
    src_h, src_w = source
    if spec.resize_mode is ResizeMode.STRETCH:
        return Placement(source, (width / src_w, height / src_h), (0, 0), (width, height))
    factor = min(height / src_h, width / src_w)
    new_h = max(1, min(height, round(src_h * factor)))
    new_w = max(1, min(width, round(src_w * factor)))
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return Placement(source, (new_w / src_w, new_h / src_h), (left, top), (new_w, new_h))


def fit(display: DisplayImage, spec: InputSpec) -> FloatArray:
    """Resize to the spec's (H, W): stretched, or letterboxed (aspect kept, black bars, centred)."""
    height, width = spec.size
    where = placement(display.size, spec)
    new_w, new_h = where.size
    if (new_w, new_h) == (width, height):
        return _resize(display.pixels, height, width)
    canvas = np.zeros((height, width), dtype=np.float32)
    left, top = where.offset
    canvas[top : top + new_h, left : left + new_w] = _resize(display.pixels, new_h, new_w)
    return canvas


def model_input(display: DisplayImage, spec: InputSpec) -> FloatArray:
    """The backbone input for one image: float32 (3, H, W), grey replicated, then normalised."""
    grey = fit(display, spec) * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((grey[np.newaxis, :, :] - mean) / std, dtype=np.float32)
