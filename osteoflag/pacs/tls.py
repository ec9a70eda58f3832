"""DICOM TLS (PS3.15 Annex B.1 and B.9, BCP 195): the contexts of both sides.

The listener's handshake runs in :class:`osteoflag.pacs.server.GuardedAssociationServer`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from osteoflag.config import TLSSettings
from osteoflag.destination_settings import DestinationTLS
from osteoflag.errors import ConfigError


def server_context(tls: TLSSettings) -> ssl.SSLContext:
    """A TLS 1.2+ server context; client certificates required when a CA is configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context.load_cert_chain, "listener.tls.certificate", tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load(context.load_verify_locations, "listener.tls.ca_certificates", tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _ReportingSocket(ssl.SSLSocket):
    """Keeps its TLS error on its :class:`ClientContext`: pynetdicom only logs it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:  # ssl.SSLError, a timeout or a reset peer
            self._keep(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:  # an alert after our handshake (TLS 1.3 client certificate)
            self._keep(exc)
            raise

    def _keep(self, exc: OSError) -> None:
        context = self.context
        if isinstance(context, ClientContext) and context.failure is None:
            context.failure = exc


class ClientContext(ssl.SSLContext):
    """A client context for one association, keeping why its TLS failed, if it did, so that
    the error names the cause (an untrusted certificate, the wrong host, an old protocol)."""

    sslsocket_class = _ReportingSocket
    failure: OSError | None = None


def client_context(tls: DestinationTLS) -> ClientContext:
    """A TLS 1.2+ client context that verifies the peer against ``ca_certificates``."""
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
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
