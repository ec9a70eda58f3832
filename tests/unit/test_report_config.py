"""``[report]`` settings reach the objects built: the SR class, checked at config time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from osteoflag.config import SRClass, parse_settings
from osteoflag.errors import ConfigError
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import build_objects
from tests.sr_fixtures import make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)


@pytest.mark.parametrize(
    ("value", "sop_class_uid"),
    [
        (None, "1.2.840.10008.5.1.4.1.1.88.34"),
        ("comprehensive-3d", "1.2.840.10008.5.1.4.1.1.88.34"),
        ("comprehensive", "1.2.840.10008.5.1.4.1.1.88.33"),
    ],
)
def test_sr_class_setting_chooses_the_sop_class(
    tmp_path: Path, value: str | None, sop_class_uid: str
) -> None:
    report = {"summary_image": False} | ({"sr_class": value} if value else {})
    pacs = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    settings = parse_settings({"report": report, "destinations": [pacs]}, tmp_path)
    created = datetime(2026, 1, 2, tzinfo=UTC)
    (sr,) = build_objects(
        make_dx(), Classification(Label.NO_FRACTURE, 0.1), MODEL, settings, created
    )
    assert sr.SOPClassUID == sop_class_uid
    assert settings.report.sr_class in SRClass


def test_unknown_sr_class_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"report\.sr_class"):
        parse_settings({"report": {"sr_class": "basic"}}, tmp_path)
