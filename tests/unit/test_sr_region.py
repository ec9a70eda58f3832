"""The SR's region and how each result is stated, checked against what TID 1500 viewers
need: every measurement group a Tracking Identifier, a Tracking UID and a 2D SCOORD on the
source image; results without a region stated once for the document, in no group."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
from pydicom import Dataset

from osteoflag.inference.labels import Label
from osteoflag.inference.localise import region_from_map
from osteoflag.inference.pixels import DisplayImage, InputSpec, ResizeMode, fit
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity, device_uid
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.sr_read import read_result
from tests.sr_fixtures import make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))


def _sr(source: Dataset, result: Classification, region: Region | None) -> Dataset:
    return build_sr(
        source,
        result,
        model=MODEL,
        device_uid=device_uid("OSTEOFLAG"),
        created=datetime(2026, 1, 2, tzinfo=UTC),
        region=region,
    )


def _named(items: list[Dataset], meaning: str) -> list[Dataset]:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _walk(items: list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_flagged_image_gets_one_planar_roi_group_with_a_closed_box_on_the_source() -> None:
    source = make_dx()
    sr = _sr(source, Classification(Label.FRACTURE, 0.87), REGION)

    (measurements,) = _named(sr.ContentSequence, "Imaging Measurements")
    (group,) = _named(measurements.ContentSequence, "Measurement Group")
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1410"
    items = list(group.ContentSequence)
    assert _named(items, "Tracking Identifier")[0].TextValue
    assert _named(items, "Tracking Unique Identifier")[0].ValueType == "UIDREF"
    (scoord,) = _named(items, "Image Region")
    assert (scoord.ValueType, scoord.GraphicType) == ("SCOORD", "POLYLINE")
    assert [float(v) for v in scoord.GraphicData] == [40, 90, 111, 90, 111, 171, 40, 171, 40, 90]
    (image,) = scoord.ContentSequence
    assert (image.ValueType, image.RelationshipType) == ("IMAGE", "SELECTED FROM")
    reference = image.ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    (evaluation,) = _named(items, "Fracture of bone")
    assert evaluation.ConceptCodeSequence[0].CodeMeaning == "Present"
    (certainty,) = _named(items, "Certainty of Finding")
    assert float(certainty.MeasuredValueSequence[0].NumericValue) == pytest.approx(87.0)
    assert not _named(sr.ContentSequence, "Qualitative Evaluations")


@pytest.mark.parametrize(
    ("result", "region"),
    [
        (Classification(Label.FRACTURE, 0.87), REGION),
        (Classification(Label.FRACTURE, 0.87), None),
        (Classification(Label.NO_FRACTURE, 0.1), None),
        (Classification(Label.NO_FRACTURE, 0.1), REGION),
    ],
    ids=["fracture-region", "fracture-no-region", "no_fracture", "no_fracture-region-ignored"],
)
def test_every_scored_result_has_one_group_with_a_2d_scoord_on_the_source(
    result: Classification, region: Region | None
) -> None:
    source = make_dx()
    sr = _sr(source, result, region)

    (measurements,) = _named(sr.ContentSequence, "Imaging Measurements")
    (group,) = _named(measurements.ContentSequence, "Measurement Group")
    items = list(group.ContentSequence)
    assert _named(items, "Tracking Identifier") and _named(items, "Tracking Unique Identifier")
    scoords = [item for item in _walk(items) if item.ValueType == "SCOORD"]
    assert len(scoords) == 1
    (image,) = scoords[0].ContentSequence
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert not _named(sr.ContentSequence, "Qualitative Evaluations")


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (
            Classification(Label.FRACTURE, 0.87),
            "RESEARCH USE ONLY - fracture suspected (no region)",
        ),
        (Classification(Label.NO_FRACTURE, 0.1), "RESEARCH USE ONLY - no fracture suspected"),
    ],
)
def test_without_a_region_the_certainty_is_inferred_from_the_whole_image(
    result: Classification, words: str
) -> None:
    source = make_dx(rows=256, columns=200)
    (measurements,) = _named(_sr(source, result, None).ContentSequence, "Imaging Measurements")
    (group,) = measurements.ContentSequence
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    items = list(group.ContentSequence)
    (certainty,) = _named(items, "Certainty of Finding")
    (scoord,) = certainty.ContentSequence
    assert (scoord.RelationshipType, scoord.GraphicType) == ("INFERRED FROM", "POLYLINE")
    assert [float(v) for v in scoord.GraphicData] == [0, 0, 200, 0, 200, 256, 0, 256, 0, 0]
    assert _named(items, "Comment")[0].TextValue == words


def test_undetermined_is_stated_for_the_document_in_no_group() -> None:
    source = make_dx()
    sr = _sr(source, Classification(Label.UNDETERMINED, reason="too small"), None)

    every = list(_walk(sr.ContentSequence))
    assert not _named(every, "Measurement Group")
    assert not [item for item in every if item.ValueType in ("SCOORD", "SCOORD3D")]
    (container,) = _named(sr.ContentSequence, "Qualitative Evaluations")
    (evaluation,) = container.ContentSequence
    assert evaluation.ConceptCodeSequence[0].CodeMeaning == "Undetermined"
    children = list(evaluation.ContentSequence)
    (image,) = _named(children, "Source")
    assert image.RelationshipType == "INFERRED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert _named(children, "Algorithm Name")[0].TextValue == MODEL.name
    assert _named(children, "Comment")[0].TextValue == "too small"


def test_tracking_uid_is_stable_per_source_and_distinct_between_sources() -> None:
    first, second = make_dx(), make_dx()
    flagged = Classification(Label.FRACTURE, 0.9)

    def tracking(source: Dataset) -> str:
        uids = [
            i
            for i in _walk(_sr(source, flagged, REGION).ContentSequence)
            if i.ValueType == "UIDREF"
        ]
        return str(_named(uids, "Tracking Unique Identifier")[0].UID)

    assert tracking(first) == tracking(first)
    assert tracking(first) != tracking(second)


def test_region_at_the_image_edge_outlines_every_pixel_it_names() -> None:
    """A bright blob on the last columns and rows, found through the model input's geometry:
    the SCOORD, whose 0,0 is the top-left pixel's top-left corner (PS3.3 C.18.6.1.2), must
    enclose the centre of every blob pixel and end at the image's own edge."""
    rows, columns = 256, 200
    pixels = np.zeros((rows, columns), dtype=np.float32)
    pixels[rows - 30 :, columns - 12 :] = 1.0
    spec = InputSpec(size=(384, 384), resize_mode=ResizeMode.STRETCH)
    heat = fit(DisplayImage(pixels), spec).reshape(12, 32, 12, 32).mean(axis=(1, 3))
    region = region_from_map(heat, spec, (rows, columns))
    assert region is not None and region.box[2:] == (columns - 1, rows - 1)

    sr = _sr(make_dx(rows=rows, columns=columns), Classification(Label.FRACTURE, 0.9), region)
    (scoord,) = [item for item in _walk(sr.ContentSequence) if item.ValueType == "SCOORD"]
    xs, ys = scoord.GraphicData[0::2], scoord.GraphicData[1::2]
    (last_row, last_column) = np.argwhere(pixels).max(axis=0) + 0.5  # that pixel's centre
    assert min(xs) <= last_column <= max(xs) == columns
    assert min(ys) <= last_row <= max(ys) == rows
    assert read_result(sr).region == region.box


def test_a_one_pixel_region_is_a_one_pixel_square() -> None:
    region = Region(peak=(50, 60), box=(50, 60, 50, 60))
    sr = _sr(make_dx(), Classification(Label.FRACTURE, 0.9), region)
    (scoord,) = [item for item in _walk(sr.ContentSequence) if item.ValueType == "SCOORD"]
    assert [float(v) for v in scoord.GraphicData] == [50, 60, 51, 60, 51, 61, 50, 61, 50, 60]
