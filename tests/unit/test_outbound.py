"""Which objects a flagged image gets: the presentation state only for a grayscale source."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from osteoflag.config import parse_settings
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import build_objects
from tests.sr_fixtures import make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))
PACS = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}


def _photometric(name: str) -> Dataset:
    source = make_dx()
    source.PhotometricInterpretation = name
    if name == "PALETTE COLOR":
        source.BitsAllocated = source.BitsStored = 8
        source.HighBit = 7
        source.PixelData = bytes(source.Rows * source.Columns)
        ramp = (np.arange(256, dtype="<u2") * 257).tobytes()
        for colour in ("Red", "Green", "Blue"):
            setattr(source, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(source, f"{colour}PaletteColorLookupTableData", ramp)
    return source


@pytest.mark.parametrize(
    ("photometric", "modalities"),
    [
        ("MONOCHROME2", ["SR", "PR"]),
        ("MONOCHROME1", ["SR", "PR"]),
        ("PALETTE COLOR", ["SR"]),  # one sample per pixel, but not grayscale
    ],
)
def test_presentation_state_only_for_a_grayscale_source(
    tmp_path: Path, photometric: str, modalities: list[str]
) -> None:
    settings = parse_settings(
        {"report": {"summary_image": False}, "destinations": [PACS]}, tmp_path
    )
    built = build_objects(
        _photometric(photometric),
        Classification(Label.FRACTURE, 0.9),
        MODEL,
        settings,
        datetime(2026, 1, 2, tzinfo=UTC),
        region=REGION,
    )
    assert [dataset.Modality for dataset in built] == modalities


def _to(objects: list[str], shadow: bool = False) -> dict[str, object]:
    return PACS | {"objects": objects, "shadow": shadow}


@pytest.mark.parametrize(
    ("config", "modalities"),
    [
        ({"destinations": [PACS]}, ["SR", "PR", "OT"]),
        ({"destinations": [_to(["sr"])]}, ["SR"]),
        ({"destinations": [_to(["sr"]), _to(["summary"])]}, ["SR", "OT"]),
        ({"destinations": [_to(["sr"]), _to(["gsps"], shadow=True)]}, ["SR", "PR"]),
        ({"destinations": [_to(["sr"])], "shadow": True}, ["SR"]),
        ({"destinations": [_to([])]}, []),
        ({"destinations": []}, []),  # sent nowhere, shown nowhere
        ({"destinations": [], "shadow": True}, ["SR", "PR", "OT"]),  # kept for the page
        ({"destinations": [], "shadow": True, "report": {"summary_image": False}}, ["SR", "PR"]),
    ],
)
def test_only_the_kinds_some_destination_takes_are_built(
    tmp_path: Path, config: dict[str, object], modalities: list[str]
) -> None:
    built = build_objects(
        make_dx(),
        Classification(Label.FRACTURE, 0.9),
        MODEL,
        parse_settings(config, tmp_path),
        datetime(2026, 1, 2, tzinfo=UTC),
        region=REGION,
    )
    assert [dataset.Modality for dataset in built] == modalities


def test_a_header_no_presentation_state_can_take_keeps_the_sr_and_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_dx()
    del source.RescaleIntercept  # the pixels take the slope alone; highdicom refuses it
    with caplog.at_level(logging.WARNING, logger="osteoflag.pacs.outbound"):
        built = build_objects(
            source,
            Classification(Label.FRACTURE, 0.9),
            MODEL,
            parse_settings({"destinations": [PACS]}, tmp_path),
            datetime(2026, 1, 2, tzinfo=UTC),
            region=REGION,
        )
    assert [dataset.Modality for dataset in built] == ["SR", "OT"]
    (record,) = [r for r in caplog.records if r.getMessage().startswith("no presentation state")]
    assert source.SOPInstanceUID in record.getMessage()
    assert str(source.PatientName) not in record.getMessage()
