"""The research-only result SR: a TID 1500 Measurement Report following IHE AI Results.

One function per template of PS3.16: TID 1500 Measurement Report at the root, its
observation context a device (TID 1002 / TID 1004). A flagged image with a region gets a
TID 1410 Planar ROI group in "Imaging Measurements": the finding, TID 4019 Algorithm
Identification, the region as a 2D SCOORD box on the source image and a TID 300
"Certainty of Finding" in percent. Viewers that draw TID 1500 reports (OHIF) reject a whole
document when one of its groups has no SCOORD, and cannot display one without any group, so
a scored result without a region gets a TID 1501 group whose certainty is inferred from the
whole image (an SCOORD along its border) and labelled in words. An undetermined result has
no score and is stated once for the document in TID 1500's "Qualitative Evaluations"
container. :mod:`sr_read` parses every form back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Final, TypeVar

import highdicom as hd
import numpy as np
from pydicom import Dataset, uid
from pydicom.sr.coding import Code
from pydicom.uid import UID

from osteoflag.config import SRClass
from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs import codes, values
from osteoflag.pacs.derived import (
    COPIED,
    DEVICE_MODEL_NAME,
    DEVICE_NAME,
    MANUFACTURER,
    RESEARCH_PREFIX,
    RESEARCH_STATEMENT,
    Classification,
    Kind,
    ModelIdentity,
    contributing_equipment,
    derived_uid,
    instance_uid,
    local_time,
    mark_research,
    name_software,
    require,
    series_uid,
    study_evidence,
)

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
THRESHOLD_PARAMETER = "threshold="
SHA256_PARAMETER = "sha256="
TRACKING_IDENTIFIER = "osteoflag suspected fracture"

EVALUATIONS = {
    Label.FRACTURE: codes.PRESENT,
    Label.NO_FRACTURE: codes.ABSENT,
    Label.UNDETERMINED: codes.UNDETERMINED,
}
_SOP_CLASSES: dict[SRClass, type[hd.sr.Comprehensive3DSR] | type[hd.sr.ComprehensiveSR]] = {
    SRClass.COMPREHENSIVE_3D: hd.sr.Comprehensive3DSR,
    SRClass.COMPREHENSIVE: hd.sr.ComprehensiveSR,
}


def device_observer_context(device_uid: str) -> hd.sr.ObservationContext:
    """TID 1001 Observation Context with a TID 1002 / TID 1004 device observer."""
    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name=DEVICE_NAME,
        manufacturer_name=MANUFACTURER,
        model_name=DEVICE_MODEL_NAME,
    )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE),
        observer_identifying_attributes=attributes,
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name, version, threshold and bundle hash."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[
            f"{THRESHOLD_PARAMETER}{model.threshold:g}",
            f"{SHA256_PARAMETER}{model.sha256}",
        ],
        manufacturer=MANUFACTURER,
    )


def certainty_of_finding(probability: float) -> hd.sr.Measurement:
    """TID 300 Measurement: the probability as (111012, DCM) "Certainty of Finding" in %."""
    return hd.sr.Measurement(
        name=codes.CERTAINTY_OF_FINDING,
        value=round(probability * 100.0, 4),
        unit=codes.PERCENT,
    )


def box_polyline(box: tuple[int, int, int, int]) -> np.ndarray:
    """A box as a closed POLYLINE (PS3.3 C.18.6.1.2): five (column, row) points, first = last."""
    x0, y0, x1, y1 = (float(value) for value in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def region_outline(region: Region) -> np.ndarray:
    """The closed POLYLINE around every pixel of ``region.box``.

    ``Region.box`` names its first and last pixel, both inside; image coordinates put 0,0 at
    the top-left corner of the top-left pixel, whose centre is 0.5,0.5 (PS3.3 C.18.6.1.2,
    C.10.5.1.2). The outline therefore runs along the outer edges, x1 + 1 and y1 + 1: drawn
    at x1, y1 it would leave out the last column and row, a whole box at the image's right or
    bottom edge, and a one-pixel region would have no area at all.
    """
    x0, y0, x1, y1 = region.box
    return box_polyline((x0, y0, x1 + 1, y1 + 1))


#: The multi-frame IODs among the accepted image classes (PS3.3 A.8.3 to A.8.5).
MULTI_FRAME_CLASSES: Final = frozenset(
    {
        uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)

_Reference = TypeVar("_Reference", hd.sr.SourceImageForRegion, hd.sr.SourceImageForMeasurementGroup)


def decoded_frames(source: Dataset) -> list[int] | None:
    """Referenced Frame Number (0008,1160) of a result on ``source``: frame 1, the only one
    decoded, for an image of several frames; else None. Left out, a reference to a
    multi-frame image means every frame (PS3.3 Table 10-3, as used by the SR's IMAGE items,
    C.18.3, and by a Graphic Annotation, C.10.5); it may only be given for a multi-frame IOD,
    so a DX that claims several frames is referenced as a whole."""
    frames = values.copied_value(source, "NumberOfFrames")
    several = isinstance(frames, int) and frames > 1
    return [1] if several and source.get("SOPClassUID") in MULTI_FRAME_CLASSES else None


def image_reference(kind: type[_Reference], source: Dataset) -> _Reference:
    """A reference to ``source`` (frame 1 of a multi-frame one) by its SOP Class and Instance
    UIDs. highdicom's ``from_source_image`` would also read Modality (0008,0060), only to
    refuse non-image objects; some converted images (a Secondary Capture from a scanned
    film) lack it, and the worker has decoded the source's pixels by now."""
    return kind(
        referenced_sop_class_uid=require(source, "SOPClassUID"),
        referenced_sop_instance_uid=require(source, "SOPInstanceUID"),
        referenced_frame_numbers=decoded_frames(source),
    )


