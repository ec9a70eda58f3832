"""Inference test data: synthetic radiographs as DICOM and PNG.

Every dataset is built from a known numpy array, so a test can compute the expected display
independently of the code under test (see :func:`reference_display`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")


def radiograph(rows: int = 96, columns: int = 80, maximum: int = 4095, seed: int = 0) -> Any:
    """A smooth 'bone over soft tissue' picture with noise, values 0..maximum (int64)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    picture = 0.3 + 0.4 * np.exp(-(((x - columns / 2) / (columns / 6)) ** 2))
    picture += 0.2 * (y / rows) + 0.05 * rng.standard_normal((rows, columns))
    picture = np.clip(picture, 0.0, 1.0)
    return np.rint(picture * maximum).astype(np.int64)


def dataset(
    pixels: npt.NDArray[Any],
    *,
    photometric: str = "MONOCHROME2",
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    planar: int = 0,
    syntax: UID = ExplicitVRLittleEndian,
    **attributes: Any,
) -> Dataset:
    """A DX (grey) or Secondary Capture (colour) dataset holding ``pixels`` natively encoded.

    ``pixels`` is (rows, cols), (rows, cols, 3) or (frames, rows, cols) for grey multi-frame
    when ``NumberOfFrames`` is given in ``attributes``.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3 and "NumberOfFrames" not in attributes
    sop_class = SecondaryCaptureImageStorage if colour else DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT" if colour else "DX"
    ds.PatientID = "TEST"
    ds.BodyPartExamined = "HAND"
    ds.Rows, ds.Columns = (
        int(pixels.shape[-3 if colour else -2]),
        int(pixels.shape[-2 if colour else -1]),
    )
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if colour:
        ds.PlanarConfiguration = planar
    for key, value in attributes.items():
        setattr(ds, key, value)
    dtype = {8: "u1", 16: "u2", 32: "u4"}[bits_allocated]
    if signed:
        dtype = dtype.replace("u", "i")
    data = pixels.astype(dtype)
    if colour and planar == 1:
        data = np.moveaxis(data, -1, 0)
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file in its file meta's transfer syntax."""
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk(tool: str, *args: str | Path) -> None:
    """Run a DCMTK converter (``dcmcjpeg``, ``dcmcjpls``, ``dcmconv``...), failing loudly."""
    if shutil.which(tool) is None:
        raise RuntimeError(f"DCMTK tool {tool} is not installed")
    subprocess.run([tool, *map(str, args)], check=True, capture_output=True)


def png_of(pixels: npt.NDArray[Any], path: Path) -> Path:
    """Write an 8-bit grey or RGB PNG."""
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def dicom_from_png(png: Path, path: Path) -> Path:
    """A DICOM made from a PNG the way a modality's Secondary Capture would: same samples."""
    with Image.open(png) as image:
        pixels = np.asarray(image)
    photometric = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    return save(dataset(pixels, photometric=photometric, bits_allocated=8), path)


def _voi_range(ds: Dataset) -> tuple[float, float]:
    """Output range of pydicom's apply_windowing (PS3.3 C.11.2.1.2), to normalise to [0, 1]."""
    if ds.PixelRepresentation == 0:
        low, high = 0.0, float(2**ds.BitsStored - 1)
    else:
        low, high = float(-(2 ** (ds.BitsStored - 1))), float(2 ** (ds.BitsStored - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low = low * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        high = high * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return low, high


def reference_display(path: Path) -> npt.NDArray[np.float64]:
    """Expected display of a grey, uncompressed file, computed with pydicom's own LUT functions."""
    ds = dcmread(path)
    stored = pixel_array(ds)
    if "NumberOfFrames" in ds and int(ds.NumberOfFrames) > 1:
        stored = stored[0]
    if ds.SamplesPerPixel == 3:
        grey = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.asarray((grey - grey.min()) / (grey.max() - grey.min()), dtype=np.float64)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    padding = np.zeros(stored.shape, dtype=bool)
    if "PixelPaddingValue" in ds:
        low = high = int(ds.PixelPaddingValue)
        if "PixelPaddingRangeLimit" in ds:
            low, high = sorted((low, int(ds.PixelPaddingRangeLimit)))
        padding = (stored >= low) & (stored <= high)
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        display = apply_voi_lut(values.astype(np.int64), ds).astype(np.float64) / (2**bits - 1)
    elif "WindowCenter" in ds:
        bottom, top = _voi_range(ds)
        display = (apply_voi_lut(values, ds).astype(np.float64) - bottom) / (top - bottom)
    else:
        kept = values[~padding]
        display = (values - kept.min()) / (kept.max() - kept.min())
    if ds.PhotometricInterpretation == "MONOCHROME1":
        display = 1.0 - display
    display[padding] = 0.0
    return np.asarray(display, dtype=np.float64)
