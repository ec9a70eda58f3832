"""Test helpers of the SR and delivery tests: synthetic DX radiographs, DICOM tools.

A DX is built from scratch with pydicom so no test depends on a downloaded file; the
patient attributes are fixed fake values the privacy tests may grep for.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from testkit.daemon import DaemonProcess

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
FAKE_PATIENT_NAME = "Testpatient^Osteo"
FAKE_PATIENT_ID = "OSTEO-PID-4711"


def make_dx(
    *,
    rows: int = 256,
    columns: int = 200,
    body_part: str | None = "WRIST",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
) -> Dataset:
    """A valid DX For Presentation image (PS3.3 A.26) with a plausible gradient and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    pixels = (x * 2000 // max(columns, 1) + y * 1000 // max(rows, 1)).astype(np.uint16)
    pixels += rng.integers(0, 200, size=(rows, columns), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.ContentDate = "20260101"
    ds.ContentTime = "101010"
    ds.AccessionNumber = "ACC0815"
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Test"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.DetectorType = "SCINTILLATOR"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 1500
    ds.WindowWidth = 3000
    ds.ImageLaterality = "L"
    ds.PresentationLUTShape = "IDENTITY"
    region = Dataset()
    region.CodeValue = "8205005"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Wrist"
    ds.AnatomicRegionSequence = [region]
    ds.PositionerType = "NONE"
    ds.ViewPosition = "PA"
    ds.KVP = 55
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = []
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (pixels & 0x0FFF).tobytes()
    return ds


def require_tool(name: str) -> str:
    """Path of a machine tool, or skip the test (``make test`` installs them)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dicom3tools' dciodvfy reports for a file (warnings ignored)."""
    tool = require_tool("dciodvfy")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


class RecordingSCP:
    """A real pynetdicom Storage SCP on a loopback port that keeps what it receives.

    ``status`` is the C-STORE status it answers with; ``received`` lists the SOP
    Instance UIDs of every C-STORE request, duplicates included.
    """

    def __init__(
        self,
        port: int = 0,
        ae_title: str = "PACS",
        status: int = 0x0000,
        calling_aets: list[str] | None = None,
    ) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.status = status
        self.received: list[str] = []
        self.ae = AE(ae_title=ae_title)
        self.ae.require_calling_aet = calling_aets or []  # others are rejected (1/1/3)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.ae.add_supported_context("1.2.840.10008.1.1")
        self.server = self.ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: object) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))  # type: ignore[attr-defined]
        return self.status

    def stop(self) -> None:
        """Close the listening socket and every association."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serving(process: DaemonProcess, timeout: float = 180.0) -> Iterator[DaemonProcess]:
    """Run ``osteoflag serve`` for a block; the process is killed afterwards whatever happens.

    The start-up timeout is generous because a loaded CI machine can take long to import
    onnxruntime and verify the bundle; a failed start must not leak the process either.
    """
    try:
        yield process.start(timeout=timeout)
    finally:
        if process.process is not None and process.process.poll() is None:
            process.process.kill()
            process.process.wait(timeout=30)
