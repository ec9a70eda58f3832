"""``show-sr``: the SR as an indented tree with a result summary, no patient identifiers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity, device_uid
from osteoflag.pacs.show import show_sr
from osteoflag.pacs.sr import build_sr
from tests.sr_fixtures import FAKE_PATIENT_ID, FAKE_PATIENT_NAME, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)


def _write(tmp_path: Path, result: Classification, region: Region | None = None) -> Path:
    path = tmp_path / "sr.dcm"
    build_sr(
        make_dx(),
        result,
        model=MODEL,
        device_uid=device_uid("OSTEOFLAG"),
        created=datetime(2026, 1, 2, tzinfo=UTC),
        region=region,
    ).save_as(path, enforce_file_format=True)
    return path


def test_tree_shows_result_and_nesting(tmp_path: Path) -> None:
    region = Region(peak=(20, 30), box=(10, 20, 50, 60))
    text = show_sr(_write(tmp_path, Classification(Label.FRACTURE, 0.8731), region))
    lines = text.splitlines()
    assert "Result: fracture (score 87.31%, threshold 42.00%" in text
    assert "Region: box (10, 20, 50, 60)" in text
    assert any("SCOORD Image Region (111030, DCM) = POLYLINE 10,20 51,20" in line for line in lines)
    assert "RESEARCH USE ONLY" in text
    assert any(
        line.startswith("      contains: NUM Certainty of Finding") and "87.31 %" in line
        for line in lines
    )
    assert any("CODE Fracture of bone (125605004, SCT) = Present" in line for line in lines)
    assert '"For research use only. Not for diagnostic use."' in text
    assert FAKE_PATIENT_NAME not in text and FAKE_PATIENT_ID not in text


def test_undetermined_shows_reason(tmp_path: Path) -> None:
    text = show_sr(_write(tmp_path, Classification(Label.UNDETERMINED, reason="too small")))
    assert "Result: undetermined (score -" in text
    assert "Reason: too small" in text
    assert "Region:" not in text
    assert any(
        line.startswith("      has properties: TEXT Comment") and "too small" in line
        for line in text.splitlines()
    )


def test_not_dicom_or_not_sr_is_a_permanent_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(PermanentError, match=r"junk\.dcm"):
        show_sr(junk)
    image = tmp_path / "dx.dcm"
    make_dx().save_as(image, enforce_file_format=True)
    with pytest.raises(PermanentError, match=r"0040,A730"):
        show_sr(image)


def test_cli_show_sr_prints_the_tree_and_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from osteoflag.cli import main

    config = tmp_path / "osteoflag.toml"
    config.write_text("")
    path = _write(tmp_path, Classification(Label.NO_FRACTURE, 0.1))
    assert main(["show-sr", str(path), "--config", str(config)]) == 0
    assert "Result: no_fracture (score 10.00%" in capsys.readouterr().out
    assert main(["show-sr", str(tmp_path / "missing.dcm"), "--config", str(config)]) == 1
    assert "missing.dcm" in capsys.readouterr().err