def tracking_identifier(source_uid: str, model: ModelIdentity) -> hd.sr.TrackingIdentifier:
    """TID 4108 Tracking Identifier and Tracking Unique Identifier, derived from the source."""
    return hd.sr.TrackingIdentifier(
        uid=derived_uid("tracking", source_uid, model.version), identifier=TRACKING_IDENTIFIER
    )


def fracture_region_group(
    source: Dataset, probability: float, region: Region, model: ModelIdentity
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group for a flagged image: finding, evaluation, certainty and its region."""
    site = codes.finding_site(source.get("BodyPartExamined"))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(require(source, "SOPInstanceUID"), model),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=region_outline(region),
            source_image=image_reference(hd.sr.SourceImageForRegion, source),
        ),
        finding_type=codes.FRACTURE_OF_BONE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=site)] if site is not None else None,
        algorithm_id=algorithm_identification(model),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.FRACTURE_OF_BONE, value=codes.PRESENT)
        ],
        measurements=[certainty_of_finding(probability)],
    )


def statement(result: Classification, region: Region | None) -> str:
    """The result in words, as a viewer labels a group (research-only marked)."""
    if result.label is Label.NO_FRACTURE:
        return f"{RESEARCH_PREFIX} - no fracture suspected"
    where = "" if region is not None else " (no region)"
    return f"{RESEARCH_PREFIX} - fracture suspected{where}"


def whole_image_group(
    source: Dataset, result: Classification, model: ModelIdentity
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for a scored result without a region (not flagged, or flagged where
    the model gave no region): the certainty is inferred from the whole image (TID 300 / 320,
    a closed POLYLINE along the image's border), and a Comment states the result in words.

    Viewers that draw TID 1500 reports need an SCOORD in every group and at least one group
    to open the document at all (OHIF 3.13); this draws the border labelled with the words.
    """
    assert result.probability is not None  # guaranteed by Classification
    rows, columns = int(require(source, "Rows")), int(require(source, "Columns"))
    site = codes.finding_site(source.get("BodyPartExamined"))
    certainty = hd.sr.Measurement(
        name=codes.CERTAINTY_OF_FINDING,
        value=round(result.probability * 100.0, 4),
        unit=codes.PERCENT,
        referenced_coordinates=[
            hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=box_polyline((0, 0, columns, rows)),
                source_image=image_reference(hd.sr.SourceImageForRegion, source),
            )
        ],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(require(source, "SOPInstanceUID"), model),
        finding_type=codes.FRACTURE_OF_BONE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=site)] if site is not None else None,
        algorithm_id=algorithm_identification(model),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.FRACTURE_OF_BONE, value=EVALUATIONS[result.label]
            )
        ],
        measurements=[certainty],
        source_images=[image_reference(hd.sr.SourceImageForMeasurementGroup, source)],
    )
    group[0].ContentSequence.append(
        _text(statement(result, None), hd.sr.RelationshipTypeValues.CONTAINS)
    )
    return group


