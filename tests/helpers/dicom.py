"""Synthetic radiographs: DX, CR and SC datasets and files in every accepted transfer syntax.

Patient attributes are fixed, recognisable values so privacy tests can grep logs for them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane^Fixture"
PATIENT_ID = "PID-0042-FIXTURE"
PATIENT_BIRTH_DATE = "19700101"
ACCESSION_NUMBER = "ACC-9876-FIXTURE"

MODALITIES = {
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "SC": SecondaryCaptureImageStorage,
}

# Transfer syntax -> (DCMTK converter arguments or None when pydicom encodes it).
TRANSFER_SYNTAXES: dict[UID, tuple[str, ...] | None] = {
    ExplicitVRLittleEndian: None,
    ImplicitVRLittleEndian: None,
    DeflatedExplicitVRLittleEndian: None,
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb"),
    JPEGExtended12Bit: ("dcmcjpeg", "+ee"),
    JPEGLossless: ("dcmcjpeg", "+el"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    JPEGLSNearLossless: ("dcmcjpls", "+en"),
    JPEG2000Lossless: None,
    JPEG2000: None,
    RLELossless: None,
}


def radiograph(
    modality: str = "DX",
    rows: int = 96,
    columns: int = 80,
    bits: int = 8,
    seed: int = 0,
    body_part: str = "HAND",
) -> Dataset:
    """A small MONOCHROME2 radiograph with a bright 'bone' band and noise."""
    rng = np.random.default_rng(seed)
    maximum = (1 << bits) - 1
    image = rng.integers(0, maximum // 4, size=(rows, columns))
    image[rows // 3 : 2 * rows // 3, :] += maximum // 2
    image[:, columns // 2 - 2 : columns // 2 + 2] = maximum
    ds = Dataset()
    ds.SOPClassUID = MODALITIES[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "F"
    ds.AccessionNumber = ACCESSION_NUMBER
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "OT" if modality == "SC" else modality
    ds.BodyPartExamined = body_part
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    dtype = np.uint8 if bits <= 8 else np.uint16
    ds.PixelData = np.clip(image, 0, maximum).astype(dtype).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def set_raw(ds: Dataset, keyword: str, value: bytes) -> Dataset:
    """Put ``value`` as the bytes of ``keyword``, unchecked, as a sloppy sender writes it
    (pydicom refuses to hold an invalid DS such as ``abc``)."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    padded = value + b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(padded), padded, 0, False, True)
    return ds


def write_in_syntax(ds: Dataset, transfer_syntax: UID, path: Path) -> Path:
    """Write ``ds`` to ``path`` encoded in ``transfer_syntax`` (pydicom or DCMTK encoders)."""
    ds = ds.copy()
    converter = TRANSFER_SYNTAXES[transfer_syntax]
    if converter is not None:
        plain = path.with_suffix(".plain.dcm")
        ds.save_as(plain, enforce_file_format=True)
        tool = shutil.which(converter[0])
        if tool is None:
            raise RuntimeError(f"{converter[0]} not installed (scripts/install-debian-tools.sh)")
        subprocess.run([tool, *converter[1:], str(plain), str(path)], check=True)
        plain.unlink()
        return path
    if transfer_syntax == JPEG2000:
        ds.compress(transfer_syntax, j2k_cr=[10])
    elif transfer_syntax.is_compressed:
        ds.compress(transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def pixels(path: Path) -> np.ndarray:
    """Decoded pixel array of a file."""
    return dcmread(path).pixel_array
