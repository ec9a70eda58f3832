"""DICOM TLS (PS3.15 Annex B.1 and B.9, BCP 195): contexts for both sides, and the server.

pynetdicom's server wraps each accepted socket and completes the TLS handshake in its one
accept thread, with no timeout: a peer that connects and stays silent would stop every
other connection from being accepted. :class:`TLSAssociationServer` instead defers the
handshake to the connection's own thread and bounds it by the ACSE timeout.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from osteoflag.config import DestinationTLS, TLSSettings
from osteoflag.errors import ConfigError

logger = logging.getLogger(__name__)


def server_context(tls: TLSSettings) -> ssl.SSLContext:
    """A TLS 1.2+ server context; client certificates required when a CA is configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context.load_cert_chain, "listener.tls.certificate", tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load(context.load_verify_locations, "listener.tls.ca_certificates", tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: DestinationTLS) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the peer against ``ca_certificates``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context.load_verify_locations, "destinations.tls.ca_certificates", tls.ca_certificates)
    if tls.certificate is not None and tls.private_key is not None:
        _load(
            context.load_cert_chain,
            "destinations.tls.certificate",
            tls.certificate,
            tls.private_key,
        )
    return context


def _load(loader: Any, key: str, *paths: Path) -> None:
    try:
        loader(*(str(path) for path in paths))
    except (OSError, ssl.SSLError) as exc:
        names = ", ".join(str(path) for path in paths)
        raise ConfigError(f"{key}: cannot load {names}: {exc}") from exc


class TLSAssociationServer(ThreadedAssociationServer):
    """An association server whose TLS handshakes cannot block the accept loop."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept and wrap without handshaking (that happens in :meth:`finish_request`)."""
        assert self.ssl_context is not None and self.socket is not None
        client, address = self.socket.accept()
        wrapped = self.ssl_context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake within ``acse_timeout``, then run the association as usual."""
        request.settimeout(self.ae.acse_timeout)
        try:
            request.do_handshake()
        except OSError as exc:  # ssl.SSLError, a timeout or a reset peer
            peer = f"{client_address[0]}:{client_address[1]}"
            logger.warning(
                "TLS handshake failed: %s",
                exc,
                extra={"action": "tls_reject", "peer": peer},
            )
            self.shutdown_request(request)
            return
        request.settimeout(None)
        super().finish_request(request, client_address)
