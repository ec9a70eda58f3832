"""Against a real PACS: Orthanc on loopback ports receives osteoflag's SR, presentation state
and summary image.

``test_delivery_into_orthanc_study`` drives produce + send in-process against Orthanc's
DICOM port; ``test_end_to_end_through_orthanc`` runs ``osteoflag serve`` as a
subprocess, lets Orthanc push a DX to it and waits for the results to come back.
Both poll with a deadline and record the elapsed time.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from osteoflag.config import parse_settings
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Instance, InstanceState, Outbound, OutboundState
from osteoflag.inference.labels import Label
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from osteoflag.pacs.sr_read import read_result
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.net import free_port
from testkit.tiny_bundle import build_bundle
from testkit.wait import wait_for
from tests.helpers.rows import produce
from tests.orthanc_sr import Orthanc
from tests.sr_fixtures import dciodvfy_errors, make_dx, serving

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))
MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", "OSTEOFLAG", free_port())
    server.start()
    yield server
    server.stop()


def _encoded(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _results_in(
    orthanc: Orthanc, study_id: str, wanted: frozenset[str] = frozenset()
) -> dict[str, dict[str, str]] | None:
    by_class = {tags["SOPClassUID"]: tags for tags in orthanc.study_instances(study_id)}
    wanted = wanted or frozenset({COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE})
    return by_class if wanted <= by_class.keys() else None


def test_delivery_into_orthanc_study(
    tmp_path: Path, orthanc: Orthanc, record_property: pytest.RecordProperty
) -> None:
    source = make_dx(body_part="HAND")
    study_id = orthanc.upload(_encoded(source))["ParentStudy"]
    settings = parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": "sqlite:///var/db.sqlite"},
            "destinations": [
                {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
            ],
        },
        tmp_path,
    )
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    started = time.monotonic()
    with sessions() as session:
        instance = Instance(
            sop_instance_uid=source.SOPInstanceUID,
            sop_class_uid=source.SOPClassUID,
            transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
            calling_ae=orthanc.ae_title,
            peer_address="127.0.0.1",
            file_path="/nonexistent",
            state=InstanceState.DONE,
        )
        session.add(instance)
        session.flush()
        result = Classification(Label.FRACTURE, 0.77)
        produce(session, instance, source, result, MODEL, settings, REGION)
        session.commit()
    assert send_pending(sessions, settings).sent == 3

    wanted = frozenset({COMPREHENSIVE_3D_SR, GSPS, SECONDARY_CAPTURE})
    found = wait_for(lambda: _results_in(orthanc, study_id, wanted), timeout=30.0)
    record_property("orthanc_delivery_seconds", round(time.monotonic() - started, 3))
    assert found[COMPREHENSIVE_3D_SR]["PatientID"] == source.PatientID
    assert found[SECONDARY_CAPTURE]["SeriesDescription"].startswith("RESEARCH USE ONLY")
    with sessions() as session:
        assert set(session.scalars(select(Outbound.state))) == {OutboundState.SENT}
    engine.dispose()

    for sop_class in wanted:
        copy = orthanc.folder / f"{sop_class}-from-orthanc.dcm"
        copy.write_bytes(orthanc.file(found[sop_class]["ID"]))
        assert dciodvfy_errors(copy) == [], sop_class
    parsed = read_result(
        pydicom.dcmread(orthanc.folder / f"{COMPREHENSIVE_3D_SR}-from-orthanc.dcm")
    )
    assert parsed.source_sop_instance_uid == source.SOPInstanceUID
    assert parsed.probability == pytest.approx(0.77)
    assert parsed.region == REGION.box
    assert found[GSPS]["StudyInstanceUID"] == source.StudyInstanceUID
    # What Orthanc Explorer shows (the viewer table of docs/conformance.md): a preview of the
    # summary image only.
    summary_preview = orthanc.preview(found[SECONDARY_CAPTURE]["ID"])
    assert summary_preview is not None and summary_preview.startswith(b"\x89PNG")
    assert orthanc.preview(found[COMPREHENSIVE_3D_SR]["ID"]) is None
    assert orthanc.preview(found[GSPS]["ID"]) is None


@pytest.fixture(scope="module")
def flagging_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real bundle that flags every image (threshold 0) and localises (``maps``)."""
    folder = tmp_path_factory.mktemp("flagging")
    add_maps_to_bundle(build_bundle(folder / "tiny", threshold=0.0), folder / "with-maps")
    return folder / "with-maps"


def test_end_to_end_through_orthanc(
    tmp_path: Path, flagging_bundle: Path, record_property: pytest.RecordProperty
) -> None:
    """A DX routed by Orthanc comes back as SR with its region, GSPS and summary image."""
    listener_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", "OSTEOFLAG", listener_port)
    sections = base_sections(tmp_path, flagging_bundle, listener_port)
    sections["sender"] = {"interval_seconds": 0.5, "timeout_seconds": 10.0}
    sections["destinations"] = [
        {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    ]
    daemon = DaemonProcess(write_config(tmp_path, sections), listener_port)
    source = make_dx(body_part="WRIST")
    wanted = frozenset({COMPREHENSIVE_3D_SR, GSPS, SECONDARY_CAPTURE})
    orthanc.start()
    try:
        with serving(daemon):
            uploaded = orthanc.upload(_encoded(source))
            started = time.monotonic()
            orthanc.post(
                "/modalities/osteoflag/store",
                {"Resources": [uploaded["ID"]], "Synchronous": True},
            )
            found = wait_for(
                lambda: _results_in(orthanc, uploaded["ParentStudy"], wanted), timeout=180.0
            )
            elapsed = time.monotonic() - started
            record_property("orthanc_round_trip_seconds", round(elapsed, 3))
            counts = wait_for(lambda: _all_sent(daemon), timeout=120.0)
            assert counts["instances"]["done"] == 1
            assert daemon.terminate(timeout=120) == 0
        copies = {}
        for sop_class in wanted:
            copies[sop_class] = tmp_path / f"{sop_class}-from-orthanc.dcm"
            copies[sop_class].write_bytes(orthanc.file(found[sop_class]["ID"]))
    finally:
        orthanc.stop()
    for sop_class, copy in copies.items():
        assert dciodvfy_errors(copy) == [], sop_class
    reported = read_result(pydicom.dcmread(copies[COMPREHENSIVE_3D_SR]))
    assert reported.source_sop_instance_uid == source.SOPInstanceUID
    assert reported.model_version == "0.0.1"
    assert reported.label is Label.FRACTURE
    assert reported.region is not None
    x0, y0, x1, y1 = reported.region
    assert 0 <= x0 <= x1 <= source.Columns and 0 <= y0 <= y1 <= source.Rows
    state = pydicom.dcmread(copies[GSPS])
    box = state.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData
    right, bottom = x1 + 1, y1 + 1  # the outline runs along the last pixel's outer edges
    assert [round(v) for v in box] == [x0, y0, right, y0, right, bottom, x0, bottom, x0, y0]
    assert found[GSPS]["StudyInstanceUID"] == source.StudyInstanceUID
    assert found[SECONDARY_CAPTURE]["StudyInstanceUID"] == source.StudyInstanceUID


def _all_sent(daemon: DaemonProcess) -> dict[str, dict[str, int]] | None:
    counts = daemon.status()
    return counts if counts["outbound"]["sent"] == 3 else None
