"""Access control of the listener: peer-address pinning and DICOM TLS.

Pinning is exercised from two loopback source addresses (127.0.0.1 and 127.0.0.2). TLS
uses a throwaway CA, server and client certificates made with ``openssl`` per run, and
DCMTK ``storescu +tls`` as the sender.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from osteoflag.db import queue
from osteoflag.destination_settings import DestinationTLS
from osteoflag.errors import DeliveryError
from osteoflag.logs import json_handler
from osteoflag.pacs.contexts import VERIFICATION
from osteoflag.pacs.scu import Peer, send_c_echo, send_c_store
from testkit.daemon import base_sections, osteoflag, write_config
from testkit.net import free_port
from tests.helpers.dicom import PATIENT_ID, PATIENT_NAME, radiograph, write_in_syntax
from tests.helpers.listener import listening
from tests.helpers.pki import Certificates, make_certificates
from tests.helpers.ul import associate_rj, first_reply


def _established_from(source: str, port: int, calling_ae: str) -> bool:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="OSTEOFLAG", bind_address=(source, 0))
    established = assoc.is_established
    if established:
        assoc.release()
    return established


def test_pinned_calling_ae_is_rejected_from_other_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pins = [
        {"ae_title": "PACS", "address": "127.0.0.1"},
        {"ae_title": "ARCHIVE", "address": "127.0.0.0/30"},
    ]
    with listening(tmp_path, allowed_peers=pins) as (scp, _):
        with caplog.at_level(logging.WARNING, logger="osteoflag.pacs.access"):
            assert _established_from("127.0.0.1", scp.port, "PACS")
            # Rejected permanent, service user, calling AE title not recognised.
            assert first_reply(scp.port, b"PACS", source="127.0.0.2") == associate_rj(1, 1, 3)
            assert _established_from("127.0.0.2", scp.port, "ARCHIVE")  # inside its /30
            assert first_reply(scp.port, b"ARCHIVE", source="127.0.0.5") == associate_rj(1, 1, 3)
            assert _established_from("127.0.0.2", scp.port, "UNPINNED")
        rejected = [r for r in caplog.records if r.getMessage().startswith("association rejected")]
        assert [(r.calling_ae, r.peer) for r in rejected] == [  # type: ignore[attr-defined]
            ("PACS", "127.0.0.2"),
            ("ARCHIVE", "127.0.0.5"),
        ]


def test_echo_refused_by_the_peer_says_why(tmp_path: Path) -> None:
    with listening(tmp_path, allowed_calling_aets=["RADIOLOGY"]) as (scp, _):
        config = write_config(tmp_path, base_sections(tmp_path, tmp_path / "no-bundle"))
        echo = osteoflag(
            "echo", "127.0.0.1", str(scp.port), "--called-aet", "OSTEOFLAG", config=config
        )
    assert echo.returncode == 1
    assert "Calling AE title not recognised (result 1, source 1, reason 3)" in echo.stderr


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


def _tls_settings(certs: Certificates, **extra: Any) -> dict[str, Any]:
    return {
        "certificate": str(certs.server_cert),
        "private_key": str(certs.server_key),
        "ca_certificates": str(certs.ca),
        **extra,
    }


def _storescu(port: int, dataset: Path, *tls: str | Path) -> subprocess.CompletedProcess[str]:
    storescu = shutil.which("storescu")
    assert storescu, "DCMTK missing: run scripts/install-debian-tools.sh"
    command = [storescu, *map(str, tls), "-aet", "MODALITY", "-aec", "OSTEOFLAG"]
    command += ["127.0.0.1", str(port), str(dataset)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _tls_echo(port: int, certs: Certificates, cert: Path, key: Path) -> bool:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(str(cert), str(key))
    ae = AE(ae_title="TLSCHECK")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="OSTEOFLAG", tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "dx.dcm")


def test_dcmtk_storescu_over_tls_with_client_certificate(
    tmp_path: Path, certificates: Certificates, dataset: Path
) -> None:
    with listening(tmp_path, tls=_tls_settings(certificates)) as (scp, sessions):
        tls = ("+tls", certificates.client_key, certificates.client_cert, "+cf", certificates.ca)
        done = _storescu(scp.port, dataset, *tls)
        assert done.returncode == 0, done.stderr
        assert queue.is_known(sessions, dcmread(dataset).SOPInstanceUID)
        assert _tls_echo(scp.port, certificates, certificates.client_cert, certificates.client_key)


def test_plain_and_untrusted_clients_are_refused_when_tls_is_required(
    tmp_path: Path, certificates: Certificates, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with listening(tmp_path, tls=_tls_settings(certificates)) as (scp, sessions):
        with caplog.at_level(logging.WARNING, logger="osteoflag.pacs.tls"):
            assert _storescu(scp.port, dataset).returncode != 0  # plain DICOM
            with pytest.raises(DeliveryError):
                send_c_echo(Peer("127.0.0.1", scp.port, "OSTEOFLAG"), "PLAIN", timeout=10)
            rogue = (
                "+tls",
                certificates.rogue_key,
                certificates.rogue_cert,
                "+cf",
                certificates.ca,
            )
            assert _storescu(scp.port, dataset, *rogue).returncode != 0
            assert not _tls_echo(
                scp.port, certificates, certificates.rogue_cert, certificates.rogue_key
            )
        assert queue.counts(sessions)["instances"]["queued"] == 0
        failures = [r for r in caplog.records if r.getMessage().startswith("TLS handshake failed")]
        assert len(failures) >= 3
        for record in failures:
            assert PATIENT_NAME not in record.getMessage() and PATIENT_ID not in record.getMessage()


def test_optional_tls_serves_plain_and_tls_ports_and_silent_tls_peers_do_not_block(
    tmp_path: Path, certificates: Certificates, dataset: Path
) -> None:
    tls_port = free_port()
    settings = _tls_settings(certificates, required=False, port=tls_port)
    with listening(tmp_path, tls=settings, acse_timeout=30) as (scp, sessions):
        assert send_c_echo(Peer("127.0.0.1", scp.port, "OSTEOFLAG"), "PLAIN") == 0
        # Two peers connect to the TLS port and say nothing: the accept loop must go on.
        silent = [socket.create_connection(("127.0.0.1", tls_port)) for _ in range(2)]
        try:
            tls = (
                "+tls",
                certificates.client_key,
                certificates.client_cert,
                "+cf",
                certificates.ca,
            )
            done = _storescu(tls_port, dataset, *tls)
            assert done.returncode == 0, done.stderr
        finally:
            for sock in silent:
                sock.close()
        assert queue.is_known(sessions, dcmread(dataset).SOPInstanceUID)


def test_our_scu_echoes_and_sends_over_tls(
    tmp_path: Path, certificates: Certificates, dataset: Path
) -> None:
    with listening(tmp_path, tls=_tls_settings(certificates)) as (scp, sessions):
        tls = DestinationTLS(
            ca_certificates=certificates.ca,
            certificate=certificates.client_cert,
            private_key=certificates.client_key,
        )
        peer = Peer("127.0.0.1", scp.port, "OSTEOFLAG", tls=tls)
        assert send_c_echo(peer, "OURSCU") == 0
        [outcome] = send_c_store([dataset], peer, "OURSCU")
        assert outcome.status == 0
        assert queue.is_known(sessions, dcmread(dataset).SOPInstanceUID)
        config = write_config(tmp_path, base_sections(tmp_path, tmp_path / "no-bundle"))
        ca, cert, key = map(
            str, (certificates.ca, certificates.client_cert, certificates.client_key)
        )
        tls_options = ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]
        echo = osteoflag(
            "echo", "127.0.0.1", str(scp.port), "--called-aet", "OSTEOFLAG", *tls_options,
            config=config,
        )  # fmt: skip
        assert echo.returncode == 0, echo.stderr
        untrusted = osteoflag(
            "echo", "127.0.0.1", str(scp.port), "--called-aet", "OSTEOFLAG",
            "--tls-ca", str(certificates.rogue_ca), config=config,
        )  # fmt: skip
        assert untrusted.returncode == 1
        half = osteoflag("echo", "127.0.0.1", "104", "--tls-cert", "x.pem", config=config)
        assert half.returncode == 2 and "--tls-ca" in half.stderr


def test_our_scu_says_why_tls_failed_in_one_line_without_traceback(
    tmp_path: Path, certificates: Certificates
) -> None:
    """The error on the outbound row names the TLS cause, not "unreachable, aborted or timed
    out"; pynetdicom's log of it is one line, as the daemon's handler writes it."""
    stream = io.StringIO()
    handler = json_handler(stream)
    library = logging.getLogger("pynetdicom")
    library.addHandler(handler)
    ours = DestinationTLS(
        ca_certificates=certificates.ca,
        certificate=certificates.client_cert,
        private_key=certificates.client_key,
    )
    cases = [
        ({}, DestinationTLS(ca_certificates=certificates.ca), "certificate required"),
        ({}, DestinationTLS(ca_certificates=certificates.rogue_ca), "certificate verify failed"),
        # A certificate naming another host (modality.example, not 127.0.0.1).
        (
            {
                "certificate": str(certificates.client_cert),
                "private_key": str(certificates.client_key),
            },
            ours,
            "IP address mismatch",
        ),
    ]
    try:
        for index, (server, tls, cause) in enumerate(cases):
            settings = _tls_settings(certificates, **server)
            with listening(tmp_path / str(index), tls=settings) as (scp, _):
                peer = Peer("127.0.0.1", scp.port, "OSTEOFLAG", tls=tls)
                with pytest.raises(
                    DeliveryError, match=f"OSTEOFLAG@127.0.0.1:{scp.port}: TLS failed: .*{cause}"
                ):
                    send_c_echo(peer, "OURSCU", timeout=10)
    finally:
        library.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert any("certificate required" in line for line in lines)
    assert not [line for line in lines if "Traceback" in line]
