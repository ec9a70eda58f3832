"""What each destination gets: SR, presentation state and summary of a flagged image with a
region, filtered by the destination's ``objects``; delivered to real Storage SCPs on loopback."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.errors import ConfigError
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from tests.helpers.rows import produce_for
from tests.sr_fixtures import RecordingSCP, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def _settings(tmp_path: Path, destinations: list[dict[str, object]]) -> Settings:
    return parse_settings(
        {
            "storage": {
                "path": str(tmp_path / "var"),
                "database_url": "sqlite:///var/osteoflag.db",
            },
            "sender": {"timeout_seconds": 5.0},
            "destinations": destinations,
        },
        tmp_path,
    )


@pytest.fixture
def two_pacs() -> Iterator[tuple[RecordingSCP, RecordingSCP]]:
    servers = (RecordingSCP(ae_title="ALL"), RecordingSCP(ae_title="SRONLY"))
    yield servers
    for server in servers:
        server.stop()


def test_each_destination_gets_the_kinds_it_takes(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    two_pacs: tuple[RecordingSCP, RecordingSCP],
) -> None:
    everything, sr_only = two_pacs
    settings = _settings(
        tmp_path,
        [
            {"ae_title": "ALL", "host": "127.0.0.1", "port": everything.port},
            {"ae_title": "SRONLY", "host": "127.0.0.1", "port": sr_only.port, "objects": ["sr"]},
        ],
    )
    with sessions() as session:
        rows = produce_for(
            session, make_dx(), Classification(Label.FRACTURE, 0.9), MODEL, settings, REGION
        )
        session.commit()
        by_kind = {row.kind: row for row in rows}

    assert sorted(row.kind for row in rows) == ["gsps", "sr", "sr", "summary"]
    assert by_kind["gsps"].sop_class_uid == GSPS
    assert send_pending(sessions, settings).sent == 4
    assert sorted(everything.received) == sorted(
        by_kind[kind].sop_instance_uid for kind in ("sr", "gsps", "summary")
    )
    assert sr_only.received == [by_kind["sr"].sop_instance_uid]


def test_no_presentation_state_without_a_region_or_a_flag(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    settings = _settings(tmp_path, [{"ae_title": "ALL", "host": "127.0.0.1", "port": 104}])
    with sessions() as session:
        flagged = produce_for(
            session, make_dx(), Classification(Label.FRACTURE, 0.9), MODEL, settings
        )
        negative = produce_for(
            session, make_dx(), Classification(Label.NO_FRACTURE, 0.1), MODEL, settings, REGION
        )
    assert sorted(row.kind for row in flagged + negative) == ["sr", "sr", "summary", "summary"]


def test_colour_film_converted_by_img2dcm_gets_sr_and_summary_without_a_presentation_state(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    # A film scanned in colour and converted with DCMTK: a Secondary Capture with three
    # samples per pixel and no Modality (0008,0060). A grayscale presentation state cannot
    # reference it; the SR and the summary image carry the region instead.
    img2dcm = shutil.which("img2dcm")
    assert img2dcm, "DCMTK missing: run scripts/install-debian-tools.sh"
    pixels = np.random.default_rng(0).integers(0, 255, (256, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "film.jpg")
    command = [img2dcm, str(tmp_path / "film.jpg"), str(tmp_path / "film.dcm")]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    source = dcmread(tmp_path / "film.dcm")
    assert "Modality" not in source and source.SamplesPerPixel == 3
    settings = _settings(tmp_path, [{"ae_title": "ALL", "host": "127.0.0.1", "port": 104}])
    with sessions() as session:
        rows = produce_for(
            session, source, Classification(Label.FRACTURE, 0.9), MODEL, settings, REGION
        )
    assert sorted(row.kind for row in rows) == ["sr", "summary"]
    [sr_row] = [row for row in rows if row.kind == "sr"]
    sr = dcmread(settings.outgoing_path / "sr" / f"{sr_row.sop_instance_uid}.dcm")
    [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID


def test_unknown_object_kind_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    destination = {"ae_title": "A", "host": "127.0.0.1", "port": 104, "objects": ["sr", "pdf"]}
    with pytest.raises(ConfigError, match=r"destinations\.0\.objects"):
        _settings(tmp_path, [destination])
