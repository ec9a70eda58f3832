"""The summary image: the radiograph with a burned-in research-only result banner.

Many viewers do not render SR, so the result is also sent as a Secondary Capture Image
(PS3.3 A.8.1) in its own series of the source study (Modality OT), with
BurnedInAnnotation YES. The banner is added above the image, never over the anatomy.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.valuerep import DA, TM

import osteoflag
from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import DisplayImage, GreyArray, display_from_dataset
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
    mark_research,
    require,
    series_laterality,
    series_uid,
    study_evidence,
)

logger = logging.getLogger(__name__)

SUMMARY_SERIES_NUMBER: Final = 9902
MAX_SIDE: Final = 2048
_COLOURS: Final = {
    Label.FRACTURE: (200, 30, 30),
    Label.NO_FRACTURE: (30, 120, 50),
    Label.UNDETERMINED: (120, 120, 120),
}


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


def render(grey: NDArray[np.uint8], lines: list[str], label: Label) -> NDArray[np.uint8]:
    """An RGB image: a coloured banner with ``lines`` stacked above the (downscaled) radiograph."""
    image = Image.fromarray(grey, mode="L")
    scale = MAX_SIDE / max(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    width = max(image.width, 480)
    font_size = max(12, width // 40)
    font = ImageFont.load_default(size=font_size)
    line_height = round(font_size * 1.4)
    banner_height = line_height * len(lines) + font_size
    canvas = Image.new("RGB", (width, banner_height + image.height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width, banner_height - 1), fill=_COLOURS[label])
    for index, line in enumerate(lines):
        draw.text(
            (font_size // 2, font_size // 2 + index * line_height),
            line,
            fill=(255, 255, 255),
            font=font,
        )
    canvas.paste(image.convert("RGB"), (0, banner_height))
    return np.asarray(canvas, dtype=np.uint8)


def banner_image(
    display: DisplayImage, result: Classification, model: ModelIdentity
) -> NDArray[np.uint8]:
    """The summary's RGB pixels for any display image: the PACS's picture, and the operator
    page's for an uploaded PNG, JPEG or DICOM file."""
    return render(display.grey8(), banner_lines(result, model), result.label)


def build_summary(
    source: Dataset,
    result: Classification,
    *,
    model: ModelIdentity,
    created: datetime,
    grey: GreyArray | None = None,
) -> Dataset:
    """The Secondary Capture summary of one classified image, with deterministic UIDs.

    ``grey`` is ``source`` as displayed, in 8 bits (:meth:`DisplayImage.grey8`), when the
    caller already has it (the worker does: decoding a 2048x1664 image again costs ~20 ms).
    """
    evidence = study_evidence(source)
    if grey is None:
        grey = display_from_dataset(source).grey8()
    pixels = render(grey, banner_lines(result, model), result.label)
    sop_uid = instance_uid(evidence.SOPInstanceUID, model.version, Kind.SUMMARY)
    try:
        image = hd.sc.SCImage(
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=evidence.StudyInstanceUID,
            series_instance_uid=series_uid(evidence.SeriesInstanceUID, model.version, Kind.SUMMARY),
            series_number=SUMMARY_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=int(source.get("InstanceNumber") or 1),
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
            software_versions=model.tag,
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
    image.ImageComments = RESEARCH_STATEMENT
    reference = Dataset()
    reference.ReferencedSOPClassUID = require(source, "SOPClassUID")
    reference.ReferencedSOPInstanceUID = evidence.SOPInstanceUID
    image.SourceImageSequence = [reference]
    if "SpecificCharacterSet" in evidence:
        image.SpecificCharacterSet = evidence.SpecificCharacterSet
    if source.get("BodyPartExamined"):
        image.BodyPartExamined = source.BodyPartExamined
        image.Laterality = series_laterality(source)
    mark_research(image, Kind.SUMMARY, model)
    logger.debug(
        "summary image built",
        extra={"action": "build_summary", "sop_instance_uid": str(sop_uid)},
    )
    return image
