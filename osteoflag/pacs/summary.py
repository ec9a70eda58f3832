"""The summary image: the radiograph with a burned-in research-only result banner.

Many viewers do not render SR, so the result is also sent as a Secondary Capture Image
(PS3.3 A.8.1) in its own series of the source study (Modality OT), with
BurnedInAnnotation YES. The banner is added above the image, never over the anatomy; a
flagged image's region and the model's evidence are drawn on it (:mod:`osteoflag.pacs.picture`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit
from pydicom.valuerep import DA, TM

import osteoflag
from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import DisplayImage, GreyArray, display_from_dataset
from osteoflag.inference.region import Region
from osteoflag.pacs import values
from osteoflag.pacs.derived import (
    COPIED,
    MANUFACTURER,
    RESEARCH_PREFIX,
    RESEARCH_STATEMENT,
    Classification,
    Kind,
    ModelIdentity,
    contributing_equipment,
    instance_uid,
    local_time,
    mark_research,
    name_software,
    require,
    series_laterality,
    series_uid,
    study_evidence,
)
from osteoflag.pacs.picture import render
from osteoflag.pacs.sr import decoded_frames

logger = logging.getLogger(__name__)

SUMMARY_SERIES_NUMBER: Final = 9902
#: The summary is stored JPEG Baseline (lossy, 8 bits): a pointer to the result, not a
#: diagnostic image, so a PACS keeps 0.1-0.3 MB instead of up to ~11 MB of uncompressed RGB.
TRANSFER_SYNTAX: Final = JPEGBaseline8Bit


def banner_lines(result: Classification, model: ModelIdentity) -> list[str]:
    """The banner's text: finding, score, threshold, model and the research statement."""
    if result.label is Label.FRACTURE:
        finding = "FRACTURE SUSPECTED"
    elif result.label is Label.NO_FRACTURE:
        finding = "No fracture suspected"
    else:
        finding = f"UNDETERMINED: {result.reason}"[:64]
    score = (
        f"score {result.probability * 100:.1f}%" if result.probability is not None else "no score"
    )
    return [
        f"{RESEARCH_PREFIX} - {RESEARCH_STATEMENT}",
        f"{finding} | {score} | threshold {model.threshold * 100:.1f}%",
        f"model {model.name} {model.version} | osteoflag {osteoflag.__version__}",
    ]


def banner_image(
    display: DisplayImage,
    result: Classification,
    model: ModelIdentity,
    region: Region | None = None,
) -> NDArray[np.uint8]:
    """The summary's RGB pixels for any display image: the PACS's picture, and the operator
    page's for an uploaded PNG, JPEG or DICOM file."""
    return render(display.grey8(), banner_lines(result, model), result.label, region)


def mark_lossy(image: Dataset, uncompressed_bytes: int) -> None:
    """Lossy Image Compression "01" with its ratio and method (PS3.3 C.7.6.1.1.5), from the
    size of the one encapsulated frame."""
    frame = next(generate_frames(image.PixelData, number_of_frames=1))
    image.LossyImageCompression = "01"
    image.LossyImageCompressionRatio = [f"{uncompressed_bytes / len(frame):.2f}"]
    image.LossyImageCompressionMethod = ["ISO_10918_1"]


def build_summary(
    source: Dataset,
    result: Classification,
    *,
    model: ModelIdentity,
    created: datetime,
    grey: GreyArray | None = None,
    region: Region | None = None,
) -> Dataset:
    """The Secondary Capture summary of one classified image, with deterministic UIDs, JPEG
    Baseline encoded (PS3.5 A.4.1; Lossy Image Compression set, PS3.3 C.7.6.1.1.5).

    ``grey`` is ``source`` as displayed, in 8 bits (:meth:`DisplayImage.grey8`), when the
    caller already has it (the worker does: decoding a 2048x1664 image again costs ~20 ms).
    """
    evidence = study_evidence(source)
    created, utc_offset = local_time(source, created)
    if grey is None:
        grey = display_from_dataset(source).grey8()
    pixels = render(grey, banner_lines(result, model), result.label, region)
    sop_uid = instance_uid(evidence.SOPInstanceUID, model.version, Kind.SUMMARY)
    try:
        image = hd.sc.SCImage(
            pixel_array=pixels,
            photometric_interpretation="YBR_FULL_422",
            bits_allocated=8,
            transfer_syntax_uid=TRANSFER_SYNTAX,
            coordinate_system="PATIENT",
            study_instance_uid=evidence.StudyInstanceUID,
            series_instance_uid=series_uid(evidence.SeriesInstanceUID, model.version, Kind.SUMMARY),
            series_number=SUMMARY_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=values.instance_number(source),
            manufacturer=MANUFACTURER,
            patient_id=evidence.PatientID,
            patient_name=evidence.PatientName,
            patient_birth_date=evidence.PatientBirthDate,
            patient_sex=evidence.PatientSex,
            accession_number=evidence.AccessionNumber,
            study_id=evidence.StudyID,
            study_date=evidence.StudyDate,
            study_time=evidence.StudyTime,
            referring_physician_name=evidence.ReferringPhysicianName,
            patient_orientation=("L", "F"),
            contributing_equipment=contributing_equipment(),
            software_versions=model.software_versions[0],  # highdicom: one value
            content_date=created.date(),
            content_time=created.time(),
            series_date=created.date(),
            series_time=created.time(),
        )
    except (ValueError, TypeError) as exc:
        reason = values.redact(str(exc), source, COPIED)
        raise PermanentError(
            f"cannot build summary for source SOPInstanceUID {evidence.SOPInstanceUID}: {reason}"
        ) from exc
    image.PatientOrientation = source.get("PatientOrientation", "")
    image.DateOfSecondaryCapture = DA(created.date())
    image.TimeOfSecondaryCapture = TM(created.time())
    image.BurnedInAnnotation = "YES"
    if utc_offset is not None:
        image.TimezoneOffsetFromUTC = utc_offset
    mark_lossy(image, pixels.nbytes)
    image.ImageComments = RESEARCH_STATEMENT
    reference = Dataset()
    reference.ReferencedSOPClassUID = require(source, "SOPClassUID")
    reference.ReferencedSOPInstanceUID = evidence.SOPInstanceUID
    frames = decoded_frames(source)
    if frames is not None:  # the picture is frame 1's (PS3.3 Table 10-3)
        reference.ReferencedFrameNumber = frames
    image.SourceImageSequence = [reference]
    if "SpecificCharacterSet" in evidence:
        image.SpecificCharacterSet = evidence.SpecificCharacterSet
    for keyword in COPIED:  # the Type 3 ones (Study Description...) SCImage takes no part in
        if keyword in evidence and keyword not in image:
            image[evidence[keyword].tag] = evidence[keyword]
    if source.get("BodyPartExamined"):
        image.BodyPartExamined = source.BodyPartExamined
    # Type 2C (C.7.3.1): the source's side, whether or not it names the body part
    image.Laterality = series_laterality(source)
    name_software(image, model)
    mark_research(image, Kind.SUMMARY, model)
    logger.debug(
        "summary image built",
        extra={"action": "build_summary", "sop_instance_uid": str(sop_uid)},
    )
    return image
