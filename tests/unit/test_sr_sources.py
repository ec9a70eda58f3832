"""SR and summary image stay valid for every radiograph kind the listener accepts,
and the model identity comes from a real bundle."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity, device_uid
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.sr_read import read_result
from osteoflag.pacs.summary import build_summary
from testkit.tiny_bundle import build_bundle
from tests.helpers.dicom import MODALITIES, radiograph
from tests.sr_fixtures import dciodvfy_errors

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("modality", sorted(MODALITIES))
@pytest.mark.parametrize("bits", [8, 12])
def test_sr_and_summary_valid_for_each_source_kind(
    tmp_path: Path, modality: str, bits: int
) -> None:
    source = radiograph(modality=modality, bits=bits)
    result = Classification(Label.NO_FRACTURE, 0.2)
    sr_path, summary_path = tmp_path / "sr.dcm", tmp_path / "summary.dcm"
    build_sr(
        source, result, model=MODEL, device_uid=device_uid("OSTEOFLAG"), created=CREATED
    ).save_as(sr_path, enforce_file_format=True)
    build_summary(source, result, model=MODEL, created=CREATED).save_as(
        summary_path, enforce_file_format=True
    )
    assert dciodvfy_errors(sr_path) == []
    assert dciodvfy_errors(summary_path) == []


def test_model_identity_from_a_bundle(tmp_path: Path) -> None:
    bundle = load_bundle(build_bundle(tmp_path / "bundle", version="3.1.4", threshold=0.37))
    model = ModelIdentity.from_bundle(bundle)
    assert (model.name, model.version, model.threshold) == ("tiny-test", "3.1.4", 0.37)
    assert len(model.sha256) == 64
    sr = build_sr(
        radiograph(),
        Classification(Label.FRACTURE, 0.9),
        model=model,
        device_uid=device_uid("OSTEOFLAG"),
        created=CREATED,
    )
    assert read_result(sr).model_version == "3.1.4"
