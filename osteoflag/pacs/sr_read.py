"""Reading an osteoflag result SR back: the inverse of :func:`osteoflag.pacs.sr.build_sr`.

Works on the plain content tree (PS3.3 C.17.3), so it reads every form osteoflag has
written: a TID 1410 group with its region, a document-level "Qualitative Evaluations"
item, and the TID 1501 group of earlier releases; in Comprehensive or Comprehensive 3D SR.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID

from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.pacs import codes
from osteoflag.pacs.sr import EVALUATIONS, SHA256_PARAMETER, THRESHOLD_PARAMETER

_SR_CLASSES = (
    UID("1.2.840.10008.5.1.4.1.1.88.33"),  # Comprehensive SR
    UID("1.2.840.10008.5.1.4.1.1.88.34"),  # Comprehensive 3D SR
)
_MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")


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
    region: tuple[int, int, int, int] | None = None
    tracking_uid: str | None = None
    bundle_sha256: str | None = None


def _is(item: Dataset, code: Code, keyword: str = "ConceptNameCodeSequence") -> bool:
    coded = item.get(keyword, [])
    return bool(coded) and (coded[0].CodeValue, coded[0].CodingSchemeDesignator) == (
        code.value,
        code.scheme_designator,
    )


def _walk(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _findings(dataset: Dataset) -> list[Dataset]:
    """The one finding's content items: a measurement group's, or the document evaluation's."""
    uid = dataset.get("SOPInstanceUID")
    if dataset.get("SOPClassUID") not in _SR_CLASSES:
        raise PermanentError(f"SOPInstanceUID {uid} is not a Comprehensive (3D) SR")
    root = dataset.get("ContentSequence", [])
    if not _is(dataset, codes.IMAGING_MEASUREMENT_REPORT):
        raise PermanentError(f"SR {uid} is not an Imaging Measurement Report (TID 1500)")
    groups = [
        group
        for container in root
        if _is(container, codes.IMAGING_MEASUREMENTS)
        for group in container.get("ContentSequence", [])
        if _is(group, _MEASUREMENT_GROUP)
    ]
    evaluations = [
        item
        for container in root
        if _is(container, codes.QUALITATIVE_EVALUATIONS)
        for item in container.get("ContentSequence", [])
        if _is(item, codes.FRACTURE_OF_BONE)
    ]
    if len(groups) + len(evaluations) != 1:
        raise PermanentError(
            f"SR {uid} has {len(groups)} measurement groups and {len(evaluations)} "
            "document-level fracture evaluations, expected one in all"
        )
    if groups:
        return list(_walk(groups[0].ContentSequence))
    return [evaluations[0], *_walk(evaluations[0].get("ContentSequence", []))]


def _box(scoord: Dataset, uid: str) -> tuple[int, int, int, int]:
    """The region's box (first and last pixel) from its outline along the pixels' outer
    edges (:func:`~osteoflag.pacs.sr.region_outline`)."""
    points = [float(value) for value in scoord.GraphicData]
    xs, ys = points[0::2], points[1::2]
    if scoord.get("GraphicType") != "POLYLINE" or len(xs) != 5:
        raise PermanentError(f"SR {uid}: Image Region (111030, DCM) is not a closed POLYLINE box")
    x0, y0 = round(min(xs)), round(min(ys))
    return (x0, y0, max(x0, round(max(xs)) - 1), max(y0, round(max(ys)) - 1))


def read_result(dataset: Dataset) -> ReportedResult:
    """Parse an osteoflag SR back into its result; PermanentError if it is not one."""
    uid = str(dataset.get("SOPInstanceUID", ""))
    items = _findings(dataset)
    label = Label.UNDETERMINED
    probability = region = tracking = None
    references: list[Dataset] = []
    texts: dict[str, list[str]] = {}
    for item in items:
        value_type = item.get("ValueType")
        if value_type == "CODE" and _is(item, codes.FRACTURE_OF_BONE):
            label = next(
                (
                    key
                    for key, code in EVALUATIONS.items()
                    if _is(item, code, "ConceptCodeSequence")
                ),
                Label.UNDETERMINED,
            )
        elif value_type == "NUM" and _is(item, codes.CERTAINTY_OF_FINDING):
            measured = item.get("MeasuredValueSequence", [])
            probability = float(measured[0].NumericValue) / 100.0 if measured else None
        elif value_type == "TEXT":
            name = item.ConceptNameCodeSequence[0].CodeValue
            texts.setdefault(name, []).append(str(item.TextValue))
        elif value_type == "UIDREF":
            tracking = str(item.UID)
        elif value_type == "SCOORD" and _is(item, codes.IMAGE_REGION):
            region = _box(item, uid)
        elif value_type == "IMAGE":
            references.extend(item.get("ReferencedSOPSequence", []))
    if not references:
        raise PermanentError(f"SR {uid} references no source image")
    parameters = texts.get(codes.ALGORITHM_PARAMETERS.value, [])
    comments = texts.get(codes.COMMENT.value, [])
    threshold = _parameter(parameters, THRESHOLD_PARAMETER)
    return ReportedResult(
        sop_instance_uid=uid,
        source_sop_class_uid=str(references[0].ReferencedSOPClassUID),
        source_sop_instance_uid=str(references[0].ReferencedSOPInstanceUID),
        label=label,
        probability=probability,
        threshold=None if threshold is None else float(threshold),
        model_name=next(iter(texts.get(codes.ALGORITHM_NAME.value, [])), ""),
        model_version=next(iter(texts.get(codes.ALGORITHM_VERSION.value, [])), ""),
        reason=comments[0] if comments and label is Label.UNDETERMINED else None,
        region=region,
        tracking_uid=tracking,
        bundle_sha256=_parameter(parameters, SHA256_PARAMETER),
    )


def _parameter(parameters: list[str], prefix: str) -> str | None:
    """The value of the TID 4019 "Algorithm Parameters" entry ``prefix=value``."""
    return next((p[len(prefix) :] for p in parameters if p.startswith(prefix)), None)
