"""Network limits of the Storage SCP: ARTIM / ACSE, idle (network) timeouts,
maximum PDU size on the wire, and a flood of associations beyond ``max_associations``.

Timeouts are set small so the tests are quick; every wait polls with a deadline.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from osteoflag.pacs.contexts import VERIFICATION
from osteoflag.pacs.scu import Peer, send_c_store
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.listener import echo_ok, listening
from tests.helpers.ul import associate_rj, associate_rq, closed_by_peer, first_reply


def _associate(port: int, calling_ae: str = "SCU") -> Association:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="OSTEOFLAG")


def test_peer_that_connects_and_sends_nothing_is_dropped(tmp_path: Path) -> None:
    with listening(tmp_path, acse_timeout=0.5) as (scp, _):
        with socket.create_connection(("127.0.0.1", scp.port)) as sock:
            # ARTIM expiry (PS3.8 9.1.5): the connection is closed without any PDU.
            assert closed_by_peer(sock) == b""
        assert echo_ok(scp.port)


def test_association_that_goes_quiet_is_aborted(tmp_path: Path) -> None:
    with listening(tmp_path, network_timeout=0.5) as (scp, _):
        assoc = _associate(scp.port)
        assert assoc.is_established
        wait_for(lambda: assoc.is_aborted, timeout=15)
        assert echo_ok(scp.port)


def test_half_sent_message_is_dropped(tmp_path: Path) -> None:
    with listening(tmp_path, network_timeout=0.5, dimse_timeout=0.5) as (scp, _):
        with socket.create_connection(("127.0.0.1", scp.port)) as sock:
            sock.sendall(associate_rq(b"OSTEOFLAG", b"SLOWLORIS"))
            assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
            # A command fragment that is not the last one, then silence.
            pdv = struct.pack(">IB", 6, 1) + b"\x01\x00\x00\x00\x00"
            sock.sendall(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)
            sent = closed_by_peer(sock)
        # What was left of the AC, then A-ABORT (type 07) before closing.
        assert b"\x07\x00\x00\x00\x00\x04" in sent
        assert echo_ok(scp.port)


def _ac_maximum_length(ac: bytes) -> int:
    """Maximum Length Received from an A-ASSOCIATE-AC's User Information (PS3.8 9.3.3.3)."""
    offset = 6 + 68  # PDU header, then the fixed fields
    while offset < len(ac):
        kind, length = ac[offset], struct.unpack_from(">H", ac, offset + 2)[0]
        if kind == 0x50:
            sub = offset + 4
            while sub < offset + 4 + length:
                sub_kind, sub_length = ac[sub], struct.unpack_from(">H", ac, sub + 2)[0]
                if sub_kind == 0x51:
                    return int(struct.unpack_from(">I", ac, sub + 4)[0])
                sub += 4 + sub_length
        offset += 4 + length
    raise AssertionError("no Maximum Length sub-item in the A-ASSOCIATE-AC")


def test_maximum_pdu_size_is_announced_in_associate_ac(tmp_path: Path) -> None:
    with listening(tmp_path, maximum_pdu_size=32768) as (scp, _):
        with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
            sock.sendall(associate_rq(b"OSTEOFLAG", b"PDUCHECK"))
            header = sock.recv(6, socket.MSG_WAITALL)
            assert header[0] == 0x02
            body = sock.recv(struct.unpack_from(">I", header, 2)[0], socket.MSG_WAITALL)
            assert _ac_maximum_length(header + body) == 32768
        assoc = _associate(scp.port)
        try:
            assert assoc.acceptor.maximum_length == 32768
        finally:
            assoc.release()


def test_flood_beyond_max_associations_is_rejected_and_echo_recovers(tmp_path: Path) -> None:
    with listening(tmp_path, max_associations=2, acse_timeout=1.0) as (scp, _):
        held = [_associate(scp.port, f"HOLD{i}") for i in range(2)]
        assert all(assoc.is_established for assoc in held)
        results: list[bytes] = []
        lock = threading.Lock()

        def attempt(index: int) -> None:
            reply = first_reply(scp.port, f"FLOOD{index}".encode())
            with lock:
                results.append(reply)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # Rejected transient, service-provider (presentation), local limit exceeded (PS3.8 9.3.4).
        assert results == [associate_rj(2, 3, 2)] * 12
        for assoc in held:
            assoc.release()
        wait_for(lambda: echo_ok(scp.port), timeout=15)

        # Silent connections hold slots only until ARTIM expires.
        silent = [socket.create_connection(("127.0.0.1", scp.port)) for _ in range(6)]
        try:
            wait_for(lambda: echo_ok(scp.port), timeout=15)
        finally:
            for sock in silent:
                sock.close()


def test_data_set_over_max_dataset_mb_aborts_while_arriving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    large = radiograph(rows=1200, columns=1000, bits=12)  # 2.4 MB of Pixel Data
    small = radiograph()
    files = [
        write_in_syntax(ds, ExplicitVRLittleEndian, tmp_path / f"{name}.dcm")
        for name, ds in (("large", large), ("small", small))
    ]
    with listening(tmp_path, max_dataset_mb=1, maximum_pdu_size=16384) as (scp, _):
        peer = Peer("127.0.0.1", scp.port, "OSTEOFLAG")
        with caplog.at_level(logging.WARNING, logger="osteoflag.pacs.guard"):
            [outcome] = send_c_store(files[:1], peer, "BIGSENDER")
        assert outcome.status is None  # aborted: no C-STORE response
        assert any("larger than 1048576 bytes" in r.getMessage() for r in caplog.records)
        [outcome] = send_c_store(files[1:], peer, "BIGSENDER")
        assert outcome.status == 0
        assert echo_ok(scp.port)
