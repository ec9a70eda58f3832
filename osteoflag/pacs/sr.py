"""The research-only result SR: a Comprehensive 3D SR following IHE AI Results.

One function per template of PS3.16: TID 1500 Measurement Report at the root, its
observation context a device (TID 1002 / TID 1004), one TID 1501 Measurement and
Qualitative Evaluation Group per classified image with TID 4019 Algorithm
Identification and a TID 300 measurement "Certainty of Finding" in percent.
``read_result`` parses such a document back; ``build_sr`` is its inverse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom import Dataset

from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.pacs import codes
from osteoflag.pacs.derived import (
    DEVICE_MODEL_NAME,
    DEVICE_NAME,
    MANUFACTURER,
    RESEARCH_STATEMENT,
    Classification,
    Kind,
    ModelIdentity,
    contributing_equipment,
    derived_uid,
    instance_uid,
    mark_research,
    require,
    series_uid,
    study_evidence,
)

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
THRESHOLD_PARAMETER = "threshold="
SHA256_PARAMETER = "sha256="

_EVALUATIONS = {Label.FRACTURE: codes.PRESENT, Label.NO_FRACTURE: codes.ABSENT}


@dataclass(frozen=True)
class ReportedResult:
    """What an osteoflag SR states, read back from the document."""

    sop_instance_uid: str
    source_sop_class_uid: str
    source_sop_instance_uid: str
    label: Label
    probability: float | None
    threshold: float | None
    model_name: str
    model_version: str
    reason: str | None


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


def measurement_group(
    source: Dataset, result: Classification, model: ModelIdentity
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for one image: finding, site, evaluation and certainty."""
    source_uid = require(source, "SOPInstanceUID")
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid("tracking", source_uid, model.version),
        identifier="Fracture assessment",
    )
    site = codes.finding_site(source.get("BodyPartExamined"))
    sites = [hd.sr.FindingSite(anatomic_location=site)] if site is not None else None
    if result.label is Label.UNDETERMINED:
        evaluation = codes.UNDETERMINED
        measurements = None
    else:
        evaluation = _EVALUATIONS[result.label]
        assert result.probability is not None  # guaranteed by Classification
        measurements = [certainty_of_finding(result.probability)]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=codes.FRACTURE_OF_BONE,
        finding_sites=sites,
        algorithm_id=algorithm_identification(model),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.FRACTURE_OF_BONE, value=evaluation)
        ],
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    if result.reason:
        group[0].ContentSequence.append(_comment(result.reason))
    return group


def measurement_report(
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations], device_uid: str
) -> hd.sr.MeasurementReport:
    """TID 1500 Imaging Measurement Report, with the research-only statement as TEXT."""
    report = hd.sr.MeasurementReport(
        observation_context=device_observer_context(device_uid),
        procedure_reported=codes.PLAIN_RADIOGRAPHY,
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    content = report[0].ContentSequence
    content.insert(len(content) - 1, _comment(RESEARCH_STATEMENT))
    return report


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=codes.COMMENT,
        value=text,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def build_sr(
    source: Dataset,
    result: Classification,
    *,
    model: ModelIdentity,
    device_uid: str,
    created: datetime,
) -> Dataset:
    """The SR for one classified source image (Comprehensive 3D SR, PS3.3 A.35.13).

    UIDs are derived from the source and the model version, so the same inputs
    always give the same Series and SOP Instance UIDs. ``created`` sets the
    Content and Series Date/Time (pass the time the result was stored).
    """
    evidence = study_evidence(source)
    report = measurement_report([measurement_group(source, result, model)], device_uid)
    sop_uid = instance_uid(evidence.SOPInstanceUID, model.version, Kind.SR)
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[evidence],
            content=report[0],
            series_instance_uid=series_uid(evidence.SeriesInstanceUID, model.version, Kind.SR),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            contributing_equipment=contributing_equipment(),
            manufacturer_model_name=DEVICE_MODEL_NAME,
            software_versions=model.tag,
            content_date=created.date(),
            content_time=created.time(),
            series_date=created.date(),
            series_time=created.time(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise PermanentError(
            f"cannot build SR for source SOPInstanceUID {evidence.SOPInstanceUID}: {exc}"
        ) from exc
    mark_research(sr, Kind.SR, model)
    logger.debug(
        "SR built",
        extra={"action": "build_sr", "sop_instance_uid": str(sop_uid), "label": result.label},
    )
    return sr


def read_result(dataset: Dataset) -> ReportedResult:
    """Parse an osteoflag SR back into its result; PermanentError if it is not one."""
    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
        report = hd.sr.MeasurementReport.from_sequence(sr.content)
        groups = report.get_image_measurement_groups()
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise PermanentError(
            f"SOPInstanceUID {dataset.get('SOPInstanceUID')} is not an osteoflag SR: {exc}"
        ) from exc
    if len(groups) != 1:
        raise PermanentError(
            f"SR {dataset.SOPInstanceUID} has {len(groups)} measurement groups, expected 1"
        )
    return _read_group(str(dataset.SOPInstanceUID), groups[0])


def _read_group(sop_uid: str, group: hd.sr.MeasurementsAndQualitativeEvaluations) -> ReportedResult:
    evaluations = group.get_qualitative_evaluations(name=codes.FRACTURE_OF_BONE)
    value = evaluations[0].value if evaluations else None
    label = next(
        (label for label, code in _EVALUATIONS.items() if value == code), Label.UNDETERMINED
    )
    certainty = group.get_measurements(name=codes.CERTAINTY_OF_FINDING)
    probability = float(certainty[0].value) / 100.0 if certainty else None
    texts: dict[str, list[str]] = {}
    for item in group[0].ContentSequence:
        if item.value_type == hd.sr.ValueTypeValues.TEXT:
            texts.setdefault(item.name.value, []).append(str(item.value))
    threshold = None
    for parameter in texts.get(codes.ALGORITHM_PARAMETERS.value, []):
        if parameter.startswith(THRESHOLD_PARAMETER):
            threshold = float(parameter[len(THRESHOLD_PARAMETER) :])
    comments = texts.get(codes.COMMENT.value, [])
    sources = group.source_images
    if not sources:
        raise PermanentError(f"SR {sop_uid} references no source image")
    return ReportedResult(
        sop_instance_uid=sop_uid,
        source_sop_class_uid=str(sources[0].referenced_sop_class_uid),
        source_sop_instance_uid=str(sources[0].referenced_sop_instance_uid),
        label=label,
        probability=probability,
        threshold=threshold,
        model_name=next(iter(texts.get(codes.ALGORITHM_NAME.value, [])), ""),
        model_version=next(iter(texts.get(codes.ALGORITHM_VERSION.value, [])), ""),
        reason=comments[0] if comments else None,
    )
