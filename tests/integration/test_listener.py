"""The Storage SCP over real loopback associations: pynetdicom and DCMTK as senders."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance
from osteoflag.errors import DeliveryError
from osteoflag.pacs import status
from osteoflag.pacs.contexts import VERIFICATION
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.scu import Peer, send_c_echo, send_c_store
from tests.conftest import make_settings
from tests.helpers.dicom import MODALITIES, TRANSFER_SYNTAXES, radiograph, write_in_syntax
from tests.helpers.listener import listening, serving
from tests.helpers.ul import a_abort, associate_rj, associate_rq, closed_by_peer, first_reply

SYNTAXES = list(TRANSFER_SYNTAXES)

# storescu's option proposing each syntax (a config-file profile for Process 14).
STORESCU_PROPOSE: dict[UID, list[str]] = {
    ExplicitVRLittleEndian: ["-R", "-xe"],
    ImplicitVRLittleEndian: ["-R", "-xi"],
    DeflatedExplicitVRLittleEndian: ["-R", "-xd"],
    JPEGBaseline8Bit: ["-R", "-xy"],
    JPEGExtended12Bit: ["-R", "-xx"],
    JPEGLossless: ["-xf", str(Path(__file__).with_name("storescu-process14.cfg")), "Process14"],
    JPEGLosslessSV1: ["-R", "-xs"],
    JPEGLSLossless: ["-R", "-xt"],
    JPEGLSNearLossless: ["-R", "-xu"],
    JPEG2000Lossless: ["-R", "-xv"],
    JPEG2000: ["-R", "-xw"],
    RLELossless: ["-R", "-xr"],
}


def _stored(sessions: sessionmaker[Session], sop_instance_uid: str) -> Instance:
    with sessions() as session:
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
    assert row is not None, f"{sop_instance_uid} not queued"
    return row


def _assert_same_pixels(sent: Path, row: Instance, transfer_syntax: UID) -> None:
    received = dcmread(row.file_path)
    original = dcmread(sent)
    assert received.file_meta.TransferSyntaxUID == transfer_syntax
    assert received.SOPInstanceUID == original.SOPInstanceUID
    np.testing.assert_array_equal(received.pixel_array, original.pixel_array)


@pytest.mark.parametrize("transfer_syntax", SYNTAXES, ids=lambda ts: ts.keyword)
def test_pynetdicom_stores_every_radiograph_class_in_each_syntax(
    tmp_path: Path,
    scp: StorageSCP,
    settings: Settings,
    sessions: sessionmaker[Session],
    transfer_syntax: UID,
) -> None:
    files = [
        write_in_syntax(radiograph(modality, bits=8), transfer_syntax, tmp_path / f"{modality}.dcm")
        for modality in MODALITIES
    ]
    peer = Peer("127.0.0.1", scp.port, settings.listener.ae_title)
    outcomes = send_c_store(files, peer, "PYNETDICOM")
    assert [o.status for o in outcomes] == [status.SUCCESS] * len(files)
    for path in files:
        row = _stored(sessions, dcmread(path).SOPInstanceUID)
        assert row.state == "queued"
        assert row.calling_ae == "PYNETDICOM"
        assert row.transfer_syntax_uid == transfer_syntax
        _assert_same_pixels(path, row, transfer_syntax)
    assert queue.counts(sessions)["instances"]["queued"] == len(files)


@pytest.mark.parametrize("transfer_syntax", SYNTAXES, ids=lambda ts: ts.keyword)
def test_dcmtk_storescu_stores_every_radiograph_class_in_each_syntax(
    tmp_path: Path,
    scp: StorageSCP,
    settings: Settings,
    sessions: sessionmaker[Session],
    transfer_syntax: UID,
) -> None:
    storescu = shutil.which("storescu")
    assert storescu, "DCMTK missing: run scripts/install-debian-tools.sh"
    files = [
        write_in_syntax(radiograph(modality, bits=8), transfer_syntax, tmp_path / f"{modality}.dcm")
        for modality in MODALITIES
    ]
    # -R: propose only what the files need, with the option naming their syntax, so the
    # stored file must keep it.
    subprocess.run(
        [
            storescu,
            *STORESCU_PROPOSE[transfer_syntax],
            "-aet",
            "STORESCU",
            "-aec",
            settings.listener.ae_title,
            "127.0.0.1",
            str(scp.port),
            *map(str, files),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for path in files:
        row = _stored(sessions, dcmread(path).SOPInstanceUID)
        assert row.calling_ae == "STORESCU"
        _assert_same_pixels(path, row, transfer_syntax)


def test_same_instance_twice_is_acknowledged_and_queued_once(
    tmp_path: Path, scp: StorageSCP, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    path = write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "dx.dcm")
    peer = Peer("127.0.0.1", scp.port, settings.listener.ae_title)
    first = send_c_store([path], peer, "A")
    second = send_c_store([path], peer, "B")
    assert [first[0].status, second[0].status] == [status.SUCCESS, status.SUCCESS]
    assert queue.counts(sessions)["instances"]["queued"] == 1
    assert _stored(sessions, dcmread(path).SOPInstanceUID).calling_ae == "A"


def test_non_radiograph_class_is_refused_at_negotiation(
    scp: StorageSCP, settings: Settings
) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=settings.listener.ae_title)
    try:
        assert assoc.is_established
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        assert CTImageStorage not in accepted
        assert rejected[CTImageStorage] == 0x03  # abstract syntax not supported
    finally:
        assoc.release()


def test_caller_not_on_allowlist_gets_associate_rj(tmp_path: Path) -> None:
    with listening(tmp_path, allowed_calling_aets=["RADIOLOGY"]) as (listener, _):
        # Rejected permanent, service user, calling AE title not recognised.
        assert first_reply(listener.port, b"INTRUDER") == associate_rj(1, 1, 3)
        peer = Peer("127.0.0.1", listener.port, "OSTEOFLAG")
        with pytest.raises(DeliveryError, match=r"rejected: .*Calling AE title not recognised"):
            send_c_echo(peer, "INTRUDER")
        assert send_c_echo(peer, "RADIOLOGY") == status.SUCCESS


def test_storage_below_free_space_floor_answers_out_of_resources(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage={"min_free_mb": 1 << 40})
    with serving(settings) as (listener, sessions):
        path = write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "dx.dcm")
        peer = Peer("127.0.0.1", listener.port, settings.listener.ae_title)
        [outcome] = send_c_store([path], peer, "MODALITY")
        assert outcome.status == status.OUT_OF_RESOURCES
        assert queue.counts(sessions)["instances"]["queued"] == 0


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"\x00" * 7, id="truncated-pdu-header"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-request"),
        pytest.param(bytes(range(256)) * 8, id="random-bytes"),
        pytest.param(b"ASSOC", id="truncated-associate"),
        pytest.param(b"PDATA-TRUNCATED", id="truncated-p-data"),
        pytest.param(b"PDATA-GARBAGE", id="garbage-p-data"),
    ],
)
def test_garbage_or_truncated_stream_does_not_crash_the_listener(
    scp: StorageSCP, settings: Settings, stream: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
        if stream.startswith(b"ASSOC"):
            sock.sendall(associate_rq(b"OSTEOFLAG", b"FUZZ")[:40])
        elif stream.startswith(b"PDATA"):
            sock.sendall(associate_rq(b"OSTEOFLAG", b"FUZZ"))
            assert sock.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
            if stream.endswith(b"TRUNCATED"):
                sock.sendall(struct.pack(">BBI", 0x04, 0, 1000) + b"\x00\x00\x00\x10\x01\x03")
            else:  # a last command fragment that decodes to no Command Field (0000,0100)
                sock.sendall(
                    struct.pack(">BBI", 0x04, 0, 12) + b"\x00\x00\x00\x08\x01\x03" + b"\xff" * 6
                )
                # After the rest of the A-ASSOCIATE-AC: A-ABORT, source service provider (the
                # upper layer's answer to an invalid PDU), then the connection closes.
                assert closed_by_peer(sock).endswith(a_abort(2, 0))
        else:
            sock.sendall(stream)
    peer = Peer("127.0.0.1", scp.port, settings.listener.ae_title)
    assert send_c_echo(peer, "CHECKER") == status.SUCCESS
