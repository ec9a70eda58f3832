"""``osteoflag show-sr FILE``: an SR document as a readable indented tree.

Walks the SR Document Content module (PS3.3 C.17.3): one line per content item with
its relationship, concept name and value. Patient identifiers are not printed; the
header names the document and its flags, and for an osteoflag SR a summary of the
result (``read_result``) comes first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from osteoflag.errors import PermanentError
from osteoflag.pacs.sr_read import read_result

INDENT = "  "


def _meaning(codes: Sequence[Dataset]) -> str:
    if not codes:
        return "?"
    code = codes[0]
    meaning = code.get("CodeMeaning", "")
    return f"{meaning} ({code.get('CodeValue', '')}, {code.get('CodingSchemeDesignator', '')})"


def describe_value(item: Dataset) -> str:
    """The value of one content item as text (PS3.3 C.17.3.2.1 value types)."""
    value_type = item.get("ValueType", "")
    if value_type == "TEXT":
        return f'"{item.get("TextValue", "")}"'
    if value_type == "CODE":
        return _meaning(item.get("ConceptCodeSequence", []))
    if value_type == "NUM":
        measured = item.get("MeasuredValueSequence", [])
        if not measured:
            return "(no value)"
        unit = measured[0].get("MeasurementUnitsCodeSequence", [])
        symbol = unit[0].get("CodeValue", "") if unit else ""
        return f"{measured[0].get('NumericValue', '')} {symbol}".rstrip()
    if value_type == "UIDREF":
        return str(item.get("UID", ""))
    if value_type in ("IMAGE", "COMPOSITE"):
        references = item.get("ReferencedSOPSequence", [])
        if not references:
            return "(no reference)"
        ref = references[0]
        return f"{ref.get('ReferencedSOPClassUID', '')} / {ref.get('ReferencedSOPInstanceUID', '')}"
    if value_type in ("SCOORD", "SCOORD3D"):
        points = [f"{float(v):g}" for v in item.get("GraphicData", [])]
        pairs = [",".join(points[i : i + 2]) for i in range(0, len(points), 2)]
        return f"{item.get('GraphicType', '')} {' '.join(pairs)}".rstrip()
    if value_type == "CONTAINER":
        return ""
    for keyword in ("DateTime", "Date", "Time", "PersonName"):
        if keyword in item:
            return str(item.get(keyword))
    return f"({value_type})"


def tree_lines(items: Sequence[Dataset], depth: int = 1) -> Iterator[str]:
    """One line per content item under ``items``, indented by depth."""
    for item in items:
        relationship = str(item.get("RelationshipType", "")).lower()
        name = _meaning(item.get("ConceptNameCodeSequence", []))
        value = describe_value(item)
        prefix = f"{relationship}: " if relationship else ""
        line = f"{INDENT * depth}{prefix}{item.get('ValueType', '')} {name}"
        yield f"{line} = {value}" if value else line
        yield from tree_lines(item.get("ContentSequence", []), depth + 1)


def render_sr(dataset: Dataset) -> str:
    """The whole document: header, result summary (if osteoflag's), content tree."""
    if "ContentSequence" not in dataset or "ValueType" not in dataset:
        raise PermanentError(
            f"SOPInstanceUID {dataset.get('SOPInstanceUID')} is not an SR document "
            "(no ContentSequence (0040,A730))"
        )
    lines = [
        f"SR {dataset.get('SOPInstanceUID', '')} (SOP Class {dataset.get('SOPClassUID', '')})",
        f"Series: {dataset.get('SeriesDescription', '')}",
        "Flags: "
        + ", ".join(
            str(dataset.get(keyword, "-"))
            for keyword in ("CompletionFlag", "VerificationFlag", "PreliminaryFlag")
        ),
        f"Content: {dataset.get('ContentDate', '')} {dataset.get('ContentTime', '')}",
    ]
    try:
        result = read_result(dataset)
    except PermanentError:
        result = None
    if result is not None:
        score = f"{result.probability * 100:.2f}%" if result.probability is not None else "-"
        threshold = f"{result.threshold * 100:.2f}%" if result.threshold is not None else "-"
        lines.append(
            f"Result: {result.label.value} (score {score}, threshold {threshold}, "
            f"model {result.model_name}@{result.model_version}) for source "
            f"{result.source_sop_instance_uid}"
        )
        if result.region is not None:
            lines.append(f"Region: box {result.region} (x0, y0, x1, y1 in source pixels)")
        if result.reason:
            lines.append(f"Reason: {result.reason}")
    lines.append(f"{dataset.get('ValueType', '')} {_meaning(dataset.ConceptNameCodeSequence)}")
    lines.extend(tree_lines(dataset.ContentSequence))
    return "\n".join(lines)


def show_sr(path: Path) -> str:
    """Read the SR at ``path`` and render it; PermanentError if it cannot be read."""
    try:
        dataset = dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise PermanentError(f"{path}: not a readable DICOM file ({exc})") from exc
    return render_sr(dataset)
