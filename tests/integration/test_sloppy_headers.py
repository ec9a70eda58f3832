"""Sloppy headers never cost the result: the worker (real SQLite, real tiny bundle) classifies
each, writes an SR and a summary that pydicom reads back, leaves the invalid values out and
names them by tag in its log, never by value."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.daemon.results import Reporting
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import queue
from osteoflag.db.models import Instance, InstanceState
from osteoflag.destination_settings import Destination
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.logs import JSONFormatter
from osteoflag.pacs.derived import Kind, ModelIdentity, instance_uid
from tests.conftest import make_settings
from tests.helpers.dicom import radiograph, set_raw, write_in_syntax

BIRTH_DATE = b"1945-03-17"
JAPANESE_NAME = "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"


def _japanese(ds: Dataset) -> None:
    set_raw(ds, "SpecificCharacterSet", b"\\ISO 2022 IR 87")
    ds.PatientName = JAPANESE_NAME


CASES = {
    "birth-date-iso": lambda ds: set_raw(ds, "PatientBirthDate", BIRTH_DATE),
    "study-date-and-time": lambda ds: (
        set_raw(ds, "StudyDate", b"2026-01-01"),
        set_raw(ds, "StudyTime", b"12:00:00"),
    ),
    "weight-age-size": lambda ds: (
        set_raw(ds, "PatientWeight", b"70kg"),
        set_raw(ds, "PatientAge", b"45"),
        set_raw(ds, "PatientSize", b"1,80"),
    ),
    "window-not-a-number": lambda ds: (
        set_raw(ds, "WindowCenter", b"abc"),
        set_raw(ds, "WindowWidth", b"wide"),
    ),
    "rescale-not-a-number": lambda ds: set_raw(ds, "RescaleSlope", b"one"),
    "modality-missing": lambda ds: delattr(ds, "Modality"),
    "japanese-empty-first-value": _japanese,
    "unknown-character-set": lambda ds: set_raw(ds, "SpecificCharacterSet", b"KLINGON"),
    "code-extension-alone": lambda ds: set_raw(ds, "SpecificCharacterSet", b"ISO 2022 IR 100"),
    "multi-byte-first": lambda ds: set_raw(
        ds, "SpecificCharacterSet", b"ISO 2022 IR 87\\ISO 2022 IR 6"
    ),
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A destination that takes every kind, so that every kind is built."""
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=4242)
    return make_settings(tmp_path).model_copy(update={"destinations": (pacs,)})


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor(load_bundle(tiny_bundle), threads=1, batch_size=4)


def _enqueue(sessions: sessionmaker[Session], path: Path) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    received = queue.Received(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="TEST",
        peer_address="127.0.0.1",
        file_path=str(path),
    )
    assert queue.enqueue(sessions, received)
    return str(ds.SOPInstanceUID)


def test_sloppy_headers_are_classified_and_their_objects_readable(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    settings: Settings,
    predictor: Predictor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uids: dict[str, str] = {}
    for seed, (name, spoil) in enumerate(CASES.items()):
        ds = radiograph("DX", seed=seed)
        spoil(ds)
        uids[name] = _enqueue(
            sessions, write_in_syntax(ds, ExplicitVRLittleEndian, tmp_path / f"{name}.dcm")
        )
    model = ModelIdentity.from_bundle(predictor.bundle)
    worker = InferenceWorker(settings, sessions, predictor, Reporting(settings, model))
    with caplog.at_level(logging.DEBUG):
        assert worker.drain() == len(CASES)
    with sessions() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    for name, uid in uids.items():
        assert rows[uid].state is InstanceState.DONE, (name, rows[uid].error)

    def read(uid: str, kind: Kind) -> Dataset:
        name = f"{instance_uid(uid, model.version, kind)}.dcm"
        return dcmread(settings.outgoing_path / kind.value / name)

    produced = {name: read(uid, Kind.SR) for name, uid in uids.items()}
    summaries = {name: read(uid, Kind.SUMMARY) for name, uid in uids.items()}
    for name in CASES:
        for obj in (produced[name], summaries[name]):
            assert str(obj.PatientID) == "PID-0042-FIXTURE", name
    assert produced["birth-date-iso"].PatientBirthDate == ""
    assert summaries["birth-date-iso"].PatientBirthDate == ""
    assert produced["study-date-and-time"].StudyDate == ""
    assert produced["window-not-a-number"].PatientBirthDate == "19700101"  # valid: kept
    assert "PatientWeight" not in produced["weight-age-size"]
    japanese = produced["japanese-empty-first-value"]
    assert japanese.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert str(japanese.PatientName) == JAPANESE_NAME
    assert str(summaries["japanese-empty-first-value"].PatientName) == JAPANESE_NAME
    for name in ("unknown-character-set", "code-extension-alone", "multi-byte-first"):
        assert produced[name].SpecificCharacterSet == "ISO_IR 192", name
    lines = [JSONFormatter().format(record) for record in caplog.records]
    # The value and its DA-normalised form; a bare "1945" also occurs inside random UIDs.
    leaked = ("1945-03-17", "19450317", "70kg")
    assert not [line for line in lines if any(value in line for value in leaked)]
    dropped = [r for r in caplog.records if r.getMessage().startswith("invalid source values")]
    named = {attribute for record in dropped for attribute in record.__dict__["attributes"]}
    assert {"(0010,0030) PatientBirthDate", "(0010,1030) PatientWeight"} <= named