def document_evaluation(
    source: Dataset, reason: str, model: ModelIdentity
) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": an undetermined result (no score), in no group.

    One CODE item "Fracture of bone" = Undetermined, modified by the finding site and
    TID 4019, with the reason as its property and the source image it was inferred from.
    """
    site = codes.finding_site(source.get("BodyPartExamined"))
    children = hd.sr.ContentSequence()
    if site is not None:
        children.append(hd.sr.FindingSite(anatomic_location=site))
    children.extend(algorithm_identification(model))
    children.append(_text(default_repertoire(reason), hd.sr.RelationshipTypeValues.HAS_PROPERTIES))
    children.append(
        hd.sr.ImageContentItem(
            name=codes.SOURCE,
            referenced_sop_class_uid=require(source, "SOPClassUID"),
            referenced_sop_instance_uid=require(source, "SOPInstanceUID"),
            referenced_frame_numbers=decoded_frames(source),
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        )
    )
    evaluation = hd.sr.CodeContentItem(
        name=codes.FRACTURE_OF_BONE,
        value=codes.UNDETERMINED,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    evaluation.ContentSequence = children
    return _container(codes.QUALITATIVE_EVALUATIONS, [evaluation])


def default_repertoire(text: str) -> str:
    """``text`` with every character outside ISO-IR 6 escaped (``\\xc4``). A reason may
    quote a source's value (a Body Part Examined ``HÄND``), and the SR's character set is
    the source's, which may be none: unescaped, such a TEXT item is invalid and DCMTK
    refuses to read the whole document."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def measurement_report(
    findings: hd.sr.ContainerContentItem, device_uid: str
) -> hd.sr.ContainerContentItem:
    """TID 1500 Imaging Measurement Report root: context, the research-only statement as
    TEXT, then ``findings`` (an "Imaging Measurements" or "Qualitative Evaluations" container)."""
    root = hd.sr.ContainerContentItem(name=codes.IMAGING_MEASUREMENT_REPORT, template_id="1500")
    content = hd.sr.ContentSequence()
    content.append(
        hd.sr.CodeContentItem(
            name=codes.LANGUAGE_OF_CONTENT,
            value=codes.ENGLISH_US,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    content.extend(device_observer_context(device_uid))
    content.append(
        hd.sr.CodeContentItem(
            name=codes.PROCEDURE_REPORTED,
            value=codes.PLAIN_RADIOGRAPHY,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    content.append(_text(RESEARCH_STATEMENT, hd.sr.RelationshipTypeValues.CONTAINS))
    content.append(findings)
    root.ContentSequence = content
    return root


def report_findings(
    source: Dataset, result: Classification, model: ModelIdentity, region: Region | None
) -> hd.sr.ContainerContentItem:
    """A TID 1410 group around the region; a TID 1501 group for the whole image when a scored
    result has none; the document-level evaluation for an undetermined one."""
    if result.label is Label.UNDETERMINED:
        assert result.reason is not None  # guaranteed by Classification
        return document_evaluation(source, result.reason, model)
    if result.label is Label.FRACTURE and region is not None:
        assert result.probability is not None  # guaranteed by Classification
        group = fracture_region_group(source, result.probability, region, model)
        return _container(codes.IMAGING_MEASUREMENTS, group)
    return _container(codes.IMAGING_MEASUREMENTS, whole_image_group(source, result, model))


def _container(
    name: Code, items: hd.sr.ContentSequence | Sequence[hd.sr.ContentItem]
) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _text(text: str, relationship: hd.sr.RelationshipTypeValues) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=codes.COMMENT, value=text, relationship_type=relationship)


def sr_uids(evidence: Dataset, model: ModelIdentity, sr_class: SRClass) -> tuple[UID, UID]:
    """Series and SOP Instance UIDs of the SR: derived from the source and the model version,
    and from the class unless it is the default, so that switching ``report.sr_class`` never
    sends one SOP Instance UID under two SOP Classes."""
    source_series, source_uid = evidence.SeriesInstanceUID, evidence.SOPInstanceUID
    if sr_class is SRClass.COMPREHENSIVE_3D:
        return (
            series_uid(source_series, model.version, Kind.SR),
            instance_uid(source_uid, model.version, Kind.SR),
        )
    kind = f"{Kind.SR.value}-{sr_class.value}"
    return (
        derived_uid("series", source_series, model.version, kind),
        derived_uid("instance", source_uid, model.version, kind),
    )


def build_sr(
    source: Dataset,
    result: Classification,
    *,
    model: ModelIdentity,
    device_uid: str,
    created: datetime,
    region: Region | None = None,
    sr_class: SRClass = SRClass.COMPREHENSIVE_3D,
) -> Dataset:
    """The SR for one classified source image (PS3.3 A.35.13 or A.35.3, by ``sr_class``).

    UIDs are derived from the source and the model version, so the same inputs
    always give the same Series and SOP Instance UIDs. ``created`` sets the
    Content and Series Date/Time (pass the time the result was stored), written in the
    source's time zone (:func:`~osteoflag.pacs.derived.local_time`). ``region`` is
    drawn only for a ``fracture`` result.
    """
    evidence = study_evidence(source)
    series, sop_uid = sr_uids(evidence, model, sr_class)
    created, utc_offset = local_time(source, created)
    try:
        content = measurement_report(report_findings(source, result, model, region), device_uid)
        sr = _SOP_CLASSES[sr_class](
            evidence=[evidence],
            content=content,
            series_instance_uid=series,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=values.instance_number(source),
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            contributing_equipment=contributing_equipment(),
            manufacturer_model_name=DEVICE_MODEL_NAME,
            software_versions=model.software_versions[0],  # highdicom: one value
            content_date=created.date(),
            content_time=created.time(),
            series_date=created.date(),
            series_time=created.time(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        reason = values.redact(str(exc), source, COPIED)
        raise PermanentError(
            f"cannot build SR for source SOPInstanceUID {evidence.SOPInstanceUID}: {reason}"
        ) from exc
    if utc_offset is not None:
        sr.TimezoneOffsetFromUTC = utc_offset
    name_software(sr, model)
    mark_research(sr, Kind.SR, model)
    logger.debug(
        "SR built",
        extra={
            "action": "build_sr",
            "sop_instance_uid": str(sop_uid),
            "label": result.label,
            "region": region is not None and result.label is Label.FRACTURE,
        },
    )
    return sr
